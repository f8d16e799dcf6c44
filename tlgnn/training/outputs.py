"""What a run leaves on disk: metrics table/JSON, prediction tables, parity plots.

Column conventions of prediction tables (``predictions_test.csv``, ``tlgnn predict`` output):
regression task ``t`` -> ``t`` (predicted, physical units) and, with labels, ``t_true``; classification task
``t`` -> ``t`` (predicted class label), ``t_prob_<class>`` per class and, with labels, ``t_true``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from tlgnn.data.tasks import TaskSpec
from tlgnn.models.ensemble import UNCERTAINTY_KEYS
from tlgnn.training.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS


BASELINE_MAE = "mae_of_mean"
"""Test metric of a regression task: the MAE of always predicting the training split's mean (task unit)."""


#: An ensemble's test figures shown in the metrics table (``tlgnn.training.calibrate.uncertainty_scores``).
ENSEMBLE_COLUMNS = ("mae_single", "coverage", "miscalibration_area", "spearman", "nll", "nll_constant")


def add_mean_baseline(scores: dict[str, dict[str, float]], frame: Any, train_mean: Mapping[str, float]) -> None:
    """Add ``mae_of_mean`` to each regression task's scores: what a model must beat to have learnt anything.
    ``frame`` holds ``<task>_true`` columns (NaN where unlabelled), ``train_mean`` the training-split means."""
    for task, mean in train_mean.items():
        column = f"{task}_true"
        if task in scores and column in frame:
            true = frame[column].to_numpy(dtype=float)
            true = true[~np.isnan(true)]
            if len(true):
                scores[task][BASELINE_MAE] = float(np.abs(true - mean).mean())


def format_metrics_table(scores: Mapping[str, Mapping[str, float]], tasks: Sequence[TaskSpec]) -> str:
    """A plain-text table, one row per task: n and its metrics (regression in the task's unit)."""
    by_name = {t.name: t for t in tasks}
    columns = (*REGRESSION_METRICS, BASELINE_MAE, *ENSEMBLE_COLUMNS, *CLASSIFICATION_METRICS)
    rows = [("task", "kind", "unit", "n", *columns)]

    def fmt(value: Any) -> str:
        if value is None:
            return ""
        value = float(value)
        return "nan" if math.isnan(value) else f"{value:.4f}"

    for name, values in scores.items():
        task = by_name.get(name)
        kind = task.kind if task else ""
        unit = (task.unit or "") if task else ""
        metric_cells = [fmt(values.get(m)) if m in values else "" for m in columns]
        rows.append((name, kind, unit, str(int(values.get("n", 0))), *metric_cells))
    keep = [i for i in range(len(rows[0])) if any(row[i] for row in rows[1:])] or list(range(len(rows[0])))
    rows = [tuple(row[i] for i in keep) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    return value


def write_metrics_json(path: str | Path, scores: Mapping[str, Mapping[str, float]], **extra: Any) -> Path:
    """``{"test": {task: {metric: value}}, **extra}`` as JSON (NaN written as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable({"test": scores, **extra}), indent=2) + "\n")
    return path


def prediction_columns(preds: Mapping[str, np.ndarray], tasks: Sequence[TaskSpec]) -> dict[str, Any]:
    """Prediction columns for ``preds`` (regression values [n]; classification probabilities [n, C])."""
    columns: dict[str, Any] = {}
    for task in tasks:
        if task.name not in preds:
            continue
        values = np.asarray(preds[task.name])
        if task.kind == "classification":
            labels = np.asarray(task.classes, dtype=object)
            columns[task.name] = labels[values.argmax(axis=1)] if len(values) else np.array([], dtype=object)
            for c, label in enumerate(task.classes):
                columns[f"{task.name}_prob_{label}"] = values[:, c] if len(values) else np.array([])
        else:
            columns[task.name] = values.reshape(-1)
    return columns


def prediction_frame(
    ids: Sequence[str],
    preds: Mapping[str, np.ndarray],
    tasks: Sequence[TaskSpec],
    targets: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    id_column: str = "id",
    uncertainty: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per structure: ``id_column``, predictions, an ensemble's ``uncertainty`` columns (see
    :class:`tlgnn.training.inference.Inference`) and (with ``targets``/``mask`` [n, T]) ``<task>_true``."""
    frame = pd.DataFrame({id_column: list(ids)})
    for name, column in prediction_columns(preds, tasks).items():
        frame[name] = column
    for task in tasks:
        for key in UNCERTAINTY_KEYS:
            values = (uncertainty or {}).get(f"{task.name}_{key}")
            if values is None:
                continue
            if task.kind == "classification":  # the spread of each class probability
                if key != "std":
                    continue
                for c, label in enumerate(task.classes):
                    frame[f"{task.name}_prob_{label}_std"] = values[:, c] if len(values) else np.array([])
            else:
                frame[f"{task.name}_{key}"] = values.reshape(-1)
    if targets is not None and mask is not None:
        for j, task in enumerate(tasks):
            if task.name not in preds:
                continue
            true = np.where(mask[:, j], targets[:, j], np.nan).astype(float)
            if task.kind == "classification":
                labels = np.asarray(task.classes, dtype=object)
                col = np.full(len(true), None, dtype=object)
                ok = ~np.isnan(true)
                col[ok] = labels[true[ok].astype(int)]
                frame[f"{task.name}_true"] = col
            else:
                frame[f"{task.name}_true"] = true
    return frame


def parity_plot(
    true: np.ndarray, pred: np.ndarray, task: TaskSpec, path: str | Path, metrics: Mapping[str, float] | None = None
) -> Path:
    """Predicted vs true scatter with the y = x line (PNG, matplotlib Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(true, pred, s=10, alpha=0.6, edgecolors="none")
    if len(true):
        lo = float(min(np.min(true), np.min(pred)))
        hi = float(max(np.max(true), np.max(pred)))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    unit = f" ({task.unit})" if task.unit else ""
    ax.set_xlabel(f"true {task.name}{unit}")
    ax.set_ylabel(f"predicted {task.name}{unit}")
    if metrics:
        text = "\n".join(
            f"{k.upper() if k != 'r2' else 'R²'} = {metrics[k]:.3f}"
            for k in ("mae", "rmse", "r2")
            if k in metrics and metrics[k] is not None and math.isfinite(metrics[k])
        )
        text += f"\nn = {len(true)}"
        ax.text(0.04, 0.96, text, transform=ax.transAxes, va="top", fontsize=8)
    ax.set_title(f"{task.name}: test set")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def parity_plots(
    frame: pd.DataFrame, tasks: Sequence[TaskSpec], out_dir: str | Path, scores: Mapping[str, Mapping[str, float]]
) -> dict[str, Path]:
    """One ``parity_<task>.png`` per regression task with labelled rows in ``frame``."""
    plots: dict[str, Path] = {}
    for task in tasks:
        if task.kind != "regression" or f"{task.name}_true" not in frame:
            continue
        sub = frame[[task.name, f"{task.name}_true"]].dropna()
        if sub.empty:
            continue
        plots[task.name] = parity_plot(
            sub[f"{task.name}_true"].to_numpy(),
            sub[task.name].to_numpy(),
            task,
            Path(out_dir) / f"parity_{task.name}.png",
            scores.get(task.name),
        )
    return plots


__all__ = [
    "format_metrics_table",
    "parity_plot",
    "parity_plots",
    "prediction_columns",
    "prediction_frame",
    "write_metrics_json",
]
