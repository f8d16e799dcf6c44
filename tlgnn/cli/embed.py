"""``tlgnn embed``: graph embeddings of structure files or of an aligned table, written to Parquet.

    tlgnn embed --checkpoint data/pretrained/cgcnn_mp_pbe_eform.ckpt --input my_cifs/ --output emb.parquet
    tlgnn embed --encoder chgnet --option version=0.3.0 --input my_cifs/ --output chgnet.parquet
    tlgnn embed --encoder chgnet --table runs/align/mp_sample --output mp_sample_chgnet.parquet

One row per structure: ``id`` (file name without extension, or the table's ``material_id``), ``structure_key``
(content hash) and ``emb_0 .. emb_{d-1}``; the encoder and graph settings are in the file's metadata. Embeddings
are cached (``--cache-dir``, default ``$TLGNN_CACHE_DIR`` or ``~/.cache/tlgnn``, under ``embeddings/``) and shared
with ``tlgnn fit`` runs whose encoder is frozen. Files that cannot be read are listed on stderr and in
``OUTPUT.errors.txt``; they do not stop the others.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``embed`` subcommand."""
    p = subparsers.add_parser("embed", help="graph embeddings of structures with a frozen encoder, to Parquet",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a tlgnn checkpoint (.ckpt): its encoder and graph settings")
    which.add_argument("--encoder", help="a registered encoder by name, e.g. chgnet (pretrained weights)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of --encoder (repeatable), e.g. version=r2scan or pooling=blocks")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", action="append", metavar="PATH", help="a structure file, folder or glob "
                                                                        "(repeatable)")
    source.add_argument("--table", metavar="PATH", help="an aligned table (aligned.parquet or its folder)")
    p.add_argument("--output", required=True, help="Parquet file to write")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $TLGNN_CACHE_DIR, else ~/.cache/tlgnn)")
    p.add_argument("--batch-size", type=int, default=64, help="structures per batch (default 64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--workers", type=int, default=None, help="processes for reading files (default: all cores)")
    p.add_argument("--recursive", action="store_true", help="also read sub-folders of folder inputs")


def _options(pairs: list[str]) -> dict:
    from tlgnn.utils.config import ConfigError, parse_overrides

    for pair in pairs:
        if "=" not in pair:
            raise ConfigError("--option", f"expected KEY=VALUE, got {pair!r}")
    return dict(parse_overrides(pairs))


def _named_encoder(args: argparse.Namespace):
    """The ``--encoder`` with its ``--option`` values; an unknown name or option is a one-line config error."""
    from tlgnn.embeddings.structures import encoder_by_name
    from tlgnn.utils.config import ConfigError

    options = _options(args.option)
    try:
        return encoder_by_name(args.encoder, options)
    except (TypeError, ValueError) as err:  # the registry's and the encoder's own messages name the option
        raise ConfigError("--encoder" if not options else "--encoder/--option", str(err)) from err


def run(args: argparse.Namespace) -> int:
    """Embed; 0 on success (even with unreadable files), 1 if nothing could be embedded."""
    from pathlib import Path

    from tlgnn.cli.common import report_unusable
    from tlgnn.data.config import default_cache_dir
    from tlgnn.embeddings.structures import embed_structures, embed_table, encoder_from_checkpoint, write_embeddings
    from tlgnn.io import read_structures

    if args.option and not args.encoder:
        print("tlgnn embed: --option applies to --encoder only (a checkpoint's encoder is fixed)", file=sys.stderr)
        return 2
    frozen = encoder_from_checkpoint(args.checkpoint) if args.checkpoint else _named_encoder(args)
    cache_dir = Path(args.cache_dir or default_cache_dir()).expanduser()
    if args.table:
        result = embed_table(frozen, args.table, cache_dir / "embeddings", cache_dir, args.batch_size, args.device)
        problems: list = []
    else:
        read = read_structures(list(args.input), on_error="skip", n_jobs=args.workers, recursive=args.recursive)
        result = embed_structures(frozen, read.records, cache_dir / "embeddings", args.batch_size, args.device)
        problems = [(err.location, err.reason) for err in read.failures] + result.failures
    output = Path(args.output)
    report_unusable("embed", problems, output)
    if not result.ids:
        print("tlgnn embed: no structure could be embedded; nothing written", file=sys.stderr)
        return 1
    write_embeddings(result, output, frozen)
    print(f"wrote {len(result.ids)} embeddings ({result.embeddings.shape[1]} wide, encoder {frozen.spec['name']}) "
          f"to {output}")
    return 0
