"""An ensemble's uncertainty after training: recalibration on the validation split, and its test figures.

:func:`calibrate_module` runs the trained ensemble over the validation split, fits for each regression output the
recalibration its ``model.ensemble.calibration`` names (:func:`tlgnn.uncertainty.fit_calibration`: a std scale
or a conformal quantile, plus the constant-σ baseline) and stores it in the head's ``calibration`` buffer, so the
checkpoint written next carries it. :func:`uncertainty_scores` gives the test figures of ``tlgnn test``
(coverage of the interval, miscalibration area, Spearman(|error|, std), Gaussian NLL against the constant-σ
baseline, and the members' own MAE beside the ensemble's) and :func:`uncertainty_plots` their figures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tlgnn.data.tasks import TaskSpec
from tlgnn.training.inference import Inference, predict_batches
from tlgnn.uncertainty import calibration_plot, error_vs_std_plot, fit_calibration, uncertainty_metrics


def is_ensemble_module(module: Any) -> bool:
    """Whether ``module``'s model is an ensemble (:mod:`tlgnn.models.ensemble`)."""
    return bool(getattr(module.model.head, "is_ensemble", False))


def _labelled(got: Inference, tasks: Sequence[TaskSpec], name: str) -> np.ndarray:
    """Rows of ``got`` with a label of task ``name``."""
    j = [t.name for t in tasks].index(name)
    return got.mask[:, j].astype(bool)


def calibrate_module(module: Any, loader: Any, log: Any = sys.stderr) -> dict[str, dict[str, float | None]]:
    """Fit and store the recalibration of every regression output of ensemble ``module`` on ``loader`` (the
    validation split). Returns ``{task: {"scale", "floor", "quantile", "constant_sigma", "n"}}``; a task without
    validation labels keeps the raw spread (scale 1, floor 0)."""
    head = module.model.head
    spec = head.spec
    got = predict_batches(module, loader)
    tasks = list(module.tasks)
    fitted: dict[str, dict[str, float | None]] = {}
    for name in module.outputs:
        task = head.task_by_name[name]
        if task.kind != "regression":
            continue
        rows = _labelled(got, tasks, name)
        if rows.sum() < 2:
            head.set_calibration(name, {})
            fitted[name] = {**head.calibration_of(name), "n": int(rows.sum())}
            continue
        y = got.y[rows, tasks.index(task)]
        calibration = fit_calibration(y, got.preds[name][rows], got.uncertainty[f"{name}_std_raw"][rows],
                                      level=spec["level"], method=spec["calibration"])
        head.set_calibration(name, calibration.to_dict())
        fitted[name] = {**head.calibration_of(name), "n": int(rows.sum())}
    if log is not None and fitted:
        parts = [f"{name}: scale {v['scale']:.3g}, floor {v['floor']:.3g}"
                 + (f", conformal q {v['quantile']:.3g}" if v["quantile"] else "") for name, v in fitted.items()]
        print(f"tlgnn: ensemble of {head.k} calibrated on {len(got.ids)} validation materials ({'; '.join(parts)})",
              file=log)
    return fitted


def uncertainty_scores(module: Any, got: Inference) -> dict[str, dict[str, float]]:
    """Per regression output of ensemble ``module``, the uncertainty figures on ``got`` (the test split):
    ``coverage`` (of the calibrated interval), ``level``, ``interval_width``, ``miscalibration_area``,
    ``spearman``, ``nll``, ``nll_constant`` (constant σ fitted on validation), ``mean_std``, ``coverage_raw`` (the
    uncalibrated spread's Gaussian interval) and ``mae_single`` (mean MAE of the members alone)."""
    head = module.model.head
    tasks = list(module.tasks)
    scores: dict[str, dict[str, float]] = {}
    for name in module.outputs:
        if head.task_by_name[name].kind != "regression":
            continue
        rows = _labelled(got, tasks, name)
        if not rows.any():
            continue
        y = got.y[rows, [t.name for t in tasks].index(name)]
        u = {key: got.uncertainty[f"{name}_{key}"][rows] for key in ("std", "std_raw", "lower", "upper")}
        mean = got.preds[name][rows]
        figures = uncertainty_metrics(y, mean, u["std"], u["lower"], u["upper"], level=head.level,
                                      constant_sigma=head.calibration_of(name)["constant_sigma"])
        figures["coverage_raw"] = uncertainty_metrics(y, mean, u["std_raw"], level=head.level)["coverage"]
        members = got.members[name][:, rows]
        figures["mae_single"] = float(np.abs(members - y[None, :]).mean(1).mean())
        scores[name] = figures
    return scores


def uncertainty_plots(module: Any, got: Inference, out_dir: str | Path) -> dict[str, Path]:
    """``calibration_<task>.png`` and ``error_std_<task>.png`` per regression output with test labels; keys
    ``<task>/calibration`` and ``<task>/error_vs_std``."""
    tasks = list(module.tasks)
    plots: dict[str, Path] = {}
    for name in uncertainty_scores_names(module):
        rows = _labelled(got, tasks, name)
        if not rows.any():
            continue
        y = got.y[rows, [t.name for t in tasks].index(name)]
        mean, std = got.preds[name][rows], got.uncertainty[f"{name}_std"][rows]
        plots[f"{name}/calibration"] = calibration_plot(y, mean, std, Path(out_dir) / f"calibration_{name}.png",
                                                        f"{name}: calibration (test)")
        plots[f"{name}/error_vs_std"] = error_vs_std_plot(y, mean, std, Path(out_dir) / f"error_std_{name}.png",
                                                          f"{name}: |error| vs std (test)")
    return plots


def uncertainty_scores_names(module: Any) -> list[str]:
    """The regression outputs of ``module`` (those with uncertainty figures)."""
    head = module.model.head
    return [n for n in module.outputs if head.task_by_name[n].kind == "regression"]


def merge_scores(scores: dict[str, dict[str, float]], extra: Mapping[str, Mapping[str, float]]) -> None:
    """Add ``extra[task]`` figures to ``scores[task]`` in place."""
    for name, figures in extra.items():
        scores.setdefault(name, {}).update(figures)


__all__ = ["calibrate_module", "is_ensemble_module", "merge_scores", "uncertainty_plots", "uncertainty_scores"]
