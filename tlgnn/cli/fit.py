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
import sys
from typing import Any


class OverridesParser(argparse.ArgumentParser):
    """An argument parser that turns unknown dotted options (``--trainer.max_epochs 5``) into config overrides."""

    def parse_known_args(self, args: Any = None, namespace: Any = None):  # type: ignore[override]
        import dataclasses

        from tlgnn.training.config import RunConfig  # light: dataclasses only

        namespace, extras = super().parse_known_args(args, namespace)
        overrides, rest = split_dotted_options(extras, {f.name for f in dataclasses.fields(RunConfig)})
        namespace.overrides = list(getattr(namespace, "overrides", None) or []) + overrides
        return namespace, rest


def split_dotted_options(tokens: list[str], top_level: set[str] = frozenset()) -> tuple[list[str], list[str]]:
    """``["--a.b", "1", "--c.d=x", "--junk"] -> (["a.b=1", "c.d=x"], ["--junk"])``.

    Dotted options are config overrides; so are options named like a top-level key (``--output_dir x``).
    """
    overrides: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        key = token[2:].split("=", 1)[0] if token.startswith("--") else ""
        if key and (("." in key and not key.startswith(".") and not key.endswith(".")) or key in top_level):
            if "=" in token:
                overrides.append(token[2:])
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                overrides.append(f"{key}={tokens[i + 1]}")
                i += 1
            else:
                rest.append(token)  # a dotted option without a value: let argparse report it
        else:
            rest.append(token)
        i += 1
    return overrides, rest


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config`` and ``--set`` (dotted ``--a.b v`` options are collected by :class:`OverridesParser`)."""
    parser.add_argument("--config", required=required, help="run config YAML (e.g. configs/quickstart.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. trainer.max_epochs=5 (repeatable); "
                             "--trainer.max_epochs 5 does the same")


def make_subparser(subparsers, name: str, help: str, doc: str | None) -> argparse.ArgumentParser:
    """A subcommand parser that accepts dotted config overrides."""
    parser = subparsers.add_parser(name, help=help, description=doc, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.__class__ = OverridesParser  # same parser, plus dotted-option collection
    return parser


def load_config(args: argparse.Namespace, command: str):
    """The validated run config of ``args``, or ``None`` after printing the error (names the key) to stderr."""
    from tlgnn.training.config import check_model_options, load_run_config
    from tlgnn.utils.config import ConfigError

    try:
        config = load_run_config(args.config, args.overrides)
        check_model_options(config.model)
    except ConfigError as err:
        print(f"tlgnn {command}: config error: {err}", file=sys.stderr)
        return None
    return config


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


def run_command(command: str, args: argparse.Namespace, action) -> int:
    """Load the run config of ``args`` and call ``action(config)``; map errors to exit codes.

    0 on success, 2 on a config error (the message names the key), 1 on a data/checkpoint error.
    """
    config = load_config(args, command)
    if config is None:
        return 2
    from tlgnn.data.alignment import AlignmentError
    from tlgnn.data.sources import SourceError
    from tlgnn.data.splits import SplitError
    from tlgnn.training.checkpoint import CheckpointError
    from tlgnn.training.run import RunError
    from tlgnn.utils.config import ConfigError

    try:
        action(config)
    except ConfigError as err:
        print(f"tlgnn {command}: config error: {err}", file=sys.stderr)
        return 2
    except (SourceError, AlignmentError, SplitError) as err:  # the data the config points to
        print(f"tlgnn {command}: data error: {err}", file=sys.stderr)
        return 1
    except (RunError, CheckpointError, FileNotFoundError) as err:  # CheckpointError: names the file and why
        print(f"tlgnn {command}: {err}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Train (and test); 0 on success, 2 on a config error, 1 on a data/checkpoint error."""

    def action(config) -> None:
        from lightning.pytorch.utilities import rank_zero_only

        from tlgnn.training.run import fit

        result = fit(config, resume=args.resume, test=not args.no_test, overwrite=args.overwrite)
        if rank_zero_only.rank != 0:
            return  # under DDP every rank runs this; one report is enough
        if result.test is not None:
            print(result.test.table)
        print(f"run directory: {result.output_dir}")

    return run_command("fit", args, action)
