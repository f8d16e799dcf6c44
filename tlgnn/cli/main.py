"""The ``tlgnn`` command line: ``tlgnn align|fit|test|predict|rank|embed``.

Each subcommand lives in its own module ``tlgnn/cli/<name>.py`` exposing ``register(subparsers)`` and
``run(args) -> int``; what they share is in ``tlgnn/cli/common.py``. Those modules import nothing heavy at module
level, so ``tlgnn --help`` stays fast; torch, PyG and Lightning are imported inside ``run``.

Errors: every :class:`~tlgnn.errors.TlgnnError` (and a missing file) a command raises is caught here, in one
place, and printed as one line ``tlgnn COMMAND: MESSAGE`` (exit status 2 for a config error, else the command's
``INPUT_ERROR_STATUS``, 1 by default).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tlgnn.cli.common import report_error
from tlgnn.errors import TlgnnError

COMMANDS = ("align", "fit", "test", "predict", "rank", "embed")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per available command."""
    parser = argparse.ArgumentParser(
        prog="tlgnn",
        description="Transfer learning with graph neural networks on crystal structures.",
    )
    from tlgnn import __version__

    parser.add_argument("--version", action="version", version=f"tlgnn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tlgnn.cli.{name}")
        except ModuleNotFoundError as err:  # a command not built yet
            if err.name != f"tlgnn.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(f"tlgnn.cli.{args.command}")
    try:
        return int(module.run(args) or 0)
    except (TlgnnError, FileNotFoundError) as err:
        return report_error(args.command, err, getattr(module, "INPUT_ERROR_STATUS", 1))


if __name__ == "__main__":
    sys.exit(main())
