"""The Lightning ``Trainer`` of a run and the callbacks every training run has.

:func:`build_trainer` turns the ``trainer`` section into a ``lightning.Trainer`` (devices, precision, limits, the
progress bar on stderr); :func:`training_callbacks` gives the checkpoints (``best.ckpt``, ``last.ckpt``), early
stopping, LR monitor and :class:`EpochSeeder`. Both are used by :func:`tlgnn.training.run.fit` and
:func:`tlgnn.training.run.test`, the one road a run is assembled on.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint

from tlgnn.training.checkpoint import RunCheckpoint, SelfDescription
from tlgnn.training.config import RunConfig
from tlgnn.training.console import StderrProgressBar, quiet_lightning
from tlgnn.training.module import TransferModule


def compile_model(config: RunConfig, module: TransferModule) -> None:
    """``trainer.compile``: compile the module's model in place (dynamic shapes; compiled on the first batch).

    In place (``nn.Module.compile``), so parameter names and checkpoints stay those of the eager model.
    """
    if config.trainer.compile:
        module.model.compile(dynamic=True)


class EpochSeeder(Callback):
    """Seeds every epoch from ``(seed, epoch)`` so an interrupted and resumed run repeats an uninterrupted one.

    The training loader's shuffling generator is seeded with ``(seed, epoch)`` before each epoch's iterator
    is created: when the loader is made (first epoch of a fresh or a resumed run, via a wrapper around the data
    module's ``train_dataloader``; the resumed epoch is read from the checkpoint) and at the start of every later
    epoch. The global RNGs (dropout) are reset at
    each epoch start as well. So epoch k sees the same batches and random draws however the run got there.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._resume_epoch: int | None = None
        self._loader_epoch: int | None = None  # epoch whose seed the freshly made loader got

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Called before the optimisers are configured; ``estimated_stepping_batches`` may then create the train
        # loader (and draw its first permutation) before Lightning restores the loop counters: take the epoch to
        # resume at from the checkpoint itself.
        try:
            self._resume_epoch = int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
        except (KeyError, TypeError):
            self._resume_epoch = None

    def loader_seed(self, epoch: int) -> int:
        return (self.seed * 1_000_003 + 7919 * (epoch + 1)) % 2**63

    def _seed_loader(self, loader: Any, epoch: int) -> None:
        generator = getattr(loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(self.loader_seed(epoch))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage != "fit" or dm is None or getattr(dm, "_tlgnn_epoch_seeded", False):
            return
        original = dm.train_dataloader

        @functools.wraps(original)
        def train_dataloader() -> Any:
            loader = original()
            epoch = self._resume_epoch if self._resume_epoch is not None else self._epoch(trainer)
            self._seed_loader(loader, epoch)
            self._loader_epoch = epoch
            return loader

        dm.train_dataloader = train_dataloader
        dm._tlgnn_epoch_seeded = True

    @staticmethod
    def _epoch(trainer: L.Trainer) -> int:
        """The epoch about to run: epochs *processed* so far (a checkpoint written at the end of epoch k has
        processed k + 1 but completed only k, so ``current_epoch`` would lag by one on resume)."""
        return int(trainer.fit_loop.epoch_progress.current.processed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = self._epoch(trainer)
        if epoch != self._loader_epoch:
            # the iterator of this epoch is created after this hook (for the first epoch of a run it already
            # exists, seeded when the loader was made, and has drawn its worker seed from the generator)
            self._seed_loader(trainer.train_dataloader, epoch)
        self._loader_epoch = None
        torch.manual_seed(self.seed * 1_000_003 + epoch)
        np.random.seed((self.seed * 1_000_003 + epoch) % 2**32)


def _devices(config: RunConfig) -> tuple[str, Any, str]:
    """``(accelerator, devices, precision)``; mixed 16-bit precision falls back to 32 without a GPU."""
    t = config.trainer
    accelerator = "gpu" if t.accelerator == "cuda" else t.accelerator
    precision = t.precision
    has_gpu = torch.cuda.is_available()
    if accelerator == "auto" and not has_gpu and precision in ("16-mixed", "16-true"):
        print(f"tlgnn: precision {precision!r} needs a GPU; none found, training in 32-bit", file=sys.stderr)
        precision = "32"
    return accelerator, t.devices, precision


def _limit(value: int | float) -> int | float | None:
    """A ``limit_*_batches`` setting for Lightning: ``None`` (its default, all batches, no notice) for 1.0."""
    return None if isinstance(value, float) and value == 1.0 else value


def build_trainer(config: RunConfig, output_dir: Path, loggers: list[Any], callbacks: list[Callback],
                  evaluation: bool = False) -> L.Trainer:
    """A Lightning ``Trainer`` from the ``trainer`` section (``evaluation``: one device, no training extras)."""
    t = config.trainer
    quiet_lightning()
    accelerator, devices, precision = _devices(config)
    if t.enable_progress_bar:
        callbacks = [*callbacks, StderrProgressBar()]
    kwargs: dict[str, Any] = dict(
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        logger=loggers or False,
        callbacks=[SelfDescription(), *callbacks],  # every checkpoint describes its model
        default_root_dir=str(output_dir),
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=not evaluation,
        deterministic=t.deterministic,
        limit_test_batches=_limit(t.limit_test_batches),
    )
    if evaluation:
        kwargs.update(devices=1 if devices == "auto" else devices, num_nodes=1)
    else:
        kwargs.update(
            strategy=t.strategy,
            num_nodes=t.num_nodes,
            max_epochs=t.max_epochs,
            max_time=t.max_time,
            gradient_clip_val=t.gradient_clip_val,
            accumulate_grad_batches=t.accumulate_grad_batches,
            log_every_n_steps=t.log_every_n_steps,
            limit_train_batches=_limit(t.limit_train_batches),
            limit_val_batches=_limit(t.limit_val_batches),
            check_val_every_n_epoch=t.check_val_every_n_epoch,
            num_sanity_val_steps=t.num_sanity_val_steps,
        )
    return L.Trainer(**kwargs)


#: what a run keeps: ``best.ckpt`` and ``last.ckpt`` (every epoch; the resume point), or ``best.ckpt`` only
#: (throwaway runs such as benchmark cells, which are never resumed)
CHECKPOINT_POLICIES = ("best_and_last", "best")


def training_callbacks(config: RunConfig, output_dir: Path,
                       checkpoints: str = "best_and_last") -> tuple[list[Callback], ModelCheckpoint]:
    """Checkpoints ``best.ckpt`` (by the early-stopping monitor) and, by default, ``last.ckpt`` (every epoch), early
    stopping, LR monitor and the epoch seeder. Returns the callbacks and the best-checkpoint callback.

    ``last.ckpt`` has its own callback: since Lightning 2.5, ``save_last=True`` rewrites ``last`` only in epochs
    that also wrote a top-k checkpoint, so a run killed after a few non-improving epochs would lose them.
    ``checkpoints``: one of :data:`CHECKPOINT_POLICIES`.
    """
    if checkpoints not in CHECKPOINT_POLICIES:
        raise ValueError(f"checkpoints must be one of {CHECKPOINT_POLICIES}, got {checkpoints!r}")
    es = config.trainer.early_stopping
    ckpt_dir = str(output_dir / "checkpoints")
    best = RunCheckpoint(dirpath=ckpt_dir, filename="best", monitor=es.monitor, mode=es.resolved_mode,
                         save_top_k=1, auto_insert_metric_name=False)
    callbacks: list[Callback] = [best]
    if checkpoints == "best_and_last":
        callbacks.append(RunCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                       every_n_epochs=1, enable_version_counter=False))
    callbacks.append(EpochSeeder(config.trainer.seed))
    if es.patience is not None:
        callbacks.append(
            EarlyStopping(monitor=es.monitor, mode=es.resolved_mode, patience=es.patience, min_delta=es.min_delta)
        )
    if config.optim.scheduler != "none" or config.optim.warmup_epochs > 0:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    return callbacks, best


def set_threads(config: RunConfig) -> None:
    """``trainer.cpu_threads``: torch's CPU threads for this process (unchanged when not set)."""
    if config.trainer.cpu_threads is not None:
        torch.set_num_threads(config.trainer.cpu_threads)


__all__ = ["CHECKPOINT_POLICIES", "EpochSeeder", "build_trainer", "compile_model", "set_threads",
           "training_callbacks"]
