"""The ``fit`` and ``test`` workflows behind ``tlgnn fit`` / ``tlgnn test``.

``fit(config)`` trains with Lightning (seeded, checkpoints ``best.ckpt`` and ``last.ckpt``, early stopping,
gradient clipping, mixed precision on GPU), then tests the best checkpoint. ``test(config, checkpoint)``
evaluates a checkpoint on the config's test split. Both write into ``output_dir`` (``test`` into
``output_dir/test`` unless given another folder):

- ``config.yaml`` (the resolved run config), ``checkpoints/{best,last}.ckpt``, ``logs/version_N/metrics.csv``
- ``metrics.json`` (per-task test metrics), ``predictions_test.csv``, ``parity_<task>.png`` per regression task
- ``wandb/`` with ``logger.kind: wandb``
"""

from __future__ import annotations

import functools
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint

from tlgnn.data.tasks import TaskSpec
from tlgnn.errors import TlgnnError
from tlgnn.training.checkpoint import CheckpointError, RunCheckpoint, SelfDescription, load_module, read_checkpoint
from tlgnn.training.config import RunConfig, save_run_config
from tlgnn.training.console import StderrProgressBar, quiet_lightning
from tlgnn.training.finetune import apply_finetuning, plan_callbacks
from tlgnn.training.loggers import RUN_ID_FILE, build_loggers, close_loggers, log_test_results_to_wandb, wandb_logger_of
from tlgnn.training.inference import predict_batches
from tlgnn.training.module import NonFiniteLossError, TransferModule
from tlgnn.training.outputs import (add_mean_baseline, format_metrics_table, parity_plots, prediction_frame,
                                    write_metrics_json)


class RunError(TlgnnError, RuntimeError):
    """A run cannot start or finish (existing run directory, missing checkpoint, incompatible data)."""


@dataclass
class TestResult:
    """Per-task test metrics and where the test outputs were written."""

    scores: dict[str, dict[str, float]]
    table: str
    output_dir: Path
    metrics_path: Path
    predictions_path: Path | None
    plots: dict[str, Path] = field(default_factory=dict)


@dataclass
class FitResult:
    """Where a finished training run left its checkpoints, and its test result."""

    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    epochs: int
    test: TestResult | None = None


# ---------------------------------------------------------------------------------------------------- pieces
def build_datamodule(config: RunConfig, stage: str = "fit"):
    """The :class:`tlgnn.data.TransferDataModule` of the config, prepared and set up for ``stage``."""
    from tlgnn.data import TransferDataModule

    dm = TransferDataModule(config.data)
    dm.prepare_data()
    dm.setup(stage)
    return dm


def target_stats(dm: Any) -> dict[str, dict[str, Any]]:
    """``{"mean": {...}, "std": {...}, "pairs": {high: {low: [mean, std]}}}`` of the regression tasks on the
    training split (``pairs``: of ``high - low`` where both are labelled)."""
    stats = dm.target_stats()
    if isinstance(stats, tuple):
        mean, std = stats
    else:
        mean, std = stats["mean"], stats["std"]
    return {"mean": {k: float(v) for k, v in mean.items()}, "std": {k: float(v) for k, v in std.items()},
            "pairs": dm.pair_stats()}


def graph_settings(dm: Any, config: RunConfig) -> dict[str, Any]:
    """The graph builder settings used for the data (stored in checkpoints, reused by ``predict``)."""
    cache = dm.graph_cache() if hasattr(dm, "graph_cache") else None
    builder = getattr(cache, "builder", None)
    if builder is None:
        from tlgnn.graphs import CrystalGraphBuilder

        builder = CrystalGraphBuilder(cutoff=config.data.graph.cutoff, max_neighbors=config.data.graph.max_neighbors)
    return dict(builder.settings)


def compile_model(config: RunConfig, module: TransferModule) -> None:
    """``trainer.compile``: compile the module's model in place (dynamic shapes; compiled on the first batch).

    In place (``nn.Module.compile``), so parameter names and checkpoints stay those of the eager model.
    """
    if config.trainer.compile:
        module.model.compile(dynamic=True)


def build_module(config: RunConfig, dm: Any) -> TransferModule:
    """A fresh :class:`TransferModule` for the data module's tasks, normalised by its training split."""
    from tlgnn.utils.config import ConfigError

    try:
        module = TransferModule(
            model={"encoder": dict(config.model.encoder), "head": dict(config.model.head)},
            tasks=list(dm.tasks),
            optim=_asdict(config.optim),
            loss=_asdict(config.loss),
            graph=graph_settings(dm, config),
            target_stats=target_stats(dm),
        )
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        # the model registries' messages start with "model.encoder"/"model.head" and name the option
        raise ConfigError("model", str(err)) from err
    if config.model.init_from is not None or config.model.finetune.active:
        apply_finetuning(module, config.model.init_from, config.model.finetune)  # pretrained weights, freezing
    return module


def _asdict(obj: Any) -> dict[str, Any]:
    from tlgnn.utils.config import to_dict

    return to_dict(obj)


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


def training_callbacks(config: RunConfig, output_dir: Path) -> tuple[list[Callback], ModelCheckpoint]:
    """Checkpoints ``best.ckpt`` (by the early-stopping monitor) and ``last.ckpt`` (every epoch), early stopping,
    LR monitor and the epoch seeder. Returns the callbacks and the best-checkpoint callback.

    ``last.ckpt`` has its own callback: since Lightning 2.5, ``save_last=True`` rewrites ``last`` only in epochs
    that also wrote a top-k checkpoint, so a run killed after a few non-improving epochs would lose them.
    """
    es = config.trainer.early_stopping
    ckpt_dir = str(output_dir / "checkpoints")
    best = RunCheckpoint(dirpath=ckpt_dir, filename="best", monitor=es.monitor, mode=es.resolved_mode,
                           save_top_k=1, auto_insert_metric_name=False)
    last = RunCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                           enable_version_counter=False)
    callbacks: list[Callback] = [best, last, EpochSeeder(config.trainer.seed)]
    if es.patience is not None:
        callbacks.append(
            EarlyStopping(monitor=es.monitor, mode=es.resolved_mode, patience=es.patience, min_delta=es.min_delta)
        )
    if config.optim.scheduler != "none" or config.optim.warmup_epochs > 0:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    return callbacks, best


def _set_threads(config: RunConfig) -> None:
    if config.trainer.cpu_threads is not None:
        torch.set_num_threads(config.trainer.cpu_threads)


def check_monitors(config: RunConfig, module: TransferModule) -> None:
    """A ``monitor`` setting must name a metric the module logs: a typo stops the run before training, with the
    key, the closest name and the choices, not after the first epoch."""
    import difflib

    from tlgnn.utils.config import ConfigError

    known = module.logged_metric_names()
    settings = {"trainer.early_stopping.monitor": config.trainer.early_stopping.monitor}
    if config.optim.scheduler == "plateau":
        settings["optim.monitor"] = config.optim.monitor
    for key, name in settings.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(key, f"no logged metric {name!r}; {hint}choices: {', '.join(known)}")


def resume_checkpoint(resume: str | None, output_dir: Path) -> str | None:
    """The checkpoint to resume from: ``"last"`` -> ``output_dir/checkpoints/last.ckpt`` (which must exist),
    ``"auto"`` -> the same if it exists, else ``None`` (a fresh start: one job script for the first submission and
    every requeue), a path, or ``None``."""
    if resume is None:
        return None
    last = output_dir / "checkpoints" / "last.ckpt"
    if resume == "auto":
        return str(last) if last.is_file() else None
    path = last if resume == "last" else Path(resume).expanduser()
    if not path.is_file():
        raise RunError(f"cannot resume: checkpoint not found: {path}")
    try:
        read_checkpoint(path)  # safely, before Lightning touches it: damaged or foreign files stop here
    except CheckpointError as err:
        raise RunError(f"cannot resume: {err}; resume from another checkpoint with --resume PATH "
                       f"(e.g. {path.parent / 'best.ckpt'}) or start over with --overwrite") from err
    return str(path)


# ---------------------------------------------------------------------------------------------------- fit
def fit(config: RunConfig, resume: str | None = None, test: bool = True, overwrite: bool = False,
        callbacks: list[Callback] | None = None) -> FitResult:
    """Train the model of ``config``, then test its best checkpoint.

    Args:
        config: the run config.
        resume: ``"last"`` (``output_dir/checkpoints/last.ckpt``), ``"auto"`` (that one if it exists, else start
            afresh) or a checkpoint path to continue from.
        test: test the best checkpoint and write metrics/predictions/plots afterwards.
        overwrite: start over in an ``output_dir`` that already holds checkpoints (they, the CSV logs and the
            W&B run id are deleted).
        callbacks: extra Lightning callbacks.
    """
    out = Path(config.output_dir)
    ckpt_dir = out / "checkpoints"
    ckpt_path = resume_checkpoint(resume, out)
    if ckpt_path is None and (ckpt_dir / "last.ckpt").exists():
        if not overwrite:
            raise RunError(
                f"{out} already holds a run ({ckpt_dir / 'last.ckpt'}); pass --resume to continue it, "
                "--overwrite to start over, or choose another output_dir"
            )
        # start over: the old run's checkpoints, CSV logs and W&B run id go (its offline W&B files stay in
        # output_dir/wandb, unsynced data is not deleted; the new run gets a new id)
        shutil.rmtree(ckpt_dir)
        shutil.rmtree(out / "logs", ignore_errors=True)
        (out / RUN_ID_FILE).unlink(missing_ok=True)
    _set_threads(config)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)

    dm = build_datamodule(config, "fit")
    module = build_module(config, dm)
    check_monitors(config, module)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(config, out / "config.yaml")
    _report_data(dm, out)
    compile_model(config, module)
    loggers = build_loggers(config.logger, out, config.to_dict())
    run_callbacks, checkpoint = training_callbacks(config, out)
    trainer = build_trainer(config, out, loggers, run_callbacks + plan_callbacks(module.finetune_plan)
                            + list(callbacks or []))
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)  # checked by resume_checkpoint
    except NonFiniteLossError as err:
        close_loggers(loggers)
        raise RunError(f"training stopped: {err}; {_kept_checkpoints(ckpt_dir)}") from None

    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    last = ckpt_dir / "last.ckpt"
    result = FitResult(output_dir=out, best_checkpoint=best, last_checkpoint=last if last.exists() else None,
                       epochs=int(trainer.current_epoch))
    if test:
        ckpt = best or result.last_checkpoint
        result.test = _evaluate(trainer, module, dm, out, str(ckpt) if ckpt else None, loggers)
    close_loggers(loggers)
    return result


def _kept_checkpoints(ckpt_dir: Path) -> str:
    """Which checkpoints a stopped run left (they hold the weights of the last epoch that ended well)."""
    kept = [ckpt_dir / name for name in ("last.ckpt", "best.ckpt") if (ckpt_dir / name).is_file()]
    if not kept:
        return "no checkpoint was written before it"
    return "the last good checkpoints are kept: " + ", ".join(str(p) for p in kept)


# ---------------------------------------------------------------------------------------------------- test
def _check_tasks(module: TransferModule, dm: Any, checkpoint: str | Path) -> None:
    model_tasks = [t.name for t in module.tasks]
    data_tasks = [t.name for t in dm.tasks]
    if model_tasks != data_tasks:
        raise RunError(
            f"{checkpoint}: the model was trained on tasks {model_tasks}, the config's data gives {data_tasks}; "
            f"set data.tasks to {model_tasks}"
        )


def test(config: RunConfig, checkpoint: str | Path, output_dir: str | Path | None = None) -> TestResult:
    """Evaluate ``checkpoint`` on the test split of ``config``'s data; write metrics, predictions, plots into
    ``output_dir`` (default ``<config.output_dir>/test``, so the training run's own ``metrics.json`` stays)."""
    out = Path(output_dir).expanduser().resolve() if output_dir else Path(config.output_dir) / "test"
    out.mkdir(parents=True, exist_ok=True)
    _set_threads(config)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    module = load_module(checkpoint)
    dm = build_datamodule(config, "test")
    _check_tasks(module, dm, checkpoint)
    loggers = build_loggers(config.logger, out, config.to_dict())
    trainer = build_trainer(config, out, loggers, [], evaluation=True)
    label = str(Path(checkpoint).expanduser().resolve())
    result = _evaluate(trainer, module, dm, out, None, loggers, checkpoint_label=label)
    close_loggers(loggers)
    return result


def _report_data(dm: Any, out: Path) -> None:
    """Say on stderr what the run trains on and what was left out, and keep the alignment report beside the run
    (``output_dir/alignment_report.md``): rows dropped while aligning are listed there with their reasons."""
    from lightning.pytorch.utilities import rank_zero_only

    report = _alignment_report(dm)
    if report and rank_zero_only.rank == 0:
        (out / "alignment_report.md").write_text(report)
    names = [t.name for t in dm.tasks]
    labelled = int(dm.table.frame[names].notna().any(axis=1).sum())
    line = f"data: {len(dm.table)} materials, {labelled} with a label for {', '.join(names)}"
    left_out = dm.aligned_count - len(dm.table)
    if left_out:
        line += f"; {left_out} aligned materials have none of these labels and are left out"
    if report:
        line += f"; alignment report (every dropped row and why): {out / 'alignment_report.md'}"
    rank_zero_only(print)(line, file=sys.stderr)
    rank_zero_only(print)(f"caches (aligned tables, graphs): {Path(dm.config.cache_dir).expanduser()} "
                          "(data.cache_dir, else $TLGNN_CACHE_DIR, else ~/.cache/tlgnn)", file=sys.stderr)


def _alignment_report(dm: Any) -> str | None:
    """The text of the data's alignment report (``report.md``), if the data module has one."""
    path = getattr(dm, "alignment_report", None)
    if path is None or not Path(path).is_file():
        return None
    return Path(path).read_text()


def _evaluate(trainer: L.Trainer, module: TransferModule, dm: Any, out: Path, ckpt_path: str | None,
              loggers: list[Any], checkpoint_label: str | None = None) -> TestResult:
    """Test, then (on the main process) write metrics.json, predictions_test.csv, parity plots; log to W&B."""
    trainer.test(module, datamodule=dm, ckpt_path=ckpt_path, verbose=False, weights_only=True)
    scores: dict[str, dict[str, float]] = getattr(module, "last_test_scores", {})
    tasks: list[TaskSpec] = [t for t in module.tasks if t.name in module.outputs]
    metrics_path = out / "metrics.json"
    predictions_path: Path | None = None
    plots: dict[str, Path] = {}
    if trainer.is_global_zero:
        # the whole test split in one process (the data module's test loader is sharded under DDP)
        from tlgnn.data.loader import graph_loader

        loader = graph_loader(dm.test_set, batch_size=dm.config.batch_size, shuffle=False)
        got = predict_batches(module, loader)
        frame = prediction_frame(got.ids, got.preds, module.tasks, targets=got.y, mask=got.mask,
                                 id_column="material_id")
        add_mean_baseline(scores, frame, module.model.head.target_stats()[0])
        predictions_path = out / "predictions_test.csv"
        frame.to_csv(predictions_path, index=False)
        plots = parity_plots(frame, tasks, out, scores)
        write_metrics_json(
            metrics_path,
            scores,
            checkpoint=checkpoint_label or ckpt_path,
            epochs=int(trainer.current_epoch),
            tasks=[t.to_dict() for t in tasks],
        )
        wandb_logger = wandb_logger_of(loggers)
        if wandb_logger is not None:
            report_text = _alignment_report(dm)
            files = [metrics_path, predictions_path, out / "config.yaml"]
            if report_text:
                if not (out / "alignment_report.md").is_file():  # fit wrote it already; tlgnn test did not
                    (out / "alignment_report.md").write_text(report_text)
                files.append(out / "alignment_report.md")
            log_test_results_to_wandb(wandb_logger, scores, plots, report_text, files)
    return TestResult(scores=scores, table=format_metrics_table(scores, tasks), output_dir=out,
                      metrics_path=metrics_path, predictions_path=predictions_path, plots=plots)


__all__ = [
    "EpochSeeder",
    "FitResult",
    "RunError",
    "TestResult",
    "build_datamodule",
    "build_module",
    "build_trainer",
    "fit",
    "resume_checkpoint",
    "test",
]
