"""What a run prints: stdout carries results (the metrics table, paths), stderr the progress bar and notices;
:class:`EpochLog` prints one line per epoch for runs without a progress bar.

Lightning notices that only echo a setting tlgnn makes on purpose are filtered by their exact text (never by
category or module as a whole): the "litlogger" tip printed whenever no LitLogger is configured, and torch's
``LeafSpec`` deprecation triggered inside Lightning. The ``limit_*_batches=1.0`` notices are avoided at the
source: ``build_trainer`` leaves those settings at Lightning's default when they
are 1.0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from typing import Any, Callable, Sequence

import lightning as L
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


class EpochLog(L.Callback):
    """One line per epoch through ``log``: mean training loss, ``val/loss``, validation MAE of ``tasks`` and
    throughput (``n_train`` graphs per epoch) — for long runs without a progress bar (``scripts/pretrain.py``).
    ``history`` keeps the same figures, one dict per epoch (the learning curve of a model card); pass an
    earlier run's to continue it."""

    def __init__(self, n_train: int, tasks: Sequence[str], log: Callable[[str], None],
                 history: list[dict[str, Any]] | None = None) -> None:
        self.n_train, self.tasks, self.write = int(n_train), list(tasks), log  # not .log: Lightning sets that
        self.history: list[dict[str, Any]] = list(history or [])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.t0 = time.time()
        self.loss_sum, self.batches = 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.loss_sum += float(loss.detach())
            self.batches += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not hasattr(self, "t0"):
            return
        m = trainer.callback_metrics
        dt = time.time() - self.t0
        mae = {t: float(m[f"val/{t}/mae"]) for t in self.tasks if f"val/{t}/mae" in m}
        maes = ", ".join(f"{t} {v:.3f}" for t, v in mae.items())
        train_loss = self.loss_sum / self.batches if self.batches else math.nan
        val_loss = float(m.get("val/loss", math.nan))
        self.history.append({"epoch": int(trainer.current_epoch), "train_loss": train_loss, "val_loss": val_loss,
                             "val_mae": mae, "seconds": dt})
        self.write(f"epoch {trainer.current_epoch}: train/loss {train_loss:.4f} "
                   f"val/loss {val_loss:.4f} | val MAE {maes} | {dt:.0f} s, "
                   f"{self.n_train / max(dt, 1e-9):.0f} graphs/s")


__all__ = ["EpochLog", "NOISE_LOGS", "NOISE_WARNINGS", "StderrProgressBar", "quiet_lightning"]
