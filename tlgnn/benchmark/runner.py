"""Plan and run the cells of an experiment, resumably.

For each (model, fold, training size, seed) the runner builds the masked :class:`CellInput`, calls the model,
scores the test rows on the scarce target only and writes the cell's predictions and JSON (with the version of
its model kind, :mod:`tlgnn.benchmark.kinds`). A cell whose JSON already exists is skipped (a warning is printed
when its recorded settings differ from the current ones; pass ``force=True`` to recompute), unless an older
version of its kind computed it: then it is recomputed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from tlgnn.benchmark.cells import CellKey, git_commit, hardware_info, read_finished, write_csv, write_json
from tlgnn.benchmark.config import ExperimentConfig, ModelEntry, TrainSize
from tlgnn.benchmark.data import BenchmarkTable, load_table, require_columns
from tlgnn.benchmark.folds import grouped_folds, learning_curve_order
from tlgnn.benchmark.kinds import cell_version, is_current, kind_version
from tlgnn.benchmark.metrics import cell_uncertainty_metrics, classification_metrics, correction_metrics
from tlgnn.benchmark.models import CellInput, resolve_model
from tlgnn.errors import TlgnnError
from tlgnn.training.scores import regression_metrics
from tlgnn.utils.config import to_dict


@dataclass
class PlannedCell:
    """A cell to run: its key and the model entry (options with ``--quick`` overrides merged)."""

    key: CellKey
    model: ModelEntry


@dataclass
class RunSummary:
    """What a run did: cell ids run, skipped (finished before), too large (the training size exceeds the scarce
    labels of the training folds; the ``all`` cell covers it) and failed (with the error)."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_time_s: float = 0.0


def matches(cell_id: str, patterns: list[str] | None) -> bool:
    """Whether ``cell_id`` (``exp/model/foldK_nN_sS``) matches any glob in ``patterns`` (prefixes match too)."""
    if not patterns:
        return True
    return any(fnmatch.fnmatch(cell_id, p) or fnmatch.fnmatch(cell_id, p.rstrip("/") + "/*") for p in patterns)


def plan_cells(config: ExperimentConfig, quick: bool = False, only: list[str] | None = None) -> list[PlannedCell]:
    """The cells of ``config`` (the ``quick`` subset when asked), filtered by ``only`` globs."""
    folds = config.quick.folds if quick else list(range(config.folds.n_folds))
    sizes = config.quick.train_sizes if quick else config.train_sizes
    seeds = config.quick.seeds if quick else config.seeds
    cells = []
    for entry in config.models:
        model = ModelEntry(entry.kind, entry.name, entry.regime, {**entry.options, **(config.quick.options if quick else {})})
        for seed in seeds:
            for fold in folds:
                for size in sizes:
                    key = CellKey(config.name, str(entry.name), fold, size, seed)
                    if matches(key.id, only):
                        cells.append(PlannedCell(key, model))
    return cells


def settings_hash(config: ExperimentConfig, model: ModelEntry, table: BenchmarkTable, quick: bool) -> str:
    """Hash of everything a cell's result depends on besides its coordinates (data, folds, model options)."""
    payload = {
        "target": config.target,
        "low": config.low,
        "auxiliary": config.auxiliary,
        "data": {k: v["sha256"] for k, v in table.files.items()},
        "group_by": config.data.group_by,
        "max_low_only_rows": config.data.max_low_only_rows,
        "folds": to_dict(config.folds),
        "model": to_dict(model),
        "quick": quick,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ExperimentData:
    """The loaded table, the fold of every row and the scarce-label mask (shared by all cells)."""

    table: BenchmarkTable
    folds: np.ndarray
    has_target: np.ndarray

    @property
    def frame(self) -> pd.DataFrame:
        return self.table.frame


def prepare(config: ExperimentConfig, data_path: str | Path | None = None, repo_root: str | Path | None = None) -> ExperimentData:
    """Load the experiment's table, check its columns and assign grouped folds."""
    table = load_table(config.data, data_path, repo_root)
    columns = [config.target, *([config.low] if config.low else []), *config.auxiliary]
    require_columns(table.frame, columns, table.path)
    has_target = table.frame[config.target].notna().to_numpy()
    if config.kind == "classification":
        values = table.frame.loc[has_target, config.target].to_numpy(dtype=np.float64)
        bad = ~np.isin(values, np.arange(len(config.classes or [])))
        if bad.any():
            raise ValueError(f"{table.path}: {config.target!r} holds values other than class indices 0..{len(config.classes or []) - 1}")
    folds = grouped_folds(table.frame["group"].to_numpy(), has_target.astype(float), config.folds.n_folds, config.folds.seed)
    return ExperimentData(table, folds, has_target)


def cell_rows(config: ExperimentConfig, data: ExperimentData, fold: int, size: TrainSize, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train_idx, train_target_idx, test_idx)`` of a cell (row positions).

    ``train_target_idx`` is the first ``size`` rows of a seeded permutation of the training-fold scarce rows
    (nested subsets); when ``size`` exceeds what is available all are returned (the runner skips such cells).
    Training rows with no scarce label of any kind (target, low excluded, auxiliary) are subsampled to
    ``data.max_low_only_rows`` when set.
    """
    in_test = data.folds == fold
    test_idx = np.flatnonzero(in_test & data.has_target)
    candidates = np.flatnonzero(~in_test & data.has_target)
    order = learning_curve_order(candidates, fold, seed)
    chosen = order if size == "all" else order[: int(size)]
    train_target_idx = np.sort(chosen)
    train_mask = ~in_test
    if config.data.max_low_only_rows is not None:
        scarce = data.frame[[config.target, *config.auxiliary]].notna().any(axis=1).to_numpy()
        low_only = np.flatnonzero(train_mask & ~scarce)
        if low_only.size > config.data.max_low_only_rows:
            rng = np.random.default_rng([seed, fold, 104729])
            drop = rng.choice(low_only, low_only.size - config.data.max_low_only_rows, replace=False)
            train_mask = train_mask.copy()
            train_mask[drop] = False
    return np.flatnonzero(train_mask), train_target_idx, test_idx


def masked_frame(config: ExperimentConfig, frame: pd.DataFrame, model: ModelEntry, train_target_idx: np.ndarray, test_idx: np.ndarray) -> pd.DataFrame:
    """A copy of ``frame`` in which the model cannot see what it must not (see :mod:`tlgnn.benchmark.models`)."""
    out = frame.copy()
    target = np.full(len(out), np.nan)
    target[train_target_idx] = out[config.target].to_numpy(dtype=np.float64)[train_target_idx]
    out[config.target] = target
    hidden = [*config.auxiliary]
    if config.low is not None and model.regime != "low_fidelity_known":
        hidden.append(config.low)
    for column in hidden:
        values = out[column].to_numpy(dtype=np.float64).copy()
        values[test_idx] = np.nan
        out[column] = values
    return out


def _score(config: ExperimentConfig, frame: pd.DataFrame, test_idx: np.ndarray, output) -> tuple[dict, pd.DataFrame]:
    y_true = frame[config.target].to_numpy(dtype=np.float64)[test_idx]
    predictions = pd.DataFrame({"id": frame["id"].to_numpy()[test_idx], "y_true": y_true})
    if config.kind == "classification":
        proba = np.asarray(output.y_pred, dtype=np.float64)
        n_classes = len(config.classes or [])
        if proba.shape != (len(test_idx), n_classes):
            raise ValueError(f"classification output must be [n_test={len(test_idx)}, {n_classes}], got {proba.shape}")
        metrics = classification_metrics(y_true.astype(np.int64), proba)
        predictions["y_pred"] = proba.argmax(axis=1)
        for c in range(n_classes):
            predictions[f"p_{config.classes[c]}"] = proba[:, c]
    else:
        y_pred = np.asarray(output.y_pred, dtype=np.float64).reshape(-1)
        if y_pred.shape != y_true.shape:
            raise ValueError(f"regression output must be [n_test={len(test_idx)}], got {np.shape(output.y_pred)}")
        if not np.isfinite(y_pred).all():
            raise ValueError(f"{int((~np.isfinite(y_pred)).sum())} predictions are NaN/inf")
        metrics = regression_metrics(y_true=y_true, y_pred=y_pred)
        predictions["y_pred"] = y_pred
        if config.low is not None:
            low_true = frame[config.low].to_numpy(dtype=np.float64)[test_idx]
            predictions["low_true"] = low_true
            if "low_pred" in output.columns:
                metrics.update(correction_metrics(y_true, y_pred, low_true, output.columns["low_pred"]))
        if "y_std" in output.columns:
            metrics.update(cell_uncertainty_metrics(y_true, y_pred, output.columns, output.info))
    for name, values in output.columns.items():
        values = np.asarray(values)
        if values.shape[0] != len(test_idx):
            raise ValueError(f"extra column {name!r} has {values.shape[0]} rows, expected {len(test_idx)}")
        predictions[name] = values
    return metrics, predictions


def run_experiment(
    config: ExperimentConfig,
    results: str | Path,
    *,
    data_path: str | Path | None = None,
    repo_root: str | Path | None = None,
    quick: bool = False,
    only: list[str] | None = None,
    force: bool = False,
    keep_going: bool = True,
    log: Callable[[str], None] = print,
    accelerator: str = "cpu",
    shared: dict[str, Any] | None = None,
) -> RunSummary:
    """Run every planned cell of ``config`` not finished yet under ``results``; returns a :class:`RunSummary`.

    A cell computed by an older version of its model kind (:mod:`tlgnn.benchmark.kinds`) is not finished: it
    is recomputed. With ``keep_going`` a failing cell is reported and the others still run; otherwise the error
    propagates. ``accelerator`` (``cpu``/``gpu``) is where the GNN kinds train; ``shared`` keeps the
    per-experiment memo across calls (a worker process running several groups of cells).
    """
    results = Path(results).resolve()  # work dirs are handed to runs whose cwd differs
    start = time.perf_counter()
    summary = RunSummary()
    cells = plan_cells(config, quick, only)
    if not cells:
        return summary
    data = prepare(config, data_path, repo_root)
    hashes: dict[str, str] = {}
    context = _RunContext(config, data, results, quick, accelerator, {} if shared is None else shared)
    for cell in cells:
        key, model = cell.key, cell.model
        h = hashes.setdefault(str(model.name), settings_hash(config, model, data.table, quick))
        done = read_finished(key.json_path(results))
        if done is not None and not force:
            if is_current(done):
                if done.get("settings_hash") != h:
                    log(f"[stale] {key.id}: recorded settings differ from the config; kept (rerun with --force)")
                summary.skipped.append(key.id)
                continue
            log(f"[outdated] {key.id}: computed by version {cell_version(done)} of {model.kind}, now "
                f"{kind_version(model.kind)}; rerunning")
        try:
            line = _run_cell(context, cell, h)
        except _TooLarge as err:
            summary.too_large.append(key.id)
            log(f"[n/a] {key.id}: only {err} scarce training labels")
            continue
        except Exception as err:  # one failing cell must not lose the others' results
            if not keep_going:
                raise
            summary.failed[key.id] = f"{type(err).__name__}: {err}"
            log(f"[failed] {key.id}: {type(err).__name__}: {err}")
            continue
        summary.ran.append(key.id)
        log(line)
    summary.wall_time_s = time.perf_counter() - start
    return summary


class _TooLarge(TlgnnError):
    """The cell's training size exceeds the fold's scarce training labels (the message is their count)."""


@dataclass
class _RunContext:
    """What every cell of one :func:`run_experiment` call shares."""

    config: ExperimentConfig
    data: ExperimentData
    results: Path
    quick: bool
    accelerator: str
    shared: dict[str, Any]
    hardware: dict[str, Any] = field(init=False)  # hardware_info(), set once in __post_init__

    def __post_init__(self) -> None:
        if self.accelerator != "cpu":
            import torch  # noqa: F401  (so that hardware_info names the GPU)
        self.hardware = hardware_info()


def _run_cell(ctx: _RunContext, cell: PlannedCell, settings: str) -> str:
    """Compute one cell and write its files; returns the log line. Raises :class:`_TooLarge` for a training
    size above the fold's labels and whatever the model raises."""
    config, data, key, model = ctx.config, ctx.data, cell.key, cell.model
    train_idx, train_target_idx, test_idx = cell_rows(config, data, key.fold, key.train_size, key.seed)
    if key.train_size != "all" and len(train_target_idx) < int(key.train_size):
        raise _TooLarge(len(train_target_idx))
    frame = masked_frame(config, data.frame, model, train_target_idx, test_idx)
    cell_input = CellInput(
        experiment=config, model=model, frame=frame, train_idx=train_idx, train_target_idx=train_target_idx,
        test_idx=test_idx, groups=data.frame["group"].to_numpy(), fold=key.fold, train_size=key.train_size,
        seed=key.seed, quick=ctx.quick, data_path=data.table.path,
        work_dir=ctx.results / config.name / str(model.name) / "work" / key.stem, shared=ctx.shared,
        accelerator=ctx.accelerator,
    )
    t0 = time.perf_counter()
    output = resolve_model(model.kind)(cell_input)
    metrics, predictions = _score(config, data.frame, test_idx, output)
    wall = time.perf_counter() - t0
    record = {
        "experiment": config.name,
        "model": model.name,
        "kind": model.kind,
        "model_version": kind_version(model.kind),
        "regime": model.regime,
        "task_kind": config.kind,
        "target": config.target,
        "low": config.low,
        "fold": key.fold,
        "train_size": key.train_size,
        "n_train_target": int(len(train_target_idx)),
        "n_train_rows": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "seed": key.seed,
        "quick": ctx.quick,
        "metrics": metrics,
        "wall_time_s": round(wall, 3),
        "info": output.info,
        "options": model.options,
        "settings_hash": settings,
        "data": {"path": data.table.path, "files": data.table.files},
        "folds": {"n_folds": config.folds.n_folds, "seed": config.folds.seed, "group_by": config.data.group_by},
        "accelerator": ctx.accelerator,
        "hardware": ctx.hardware,
        "git_commit": git_commit(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_csv(key.predictions_path(ctx.results), predictions)
    write_json(key.json_path(ctx.results), record)
    main = metrics.get("mae", metrics.get("accuracy"))
    return (f"[done] {key.id}: {'mae' if 'mae' in metrics else 'accuracy'}={main:.4f} "
            f"n_train={len(train_target_idx)} ({wall:.1f} s)")


# kinds whose cells of one fold share a trained artefact (the fold's low-fidelity model, memoised on disk):
# a worker runs them together so that two processes never train it at once
FOLD_SHARED_KINDS = ("gnn_single", "gnn_union", "gnn_finetune")


def unfinished_tasks(config: ExperimentConfig, results: str | Path, quick: bool = False,
                     only: list[str] | None = None, force: bool = False) -> list[tuple[int, list[str]]]:
    """The unfinished cells of ``config`` (not computed, or by an older version of their kind; every selected
    cell with ``force``) as worker tasks
    ``(priority, cell ids)``, in plan order.

    ``priority`` is the index of the first ``only`` pattern a task's cells match (0 without patterns), so
    that a parallel run takes the patterns in the order given. A task is one cell, except for the kinds in
    :data:`FOLD_SHARED_KINDS`, whose cells are one task per (model, fold).
    """
    tasks: dict[tuple, tuple[int, list[str]]] = {}
    for cell in plan_cells(config, quick, only):
        done = None if force else read_finished(cell.key.json_path(Path(results)))
        if done is not None and is_current(done):
            continue
        rank = next((i for i, p in enumerate(only or []) if matches(cell.key.id, [p])), 0)
        key = ((str(cell.model.name), cell.key.fold) if cell.model.kind in FOLD_SHARED_KINDS
               else (cell.key.id,))
        old_rank, ids = tasks.get(key, (rank, []))
        tasks[key] = (min(old_rank, rank), [*ids, cell.key.id])
    return list(tasks.values())


def warm_caches(config: ExperimentConfig, data: ExperimentData, quick: bool, n_jobs: int,
                models: set[str] | None = None) -> None:
    """Parse the structures and build the graphs that the GNN models of ``config`` need (those named in
    ``models``, default all), with ``n_jobs`` processes, so that worker processes started afterwards all find
    them cached."""
    from tlgnn.benchmark.gnn import cached_structures, entry_options

    done = set()
    for entry in config.models:
        if entry.kind.startswith("gnn_") and (models is None or str(entry.name) in models):
            opts = entry_options(entry, quick)
            key = (opts.cache_dir, opts.cutoff, opts.max_neighbors, opts.frame_kind)
            if key not in done:
                cached_structures(data.table.path, data.frame["id"].tolist(), opts, n_jobs=n_jobs)
                done.add(key)


_WORKER_SHARED: dict[str, dict[str, Any]] = {}


def run_group(config_path: str, results: str, ids: list[str], *, data_path: str | None = None,
              repo_root: str | None = None, quick: bool = False, accelerator: str = "cpu",
              keep_going: bool = True, force: bool = False) -> RunSummary:
    """Run the cells ``ids`` of one experiment (a worker process's task); the experiment's memo is kept
    in the process for its next task."""
    from tlgnn.benchmark.config import load_experiment

    config = load_experiment(config_path)
    shared = _WORKER_SHARED.setdefault(f"{config_path}|{data_path}|{quick}", {})
    return run_experiment(config, results, data_path=data_path, repo_root=repo_root, quick=quick, only=ids,
                          accelerator=accelerator, shared=shared, keep_going=keep_going, force=force,
                          log=lambda msg: print(msg, flush=True))


__all__ = ["ExperimentData", "PlannedCell", "RunSummary", "cell_rows", "masked_frame", "matches", "plan_cells",
           "prepare", "run_experiment", "run_group", "settings_hash", "unfinished_tasks", "warm_caches"]
