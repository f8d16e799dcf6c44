"""``tlgnn predict``: predict every task of a checkpoint for a set of structure files.

    tlgnn predict --checkpoint runs/quickstart/checkpoints/best.ckpt --input my_cifs/ --output preds.csv
    tlgnn predict --checkpoint best.ckpt --input "structures/*.cif" --input extra.vasp --output preds.csv
    tlgnn predict --checkpoint pbe_to_hse.ckpt --input new_cifs/ --known pbe_gaps.csv --output preds.csv

Needs nothing but the checkpoint (graph settings, tasks and normalisation travel with it). One row per
structure: ``id`` and a column per task (regression in the task's unit; classification: predicted class and
``<task>_prob_<class>``); an ensemble's checkpoint adds ``<task>_std``, ``<task>_lower`` / ``<task>_upper`` (the
calibrated central interval) and ``<task>_std_raw`` (the members' spread). Files that cannot be read are listed
on stderr and in ``OUTPUT.errors.txt``; they do not stop the others.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    """Add the ``predict`` subcommand."""
    p = subparsers.add_parser("predict", help="predict with a checkpoint for structure files",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prediction_arguments(p)


def add_prediction_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of a command that predicts for structure files (``predict``, ``rank``)."""
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


def load_predictor(args: argparse.Namespace, command: str):
    """The :class:`~tlgnn.training.predict.Predictor` of ``--checkpoint``, or an exit status after one line."""
    from tlgnn.training.predict import Predictor

    if args.batch_size < 1:
        print(f"tlgnn {command}: --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        return Predictor.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as err:
        print(f"tlgnn {command}: {err}", file=sys.stderr)
        return 1


def predicted_frame(args: argparse.Namespace, predictor, command: str):
    """The prediction frame for ``--input`` (structures that cannot be used reported on stderr and in
    ``OUTPUT.errors.txt``), or ``None`` when nothing could be predicted (a stale ``--output`` is removed)."""
    from pathlib import Path

    from tlgnn.cli.common import report_unusable

    # a bad --known file raises KnownValuesError, a TlgnnError: one line from tlgnn.cli.main, exit 1
    result = predictor.predict_result(list(args.input), n_jobs=args.workers, recursive=args.recursive,
                                      disordered=args.disordered, known=args.known)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    problems = result.failures
    report_unusable(command, problems, output)
    for where, why in result.skipped:
        print(f"tlgnn {command}: skipped {where}: {why}", file=sys.stderr)
    for note in result.notes:
        print(f"tlgnn {command}: note: {note}", file=sys.stderr)
    if result.frame.empty:
        found = "no structure could be read" if problems else "no structure files found in the input"
        print(f"tlgnn {command}: {found}; nothing written", file=sys.stderr)
        if output.exists():
            output.unlink()  # an earlier run's output must not pass for this run's
            print(f"tlgnn {command}: removed {output} from an earlier run", file=sys.stderr)
        return None
    return result.frame


def run(args: argparse.Namespace) -> int:
    """Predict; 0 on success (even with unreadable files), 1 if nothing could be predicted or on a bad checkpoint."""
    predictor = load_predictor(args, "predict")
    if isinstance(predictor, int):
        return predictor
    frame = predicted_frame(args, predictor, "predict")
    if frame is None:
        return 1
    frame.to_csv(args.output, index=False)
    print(f"wrote {len(frame)} predictions ({', '.join(predictor.outputs)}) to {args.output}")
    return 0
