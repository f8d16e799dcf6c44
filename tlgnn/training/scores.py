"""The one regression scorer of tlgnn: MAE, RMSE, R², maximum error of predictions against labels.

Used by the training metrics (:class:`tlgnn.training.metrics.TaskMetrics`), the benchmark cells
(:mod:`tlgnn.benchmark.runner`) and the scripts. It needs neither torch nor Lightning (the benchmark's forests
run without them); tensors are accepted and copied to the host.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _as_float64(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on an accelerator
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def regression_metrics(*, y_true: Any, y_pred: Any) -> dict[str, float]:
    """Scores of ``y_pred`` against ``y_true`` (keyword-only: R² is not symmetric).

    Both are arrays or tensors of ``n`` values (any shape, flattened), scored in float64 with scikit-learn.
    Returns ``mae``, ``rmse``, ``max_abs_error`` (units of the target), ``r2`` and ``n``. Undefined values are
    NaN: every metric without labels or with a non-finite prediction (callers that must refuse those check
    first), R² with fewer than two labels or constant labels. Raises ``ValueError`` when the sizes differ.
    """
    from sklearn.metrics import max_error, mean_absolute_error, mean_squared_error, r2_score

    true, pred = _as_float64(y_true), _as_float64(y_pred)
    if true.size != pred.size:
        raise ValueError(f"{pred.size} predictions do not match {true.size} labels")
    n = int(true.size)
    if n == 0 or not (np.isfinite(pred).all() and np.isfinite(true).all()):
        return {"mae": math.nan, "rmse": math.nan, "r2": math.nan, "max_abs_error": math.nan, "n": n}
    constant = n < 2 or bool((true == true[0]).all())
    return {
        "mae": float(mean_absolute_error(true, pred)),
        "rmse": float(np.sqrt(mean_squared_error(true, pred))),
        "r2": math.nan if constant else float(r2_score(true, pred)),
        "max_abs_error": float(max_error(true, pred)),
        "n": n,
    }


__all__ = ["regression_metrics"]
