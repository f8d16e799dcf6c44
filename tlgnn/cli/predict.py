"""``tlgnn predict``: predict every task of a checkpoint for a set of structure files.

    tlgnn predict --checkpoint runs/quickstart/checkpoints/best.ckpt --input my_cifs/ --output preds.csv
    tlgnn predict --checkpoint best.ckpt --input "structures/*.cif" --input extra.vasp --output preds.csv
    tlgnn predict --checkpoint pbe_to_hse.ckpt --input new_cifs/ --known pbe_gaps.csv --output preds.csv

Needs nothing but the checkpoint (graph settings, tasks and normalisation travel with it). One row per
structure: ``id`` and a column per task (regression in the task's unit; classification: predicted class and
``<task>_prob_<class>``). Files that cannot be read are listed on stderr and in ``OUTPUT.errors.txt``; they do
not stop the others.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``predict`` subcommand."""
    p = subparsers.add_parser("predict", help="predict with a checkpoint for structure files",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a tlgnn checkpoint (.ckpt)")
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a structure file, a folder or a glob (repeatable)")
    p.add_argument("--output", required=True, help="CSV file to write")
    p.add_argument("--batch-size", type=int, default=64, help="structures per batch (default 64)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: GPU when available)")
    p.add_argument("--workers", type=int, default=None, help="processes for reading files (default: all cores)")
    p.add_argument("--recursive", action="store_true", help="also read sub-folders of folder inputs")
    p.add_argument("--known", metavar="CSV", default=None,
                   help="known values of low-fidelity tasks: a CSV with an 'id' column (file names without "
                        "extension) and a column per task, e.g. id,gap_pbe_mf; a difference head trained with "
                        "use_known_low: true then builds the higher fidelities on them")
    p.add_argument("--disordered", choices=("error", "order", "drop"), default="error",
                   help="structures with partial occupancies: report as errors (default), order them "
                        "(majority species per site), or drop them")


def run(args: argparse.Namespace) -> int:
    """Predict; 0 on success (even with unreadable files), 1 if nothing could be predicted or on a bad checkpoint."""
    from pathlib import Path

    from tlgnn.cli.common import report_unusable
    from tlgnn.training.predict import Predictor

    if args.batch_size < 1:
        print("tlgnn predict: --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"tlgnn predict: {err}", file=sys.stderr)
        return 1
    # a bad --known file raises KnownValuesError, a TlgnnError: one line from tlgnn.cli.main, exit 1
    result = predictor.predict_result(list(args.input), n_jobs=args.workers, recursive=args.recursive,
                                      disordered=args.disordered, known=args.known)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    problems = result.failures
    report_unusable("predict", problems, output)
    for where, why in result.skipped:
        print(f"tlgnn predict: skipped {where}: {why}", file=sys.stderr)
    for note in result.notes:
        print(f"tlgnn predict: note: {note}", file=sys.stderr)
    if result.frame.empty:
        found = "no structure could be read" if problems else "no structure files found in the input"
        print(f"tlgnn predict: {found}; nothing written", file=sys.stderr)
        if output.exists():
            output.unlink()  # an earlier run's predictions must not pass for this run's
            print(f"tlgnn predict: removed {output} from an earlier run", file=sys.stderr)
        return 1
    result.frame.to_csv(output, index=False)
    print(f"wrote {len(result.frame)} predictions ({', '.join(predictor.outputs)}) to {output}")
    return 0
