"""``tlgnn fit``: train a model from a run config, then test its best checkpoint.

    tlgnn fit --config configs/quickstart.yaml
    tlgnn fit --config configs/heads/multitask.yaml --trainer.max_epochs 5 --set optim.lr=3e-4
    tlgnn fit --config configs/quickstart.yaml --resume            # continue from OUTPUT_DIR/checkpoints/last.ckpt
    tlgnn fit --config configs/quickstart.yaml --resume run/last.ckpt
    tlgnn fit --config configs/quickstart.yaml --overwrite         # start over in the same output_dir

Any config key can be overridden as ``--section.key VALUE`` (``--output_dir DIR`` for the top level), ``--section.key=VALUE`` or ``--set section.key=VALUE``
(values are read as YAML). Writes ``OUTPUT_DIR/{config.yaml, checkpoints/, logs/, metrics.json,
predictions_test.csv, parity_<task>.png}`` and prints the per-task test metrics.
"""

from __future__ import annotations

import argparse

from tlgnn.cli.common import add_config_arguments, load_config, make_subparser


def register(subparsers) -> None:
    """Add the ``fit`` subcommand."""
    p = make_subparser(subparsers, "fit", "train a model from a run config, then test it", __doc__)
    add_config_arguments(p)
    p.add_argument("--resume", nargs="?", const="last", default=None, metavar="CHECKPOINT",
                   help="resume an interrupted run from OUTPUT_DIR/checkpoints/last.ckpt (or from CHECKPOINT); "
                        "'--resume auto' resumes if that file exists and starts afresh otherwise (job scripts "
                        "that are requeued)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an output_dir that already holds a run (its checkpoints are deleted)")
    p.add_argument("--no-test", action="store_true", help="skip testing the best checkpoint after training")


def run(args: argparse.Namespace) -> int:
    """Train (and test); 0 on success. Errors are reported by ``tlgnn.cli.main``: 2 for a config error, 1 for a
    data/checkpoint error."""
    from lightning.pytorch.utilities import rank_zero_only

    from tlgnn.training.run import fit

    config = load_config(args)
    result = fit(config, resume=args.resume, test=not args.no_test, overwrite=args.overwrite)
    if rank_zero_only.rank != 0:
        return 0  # under DDP every rank runs this; one report is enough
    if result.test is not None:
        print(result.test.table)
    print(f"run directory: {result.output_dir}")
    return 0
