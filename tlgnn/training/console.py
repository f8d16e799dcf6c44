"""What a run prints: stdout carries results (the metrics table, paths), stderr the progress bar and notices.

Lightning notices that only echo a setting tlgnn makes on purpose are filtered by their exact text (never by
category or module as a whole): the "litlogger" tip printed whenever no LitLogger is configured, and torch's
``LeafSpec`` deprecation triggered inside Lightning. The ``limit_*_batches=1.0`` notices are avoided at the
source: ``build_trainer`` leaves those settings at Lightning's default when they
are 1.0.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings

from lightning.pytorch.callbacks import TQDMProgressBar

#: (message regex, category) of warnings that tlgnn's own configuration triggers on every run
NOISE_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
#: the start of log records (Lightning's rank-zero info logger) that advertise rather than inform
NOISE_LOGS: tuple[str, ...] = ("💡 Tip: For seamless cloud logging",)
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE_LOGS)


_FILTER = _DropNoise()


def quiet_lightning() -> None:
    """Install the targeted filters (idempotent)."""
    for message, category in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, written to stderr (Lightning writes it to stdout), so that
    ``tlgnn fit ... > metrics.txt`` keeps only the results."""

    def init_sanity_tqdm(self):  # type: ignore[override]
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    def init_train_tqdm(self):  # type: ignore[override]
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_predict_tqdm(self):  # type: ignore[override]
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_predict_tqdm()

    def init_validation_tqdm(self):  # type: ignore[override]
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def init_test_tqdm(self):  # type: ignore[override]
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_test_tqdm()


__all__ = ["NOISE_LOGS", "NOISE_WARNINGS", "StderrProgressBar", "quiet_lightning"]
