"""``tlgnn test``: evaluate a checkpoint on the test split of a run config.

    tlgnn test --config configs/quickstart.yaml --checkpoint runs/quickstart/checkpoints/best.ckpt

The data section of the config (split included) selects the test set; the model comes from the checkpoint.
Writes ``DIR/{metrics.json, predictions_test.csv, parity_<task>.png}`` (``--output-dir DIR``; default the config's
``output_dir/test``, beside, not over, the training run's own results) and prints the per-task test metrics.
Config keys can be overridden as in ``tlgnn fit``.
"""

from __future__ import annotations

import argparse

from tlgnn.cli.common import add_config_arguments, load_config, make_subparser


def register(subparsers) -> None:
    """Add the ``test`` subcommand."""
    p = make_subparser(subparsers, "test", "evaluate a checkpoint on a config's test split", __doc__)
    add_config_arguments(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint file (e.g. OUTPUT_DIR/checkpoints/best.ckpt)")
    p.add_argument("--output-dir", default=None,
                   help="where to write the results (default: the config's output_dir/test)")


def run(args: argparse.Namespace) -> int:
    """Evaluate; 0 on success. Errors are reported by ``tlgnn.cli.main``: 2 for a config error, 1 for a
    data/checkpoint error."""
    from tlgnn.training.run import test

    config = load_config(args)
    result = test(config, args.checkpoint, output_dir=args.output_dir)
    print(result.table)
    print(f"results in: {result.output_dir}")
    return 0
