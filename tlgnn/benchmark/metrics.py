"""Scores of one cell on the scarce task: MAE/RMSE (regression, units of the target; the scorer is
:func:`tlgnn.training.scores.regression_metrics`), accuracy/F1/ROC-AUC, the correction error."""

from __future__ import annotations

import numpy as np

from tlgnn.training.scores import regression_metrics  # the one regression scorer, re-exported here


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """``accuracy``, ``f1`` (binary: of class index 1; else macro), ``roc_auc`` (binary, or one-vs-rest macro), ``n``.

    ``proba`` is [n, n_classes]; the predicted class is the arg-max. ROC-AUC is NaN when a class is absent.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    y_true = np.asarray(y_true).astype(np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != y_true.size:
        raise ValueError(f"probabilities {proba.shape} do not match {y_true.size} labels")
    n_classes = proba.shape[1]
    y_pred = proba.argmax(axis=1)
    binary = n_classes == 2
    f1 = f1_score(y_true, y_pred, average="binary" if binary else "macro", labels=None if binary else list(range(n_classes)))
    if np.unique(y_true).size < 2:
        auc = float("nan")
    elif binary:
        auc = roc_auc_score(y_true, proba[:, 1])
    else:
        auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=list(range(n_classes)))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "f1": float(f1),
        "roc_auc": float(auc),
        "n": int(y_true.size),
    }


def correction_metrics(y_true: np.ndarray, y_pred: np.ndarray, low_true: np.ndarray, low_pred: np.ndarray) -> dict[str, float]:
    """Error of the predicted correction ``high − low`` against the true one: ``correction_mae``/``_rmse``."""
    truth = np.asarray(y_true, dtype=np.float64) - np.asarray(low_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64) - np.asarray(low_pred, dtype=np.float64)
    ok = np.isfinite(truth) & np.isfinite(pred)
    if not ok.any():
        return {}
    error = pred[ok] - truth[ok]
    return {"correction_mae": float(np.abs(error).mean()), "correction_rmse": float(np.sqrt((error**2).mean()))}


def cell_uncertainty_metrics(y_true: np.ndarray, y_pred: np.ndarray, columns: dict[str, np.ndarray],
                             info: dict) -> dict[str, float]:
    """A regression cell's uncertainty figures (:func:`tlgnn.uncertainty.uncertainty_metrics`) from its columns
    ``y_std`` (calibrated, target unit), ``y_lower``/``y_upper`` (the interval at ``info["level"]``, default 0.9;
    Gaussian from ``y_std`` if absent), ``y_std_raw`` (uncalibrated: ``coverage_raw``) and ``member_<i>`` (an
    ensemble's members: ``mae_single``, their mean MAE); ``nll_constant`` with ``info["constant_sigma"]`` (the
    validation RMSE; NaN without it)."""
    from tlgnn.uncertainty import uncertainty_metrics

    level = float(info.get("level", 0.9))
    std = np.asarray(columns["y_std"], dtype=np.float64)
    figures = uncertainty_metrics(y_true, y_pred, std, columns.get("y_lower"), columns.get("y_upper"), level=level,
                                  constant_sigma=info.get("constant_sigma"))
    if "y_std_raw" in columns:
        figures["coverage_raw"] = uncertainty_metrics(y_true, y_pred, columns["y_std_raw"], level=level)["coverage"]
    members = [np.asarray(v, dtype=np.float64) for k, v in columns.items() if k.startswith("member_")]
    if members:
        figures["mae_single"] = float(np.mean([np.abs(m - y_true).mean() for m in members]))
    return {k: v for k, v in figures.items() if k not in ("n", "level") and np.isfinite(v)}  # NaN: not defined


__all__ = ["cell_uncertainty_metrics", "classification_metrics", "correction_metrics", "regression_metrics"]
