"""``tlgnn test``: evaluate a checkpoint on the test split of a run config.

    tlgnn test --config configs/quickstart.yaml --checkpoint runs/quickstart/checkpoints/best.ckpt

The data section of the config (split included) selects the test set; the model comes from the checkpoint.
Writes ``OUTPUT_DIR/{metrics.json, predictions_test.csv, parity_<task>.png}`` (``--output-dir`` or the config's
``output_dir``) and prints the per-task test metrics. Config keys can be overridden as in ``tlgnn fit``.
"""

from __future__ import annotations

import argparse
import sys

from tlgnn.cli.fit import add_config_arguments, load_config, make_subparser


def register(subparsers) -> None:
    """Add the ``test`` subcommand."""
    p = make_subparser(subparsers, "test", "evaluate a checkpoint on a config's test split", __doc__)
    add_config_arguments(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint file (e.g. OUTPUT_DIR/checkpoints/best.ckpt)")
    p.add_argument("--output-dir", default=None, help="where to write the results (default: the config's output_dir)")


def run(args: argparse.Namespace) -> int:
    """Evaluate; 0 on success, 2 on a config error, 1 on a data/checkpoint error."""
    config = load_config(args, "test")
    if config is None:
        return 2
    from tlgnn.training.run import RunError, test
    from tlgnn.utils.config import ConfigError

    try:
        result = test(config, args.checkpoint, output_dir=args.output_dir)
    except ConfigError as err:
        print(f"tlgnn test: config error: {err}", file=sys.stderr)
        return 2
    except (RunError, FileNotFoundError) as err:
        print(f"tlgnn test: {err}", file=sys.stderr)
        return 1
    print(result.table)
    print(f"results in: {result.output_dir}")
    return 0
