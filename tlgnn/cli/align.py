"""``tlgnn align``: align label sources declared in a YAML into one material table and a report.

    tlgnn align --config configs/data/mp_sample.yaml --out runs/align/mp_sample [--set root=/data/mp] [--workers 2]

Writes ``OUT/aligned.parquet``, ``OUT/report.md`` and ``OUT/report.json`` and prints the report in short.
With ``--graphs``, the crystal graph of every material is also built into the graph cache.
"""

from __future__ import annotations

import argparse
import sys

#: Exit status of a source or alignment error (``tlgnn.cli.main`` reports it; a config error is 2 as well).
INPUT_ERROR_STATUS = 2


def register(subparsers) -> None:
    """Add the ``align`` subcommand."""
    p = subparsers.add_parser("align", help="align label sources into one material table + report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="source YAML (configs/data/NAME.yaml)")
    p.add_argument("--out", required=True, help="output folder for aligned.parquet, report.md, report.json")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. root=/data/mp or sources.mp.path=/data/labels.csv.gz "
                        "(repeatable)")
    p.add_argument("--workers", type=int, default=None, help="processes for structure parsing (default: all cores)")
    p.add_argument("--cache-dir", default=None,
                   help="cache for parsed structures and graphs (default: $TLGNN_CACHE_DIR or ~/.cache/tlgnn)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the parsed-structure cache")
    p.add_argument("--graphs", action="store_true", help="also build every material's graph into the graph cache")
    p.add_argument("--cutoff", type=float, default=8.0, help="graph cutoff radius in Å (with --graphs)")
    p.add_argument("--max-neighbors", type=int, default=12, help="neighbours per atom (with --graphs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the alignment; returns 0 on success (a configuration or source error: 2, reported by ``tlgnn.cli.main``)."""
    import os
    from pathlib import Path

    from tlgnn.data.alignment import align_config, write_alignment
    from tlgnn.data.config import default_cache_dir

    if args.workers is not None and args.workers < 1:
        print("tlgnn align: --workers must be >= 1", file=sys.stderr)
        return 2
    cache_dir = Path(os.path.expanduser(args.cache_dir or default_cache_dir()))
    table, report = align_config(
        args.config, overrides=args.overrides, n_jobs=args.workers,
        cache_dir=None if args.no_cache else cache_dir,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    path = write_alignment(table, report, args.out)
    if args.graphs:
        from tlgnn.data.graphs import build_graphs

        store = build_graphs(table, cache_dir, cutoff=args.cutoff, max_neighbors=args.max_neighbors,
                             n_jobs=args.workers)
        print(f"graphs: {len(store)} in {cache_dir / 'graphs'}", file=sys.stderr)
    print(report.summary())
    print(f"wrote {path} and {Path(args.out) / 'report.md'}")
    return 0
