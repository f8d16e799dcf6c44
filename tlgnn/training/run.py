"""The ``fit`` and ``test`` workflows behind ``tlgnn fit`` / ``tlgnn test``: the one road a run is assembled on
(the Trainer and its callbacks are built by :mod:`tlgnn.training.trainer`).

``fit(config)`` trains with Lightning (seeded, checkpoints ``best.ckpt`` and ``last.ckpt``, early stopping,
gradient clipping, mixed precision on GPU), then tests the best checkpoint. ``test(config, checkpoint)``
evaluates a checkpoint on the config's test split. Both write into ``output_dir`` (``test`` into
``output_dir/test`` unless given another folder):

- ``config.yaml`` (the resolved run config), ``checkpoints/{best,last}.ckpt``, ``logs/version_N/metrics.csv``
- ``metrics.json`` (per-task test metrics), ``predictions_test.csv``, ``parity_<task>.png`` per regression task
- ``wandb/`` with ``logger.kind: wandb``
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback

from tlgnn.data.tasks import TaskSpec
from tlgnn.errors import TlgnnError
from tlgnn.models.ensemble import is_ensemble
from tlgnn.training.calibrate import calibrate_module, merge_scores, uncertainty_plots, uncertainty_scores
from tlgnn.training.checkpoint import CheckpointError, export_checkpoint, load_module, read_checkpoint
from tlgnn.training.config import RunConfig, check_model_options, save_run_config
from tlgnn.training.finetune import apply_finetuning, plan_callbacks
from tlgnn.training.frozen import attach_cached_embeddings, fit_head_directly
from tlgnn.training.loggers import RUN_ID_FILE, build_loggers, close_loggers, log_test_results_to_wandb, wandb_logger_of
from tlgnn.training.inference import predict_batches
from tlgnn.training.module import NonFiniteLossError, TransferModule
from tlgnn.training.outputs import (add_mean_baseline, format_metrics_table, parity_plots, prediction_frame,
                                    write_metrics_json)
from tlgnn.training.trainer import (CHECKPOINT_POLICIES, build_trainer, compile_model, set_threads,
                                    training_callbacks)


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
    """Where a finished training run left its checkpoints, the trained module, and its test result."""

    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    epochs: int
    steps: int = 0
    module: TransferModule | None = None  # the trained module: the weights of the last epoch run
    test: TestResult | None = None

    def best_module(self) -> TransferModule:
        """The module of the best checkpoint, in eval mode on the trained module's device (the trained module
        itself where no checkpoint was written)."""
        if self.best_checkpoint is None:
            if self.module is None:
                raise RunError(f"{self.output_dir}: the run left neither a checkpoint nor a module")
            return self.module.eval()
        best = load_module(self.best_checkpoint)
        return best.to(self.module.device) if self.module is not None else best


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


def build_module(config: RunConfig, dm: Any) -> TransferModule:
    """A fresh :class:`TransferModule` for the data module's tasks, normalised by its training split.

    Encoder/head options are checked and old option names renamed first (:func:`check_model_options`, a note
    on stderr per old name), so a config built in Python trains and saves exactly as ``tlgnn fit`` would."""
    from tlgnn.utils.config import ConfigError

    check_model_options(config.model)
    try:
        module = TransferModule(
            model={"encoder": dict(config.model.encoder), "head": dict(config.model.head), **ensemble_of(config)},
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


def ensemble_of(config: RunConfig) -> dict[str, Any]:
    """``{"ensemble": spec}`` of a config with more than one member (else ``{}``); the members share one encoder
    when it stays frozen for the whole run (they read the same embedding, stored once per material)."""
    ensemble = config.model.ensemble
    if ensemble.members <= 1:
        return {}
    finetune = config.model.finetune
    shared = finetune.freeze == "encoder" and not finetune.unfreeze_every
    return {"ensemble": {**_asdict(ensemble), "shared_encoder": shared}}


def _asdict(obj: Any) -> dict[str, Any]:
    from tlgnn.utils.config import to_dict

    return to_dict(obj)


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
        hint = (f"; resume from another checkpoint with --resume PATH (e.g. {path.parent / 'best.ckpt'}) or start "
                "over with --overwrite") if err.damaged else ""
        raise RunError(f"cannot resume: {err}{hint}") from err
    return str(path)


# ---------------------------------------------------------------------------------------------------- fit
def prepare_output(output_dir: Path, resume: str | None, overwrite: bool) -> str | None:
    """The checkpoint to resume from (see :func:`resume_checkpoint`), after the rules for a folder that already
    holds a run: without ``resume`` it is an error unless ``overwrite``, which deletes the old run's checkpoints,
    CSV logs and W&B run id (its offline W&B files stay in ``output_dir/wandb``; the new run gets a new id)."""
    ckpt_dir = output_dir / "checkpoints"
    ckpt_path = resume_checkpoint(resume, output_dir)
    if ckpt_path is None and (ckpt_dir / "last.ckpt").exists():
        if not overwrite:
            raise RunError(
                f"{output_dir} already holds a run ({ckpt_dir / 'last.ckpt'}); pass --resume to continue it, "
                "--overwrite to start over, or choose another output_dir"
            )
        shutil.rmtree(ckpt_dir)
        shutil.rmtree(output_dir / "logs", ignore_errors=True)
        (output_dir / RUN_ID_FILE).unlink(missing_ok=True)
    return ckpt_path


def fit(config: RunConfig, *, datamodule: Any = None, callbacks: Sequence[Callback] = (),
        checkpoints: str = "best_and_last", resume: str | None = None, test: bool = True,
        overwrite: bool = False) -> FitResult:
    """Train the model of ``config``, then test its best checkpoint: the one road every training run takes
    (``tlgnn fit``, the benchmark's GNN cells, ``scripts/pretrain.py``, ``scripts/bench_finetune.py``).

    Args:
        config: the run config.
        datamodule: the data to train on instead of the one ``config.data`` describes (e.g. a table a script
            selected); set up here if it is not yet.
        callbacks: extra Lightning callbacks (progress lines, exports).
        checkpoints: ``"best_and_last"`` (``best.ckpt`` and, every epoch, ``last.ckpt``, the resume point) or
            ``"best"`` (only ``best.ckpt``; runs that are never resumed).
        resume: ``"last"`` (``output_dir/checkpoints/last.ckpt``), ``"auto"`` (that one if it exists, else start
            afresh) or a checkpoint path to continue from.
        test: test the best checkpoint and write metrics/predictions/plots afterwards.
        overwrite: start over in an ``output_dir`` that already holds checkpoints (they, the CSV logs and the
            W&B run id are deleted).

    Returns:
        :class:`FitResult`: checkpoints, epochs and steps run, the trained module (``best_module()`` loads the
        best one) and the test result.
    """
    if checkpoints not in CHECKPOINT_POLICIES:
        raise ValueError(f"checkpoints must be one of {CHECKPOINT_POLICIES}, got {checkpoints!r}")
    out = Path(config.output_dir)
    ckpt_path = prepare_output(out, resume, overwrite)
    set_threads(config)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    if datamodule is None:
        dm = build_datamodule(config, "fit")
    else:
        dm = datamodule
        dm.setup("fit")
    module = build_module(config, dm)
    attach_cached_embeddings(config, module, dm)  # a frozen encoder runs once per material
    if getattr(module.model.head, "fits_directly", False):
        return _fit_directly(config, module, dm, out, test)
    check_monitors(config, module)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(config, out / "config.yaml")
    _report_data(dm, out)
    compile_model(config, module)
    loggers = build_loggers(config.logger, out, config.to_dict())
    run_callbacks, checkpoint = training_callbacks(config, out, checkpoints)
    trainer = build_trainer(config, out, loggers, run_callbacks + plan_callbacks(module.finetune_plan)
                            + list(callbacks))
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)  # checked by resume_checkpoint
    except NonFiniteLossError as err:
        close_loggers(loggers)
        raise RunError(f"training stopped: {err}; {_kept_checkpoints(out / 'checkpoints')}") from None
    except ValueError as err:
        if "Tried to step" not in str(err):  # torch's OneCycleLR past the total steps it was built for
            raise
        close_loggers(loggers)
        raise RunError(f"training stopped: the one-cycle learning-rate schedule (optim.scheduler: onecycle) is over "
                       f"({err}); a resumed onecycle run cannot train longer than the steps it was planned for: "
                       f"resume with its trainer.max_epochs, or start over with --overwrite; "
                       f"{_kept_checkpoints(out / 'checkpoints')}") from None

    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    last = out / "checkpoints" / "last.ckpt"
    result = FitResult(output_dir=out, best_checkpoint=best, last_checkpoint=last if last.exists() else None,
                       epochs=int(trainer.current_epoch), steps=int(trainer.global_step), module=module)
    calibrated = _calibrated_best(result, dm) if is_ensemble(module.model.head) else None
    if test:
        ckpt = best or result.last_checkpoint
        if calibrated is not None:  # the calibrated model, as best.ckpt now holds it
            result.test = _evaluate(trainer, calibrated, dm, out, None, loggers, checkpoint_label=str(best))
        else:
            result.test = _evaluate(trainer, module, dm, out, str(ckpt) if ckpt else None, loggers)
    close_loggers(loggers)
    return result


def _calibrated_best(result: FitResult, dm: Any) -> TransferModule:
    """An ensemble's best module recalibrated on the validation split (:func:`calibrate_module`); ``best.ckpt``
    is rewritten as a compact checkpoint holding the calibration (``last.ckpt`` stays the resume point)."""
    best = result.best_module()
    fitted = _calibrate(best, dm)
    if result.best_checkpoint is not None:
        export_checkpoint(best, result.best_checkpoint, info={"calibration": fitted, "epochs": result.epochs})
    return best


def _fit_directly(config: RunConfig, module: TransferModule, dm: Any, out: Path, test: bool) -> FitResult:
    """``fit`` for a head fitted in one go on stored embeddings (a tree head): no epochs; the module is written as
    ``best.ckpt`` (and ``last.ckpt``, the same) with its sidecars, then tested like any run."""
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(config, out / "config.yaml")
    _report_data(dm, out)
    history = fit_head_directly(module, dm)
    if is_ensemble(module.model.head):
        history["calibration"] = _calibrate(module, dm)
    best = export_checkpoint(module, out / "checkpoints" / "best.ckpt", info={"fit": history})
    last = export_checkpoint(module, out / "checkpoints" / "last.ckpt", info={"fit": history})
    result = FitResult(output_dir=out, best_checkpoint=best, last_checkpoint=last, epochs=0, steps=0, module=module)
    loggers = build_loggers(config.logger, out, config.to_dict())
    if test:
        trainer = build_trainer(config, out, loggers, [], evaluation=True)
        result.test = _evaluate(trainer, module, dm, out, None, loggers, checkpoint_label=str(best))
    close_loggers(loggers)
    return result


def _calibrate(module: TransferModule, dm: Any) -> dict[str, Any]:
    """:func:`calibrate_module` of an ensemble on ``dm``'s validation split, its error models on the training
    split (in table order, no shuffling); returns the fitted values."""
    from tlgnn.data.loader import graph_loader

    train = graph_loader(dm.train_set, batch_size=dm.config.batch_size, shuffle=False)
    return calibrate_module(module, dm.val_dataloader(), train)


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
    set_threads(config)
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
    for note in getattr(dm, "alignment_warnings", list)():  # conflicts merged, rows lost, labels out of range
        rank_zero_only(print)(note, file=sys.stderr)


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
                                 id_column="material_id", uncertainty=got.uncertainty)
        add_mean_baseline(scores, frame, module.model.head.target_stats()[0])
        predictions_path = out / "predictions_test.csv"
        frame.to_csv(predictions_path, index=False)
        plots = parity_plots(frame, tasks, out, scores)
        if is_ensemble(module.model.head):
            merge_scores(scores, uncertainty_scores(module, got))
            plots.update(uncertainty_plots(module, got, out))
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
    "FitResult",
    "RunError",
    "TestResult",
    "build_datamodule",
    "build_module",
    "check_monitors",
    "fit",
    "prepare_output",
    "resume_checkpoint",
    "test",
]
