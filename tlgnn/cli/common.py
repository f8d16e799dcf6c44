"""What the subcommands share: dotted config overrides, ``--config``/``--set``, loading the run config, the
one-line report of an error, and the list of structures a command could not use.

Nothing heavy is imported at module level (``tlgnn --help`` stays fast).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: Exit status of a config error (the message names the key); other input errors exit with the command's
#: ``INPUT_ERROR_STATUS`` (1 unless the command module sets another).
CONFIG_ERROR_STATUS = 2


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


def load_config(args: argparse.Namespace):
    """The validated run config of ``args.config`` plus ``args.overrides``; raises ``ConfigError`` naming the key."""
    from tlgnn.training.config import check_model_options, load_run_config

    config = load_run_config(args.config, args.overrides)
    check_model_options(config.model)
    return config


def report_unusable(command: str, problems: list[tuple[str, str]], output: Any) -> None:
    """Say on stderr which structures ``command`` could not use (``(location, reason)`` pairs) and list them in
    ``OUTPUT.errors.txt`` beside ``output``; with none, remove a stale list from an earlier run."""
    from pathlib import Path

    output = Path(output)
    errors_path = output.with_name(output.name + ".errors.txt")
    if not problems:
        errors_path.unlink(missing_ok=True)  # a stale list from an earlier run
        return
    print(f"tlgnn {command}: {len(problems)} structure(s) could not be used:", file=sys.stderr)
    for where, why in problems:
        print(f"  {where}: {why}", file=sys.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    errors_path.write_text("".join(f"{where}: {why}\n" for where, why in problems))


def report_error(command: str, err: BaseException, input_status: int = 1) -> int:
    """Print ``err`` as one line ``tlgnn COMMAND: [config error: | data error: ]MESSAGE``; return the exit status.

    A config error exits with :data:`CONFIG_ERROR_STATUS` (2), any other input error with ``input_status``.
    """
    from tlgnn.errors import DataError
    from tlgnn.utils.config import ConfigError

    if isinstance(err, ConfigError):
        kind, status = "config error: ", CONFIG_ERROR_STATUS
    elif isinstance(err, DataError):
        kind, status = "data error: ", input_status
    else:
        kind, status = "", input_status
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # one line
    print(f"tlgnn {command}: {kind}{message}", file=sys.stderr)
    return status


__all__ = [
    "CONFIG_ERROR_STATUS",
    "OverridesParser",
    "add_config_arguments",
    "load_config",
    "make_subparser",
    "report_error",
    "split_dotted_options",
]
