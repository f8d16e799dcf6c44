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
import torch

from tlgnn.data.tasks import TaskSpec
from tlgnn.models.boosting import MIN_STOPPING_ROWS, held_out_rows
from tlgnn.training.inference import Inference, predict_batches
from tlgnn.uncertainty import (calibration_plot, constant_sigma, error_vs_std_plot, fit_calibration,
                               uncertainty_metrics)
from tlgnn.uncertainty.calibration import MIN_ROWS_PER_COMPONENT, informative_rows


def _labelled(got: Inference, tasks: Sequence[TaskSpec], name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, y)``: which rows of ``got`` have a label of task ``name``, and those labels."""
    j = [t.name for t in tasks].index(name)
    rows = got.mask[:, j].astype(bool)
    return rows, got.y[rows, j]


def regression_outputs(module: Any) -> list[str]:
    """The regression outputs of ``module`` (those with an interval and uncertainty figures)."""
    head = module.model.head
    return [n for n in module.outputs if head.task_by_name[n].kind == "regression"]


@torch.no_grad()
def ensemble_arrays(module: Any, loader: Any, out_of_bag: bool = False) -> dict[str, Any]:
    """Over ``loader``: the error models' inputs ``x`` [n, f], labels ``y`` [n, T] and ``mask`` [n, T], and per
    regression output ``mean[task]`` [n]: the ensemble's mean, or with ``out_of_bag`` (the training split) the
    mean of the members whose bootstrap left the row out (NaN where every member saw it); ``spread[task]`` [n]:
    the std of all members; ``known_low[task]`` [n] bool: where a chain's upper task adds to a known low value
    (:meth:`~tlgnn.models.ensemble.EnsembleHead.known_low_rows`; only the outputs that have one)."""
    from tlgnn.embeddings import encoded_batches
    from tlgnn.models.ensemble import out_of_bag_mean

    head = module.model.head
    was_training = module.training
    module.eval()
    xs, ys, masks, means, spreads, known = [], [], [], {}, {}, {}
    try:
        for batch, enc in encoded_batches(module.model, loader, module.device):
            for name, values in head.member_predictions(enc, batch).items():
                if values.dim() == 2:
                    mean = out_of_bag_mean(values, batch.idx) if out_of_bag else values.double().mean(0)
                    means.setdefault(name, []).append(mean.cpu().numpy())
                    spreads.setdefault(name, []).append(values.double().std(0, unbiased=False).cpu().numpy())
                    rows = head.known_low_rows(name, batch)
                    if rows is not None:
                        known.setdefault(name, []).append(rows.cpu().numpy())
            xs.append(head.error_inputs(enc, batch).cpu().numpy())
            ys.append(batch.y.float().cpu().numpy())
            masks.append(batch.y_mask.bool().cpu().numpy())
    finally:
        module.train(was_training)
    join = lambda parts: {k: np.concatenate(v) for k, v in parts.items()}  # noqa: E731
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "mask": np.concatenate(masks), "mean": join(means),
            "spread": join(spreads), "known_low": join(known)}


#: Fewest out-of-bag training rows an error model is fitted on.
MIN_ERROR_MODEL_ROWS = 10
#: Share of the out-of-bag rows an error model early-stops on when the validation split has fewer than
#: :data:`tlgnn.models.boosting.MIN_STOPPING_ROWS` labels of its task (a fifth: 16 of the 81 at N = 100).
ERROR_MODEL_STOPPING_SHARE = 0.2


def fit_task_error_model(head: Any, name: str, x: np.ndarray, y: np.ndarray, oob: np.ndarray, x_val: np.ndarray,
                         y_val: np.ndarray, mean_val: np.ndarray) -> dict[str, Any] | None:
    """Fit output ``name``'s error model on the training rows' out-of-bag |error| (features: the error inputs
    ``x`` [n, f], then the out-of-bag mean ``oob`` [n]; rows without a label (NaN ``y``) or an out-of-bag member
    are skipped), early-stopped on the validation rows' |error| of the ensemble mean, or, with fewer than
    :data:`~tlgnn.models.boosting.MIN_STOPPING_ROWS` of those, on a fixed :data:`ERROR_MODEL_STOPPING_SHARE` of
    its own rows (the validation rows then only calibrate). ``None`` with fewer than :data:`MIN_ERROR_MODEL_ROWS`
    usable rows. The one place both runs and the campaign fit error models.

    Returns the fit's facts (:meth:`~tlgnn.models.ensemble.EnsembleHead.fit_error_model`); when it stopped on
    its own rows, ``held_out`` [m] holds their positions in ``x``: rows that neither the error model nor their
    out-of-bag members were fitted on, which :func:`held_out_calibration_rows` adds to the calibration."""
    rows = np.isfinite(oob) & np.isfinite(y)
    if rows.sum() < MIN_ERROR_MODEL_ROWS:
        return None
    vrows = np.isfinite(y_val) & np.isfinite(mean_val)
    x_fit, e_fit = np.column_stack([x[rows], oob[rows]]), np.abs(y[rows] - oob[rows])
    if vrows.sum() >= MIN_STOPPING_ROWS:
        x_stop, e_stop = np.column_stack([x_val[vrows], mean_val[vrows]]), np.abs(y_val[vrows] - mean_val[vrows])
        return head.fit_error_model(name, x_fit, e_fit, x_stop, e_stop)
    # a handful of validation crystals stop it after a tree or two, and they calibrate it next: keep them apart
    held = held_out_rows(len(e_fit), ERROR_MODEL_STOPPING_SHARE, 0)
    info = head.fit_error_model(name, x_fit[~held], e_fit[~held], x_fit[held], e_fit[held])
    return {**info, "held_out": np.flatnonzero(rows)[held]}


@torch.no_grad()
def held_out_calibration_rows(head: Any, name: str, held: np.ndarray, x: np.ndarray, y: np.ndarray,
                              means: Mapping[str, np.ndarray], spread: np.ndarray,
                              known_low: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray | None]:
    """Output ``name``'s training rows ``held`` (positions, [m]: those its error model held out to stop on) as
    calibration rows: labels ``y[held]``, the out-of-bag mean ``means[name][held]`` as the prediction, the
    members' ``spread[held]`` as σ_raw and σ_err there (:meth:`~tlgnn.models.ensemble.EnsembleHead.error_stds`,
    with a chain's low task at its own out-of-bag mean); ``x`` [n, f] are the error inputs and ``means`` every
    regression output's out-of-bag mean [n]. Call it once every error model is fitted. With 10 validation
    crystals (N = 100) the recalibration scattered by fold (coverage 0.49–1.0); these rows were fitted by
    neither the error model nor the members whose mean they carry."""
    rows = torch.as_tensor(np.asarray(held, dtype=np.int64))
    pick = lambda a: torch.as_tensor(np.asarray(a))[rows]  # noqa: E731
    errors = head.error_stds(pick(x).double(), {k: pick(v).double() for k, v in means.items()},
                             {k: pick(v).bool() for k, v in (known_low or {}).items()})
    error = errors.get(name)
    return {"y": pick(y).double().numpy(), "mean": pick(means[name]).double().numpy(),
            "std_raw": pick(spread).double().numpy(), "std_error": None if error is None else error.double().numpy()}


def calibrate_task(head: Any, name: str, y: np.ndarray, mean: np.ndarray, std_raw: np.ndarray,
                   std_error: np.ndarray | None,
                   extra: Mapping[str, np.ndarray | None] | None = None) -> dict[str, float | None]:
    """Fit (``tlgnn.uncertainty.fit_calibration`` with the head's ``level`` and ``calibration`` method) and store
    output ``name``'s recalibration from validation labels ``y`` and the ensemble's ``mean``, raw spread and error
    model σ (all [n]), and the rows of ``extra`` (:func:`held_out_calibration_rows`) beside them: those set the
    scale, the floor and the conformal quantile, but whether the spread and the error model get a scale each is
    decided by the validation rows alone (their spread counts members that saw them); the constant-σ baseline stays
    the validation rows' own. Returns the stored values."""
    separate = None
    if extra is not None and len(extra["y"]):
        separate = informative_rows(y, mean) >= MIN_ROWS_PER_COMPONENT
        y_fit, mean_fit, raw_fit = (np.concatenate([a, extra[k]]) for a, k in
                                    ((y, "y"), (mean, "mean"), (std_raw, "std_raw")))
        error_fit = None if std_error is None or extra["std_error"] is None else \
            np.concatenate([std_error, extra["std_error"]])
    else:
        y_fit, mean_fit, raw_fit, error_fit = y, mean, std_raw, std_error
    calibration = fit_calibration(y_fit, mean_fit, raw_fit, level=head.spec["level"],
                                  method=head.spec["calibration"], error_std=error_fit, separate_components=separate)
    head.set_calibration(name, {**calibration.to_dict(), "constant_sigma": constant_sigma(y, mean)})
    return head.calibration_of(name)


def fit_error_models(module: Any, train_loader: Any, val_loader: Any) -> dict[str, dict[str, Any]]:
    """Fit each regression output's error model (:func:`fit_task_error_model`) on the out-of-bag |error| of the
    training rows, early-stopped on the validation rows' |error|. Returns the fit info per task; where it stopped
    on its own held-out rows (few validation labels), ``calibration_rows`` holds them
    (:func:`held_out_calibration_rows`)."""
    head = module.model.head
    tasks = [t.name for t in module.tasks]
    train, val = ensemble_arrays(module, train_loader, out_of_bag=True), ensemble_arrays(module, val_loader)
    info, labels = {}, {}
    for name in head.error_models:
        j = tasks.index(name)
        labels[name] = np.where(train["mask"][:, j], train["y"][:, j], np.nan)
        y_val = np.where(val["mask"][:, j], val["y"][:, j], np.nan)
        fitted = fit_task_error_model(head, name, train["x"], labels[name], train["mean"][name], val["x"], y_val,
                                      val["mean"][name])
        if fitted is not None:
            info[name] = fitted
    for name, fitted in info.items():  # once every error model is fitted: a chain's upper task reads its low one's
        if "held_out" in fitted:
            fitted["calibration_rows"] = held_out_calibration_rows(
                head, name, fitted["held_out"], train["x"], labels[name], train["mean"], train["spread"][name],
                train["known_low"])
    return info


def calibrate_module(module: Any, val_loader: Any, train_loader: Any = None,
                     log: Any = sys.stderr) -> dict[str, dict[str, float | None]]:
    """Fit and store the recalibration of every regression output of ensemble ``module`` on ``val_loader`` (the
    validation split), after its error models (``model.ensemble.error_model``) on ``train_loader`` (the
    training split). With fewer than :data:`~tlgnn.models.boosting.MIN_STOPPING_ROWS` validation labels the
    error model's held-out training rows calibrate too (:func:`held_out_calibration_rows`). Returns ``{task:
    {"scale", "floor", "quantile", "constant_sigma", "error_scale", "n", "n_held_out"}}``; a task without
    validation labels keeps the raw spread (scale 1, floor 0)."""
    head = module.model.head
    errors = fit_error_models(module, train_loader, val_loader) if head.error_models and train_loader is not None \
        else {}
    got = predict_batches(module, val_loader)
    tasks = list(module.tasks)
    fitted: dict[str, dict[str, float | None]] = {}
    for name in regression_outputs(module):
        rows, y = _labelled(got, tasks, name)
        if rows.sum() < 2:
            head.set_calibration(name, {})
            fitted[name] = {**head.calibration_of(name), "n": int(rows.sum())}
            continue
        error = got.uncertainty.get(f"{name}_std_error")
        extra = errors.get(name, {}).get("calibration_rows")
        values = calibrate_task(head, name, y, got.preds[name][rows], got.uncertainty[f"{name}_std_raw"][rows],
                                None if error is None else error[rows], extra)
        fitted[name] = {**values, "n": int(rows.sum()), "n_held_out": 0 if extra is None else len(extra["y"])}
    if log is not None and fitted:
        parts = [f"{name}: scale {v['scale']:.3g}, floor {v['floor']:.3g}"
                 + (f", error model {v['error_scale']:.3g}" if v["error_scale"] else "")
                 + (f", conformal q {v['quantile']:.3g}" if v["quantile"] else "")
                 + (f", with {v['n_held_out']} held-out training rows" if v.get("n_held_out") else "")
                 for name, v in fitted.items()]
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
    for name in regression_outputs(module):
        rows, y = _labelled(got, tasks, name)
        if not rows.any():
            continue
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
    for name in regression_outputs(module):
        rows, y = _labelled(got, tasks, name)
        if not rows.any():
            continue
        mean, std = got.preds[name][rows], got.uncertainty[f"{name}_std"][rows]
        plots[f"{name}/calibration"] = calibration_plot(y, mean, std, Path(out_dir) / f"calibration_{name}.png",
                                                        f"{name}: calibration (test)")
        plots[f"{name}/error_vs_std"] = error_vs_std_plot(y, mean, std, Path(out_dir) / f"error_std_{name}.png",
                                                          f"{name}: |error| vs std (test)")
    return plots


def merge_scores(scores: dict[str, dict[str, float]], extra: Mapping[str, Mapping[str, float]]) -> None:
    """Add ``extra[task]`` figures to ``scores[task]`` in place."""
    for name, figures in extra.items():
        scores.setdefault(name, {}).update(figures)


__all__ = [
    "ERROR_MODEL_STOPPING_SHARE", "MIN_ERROR_MODEL_ROWS", "calibrate_module", "calibrate_task", "ensemble_arrays",
    "fit_error_models", "fit_task_error_model", "held_out_calibration_rows", "merge_scores", "regression_outputs",
    "uncertainty_plots", "uncertainty_scores"
]
