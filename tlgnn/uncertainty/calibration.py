"""Recalibration of predicted standard deviations, fitted on a validation split and applied to new predictions.

A raw std σ (e.g. an ensemble's spread, in the unit of y) is recalibrated as

    σ_cal = √((s·σ)² + f²)

with the scale s and the floor f (unit of y) of maximum Gaussian likelihood on validation
(:func:`fit_scale_and_floor`; the floor keeps a prediction where every member agrees, σ = 0, from claiming
certainty). Intervals are then either

- *scale*: the central Gaussian interval mean ± z·σ_cal, z = Φ⁻¹((1 + level)/2);
- *conformal*: mean ± q·σ_cal with q the split-conformal quantile of the normalised validation residuals
  |y − mean| / σ_cal (:func:`fit_conformal_quantile`), which covers a fraction ≥ level of new rows from the same
  distribution whatever the shape of the errors.

Rows where y, mean or std is NaN are ignored by every fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

import numpy as np
from scipy import stats

from tlgnn.uncertainty.metrics import finite_rows

METHODS = ("scale", "conformal", "none")
#: The least floor of a fitted std, as a share of the validation errors' RMSE: without it one crystal whose spread
#: and error-model σ both reach 0 makes the likelihood unbounded (seen once in 80 benchmark cells).
MIN_FLOOR_SHARE = 0.01
#: Validation rows (with a non-zero error) below which the std components get one common scale and no floor.
MIN_ROWS_PER_COMPONENT = 50


def _residual_rows(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|y − mean|, std) over the rows with no NaN and std > 0 (ValueError on unequal lengths)."""
    y, mean, std = finite_rows(y, mean, std)
    keep = std > 0
    return np.abs(y[keep] - mean[keep]), std[keep]


def informative_rows(y: np.ndarray, mean: np.ndarray) -> int:
    """How many rows have a label and a non-zero error (NaN rows and exact hits carry nothing on a scale): the
    count that decides how much :func:`fit_calibration` fits."""
    y, mean = np.asarray(y, dtype=float), np.asarray(mean, dtype=float)
    return int(np.sum(np.isfinite(y) & (np.abs(y - mean) > 0)))


def fit_std_scale(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """The factor s maximising the likelihood of y under N(mean, (s·std)²): s = √(mean(((y − mean)/std)²)).

    Dimensionless; over the rows with std > 0 (and no NaN); 1.0 when there is none. s > 1 means the raw std was
    overconfident.
    """
    error, std = _residual_rows(y, mean, std)
    if not error.size:
        return 1.0
    return float(np.sqrt(np.mean((error / std) ** 2)))


def _nll(error: np.ndarray, stds: list[np.ndarray], log_coefs: np.ndarray) -> float:
    """Mean Gaussian NLL of ``error`` under the variance Σ_j (c_j σ_j)² + f², ``log_coefs`` = log(c..., f)."""
    coefs = np.exp(log_coefs)
    var = coefs[-1] ** 2 + sum((c * sd) ** 2 for c, sd in zip(coefs[:-1], stds))
    return float(np.mean(0.5 * np.log(2.0 * np.pi * var) + error ** 2 / (2.0 * var)))


def fit_variance(y: np.ndarray, mean: np.ndarray, stds: list[np.ndarray],
                 floor: bool = True) -> tuple[list[float], float]:
    """``([c_1, ...], f)`` maximising the likelihood of y under N(mean, Σ_j (c_j σ_j)² + f²) on the rows without
    NaN and with a non-zero error (a σ_j may be 0 there): one dimensionless scale per std component (e.g. an
    ensemble's spread and an error model's σ) and a floor f in the unit of y, at least :data:`MIN_FLOOR_SHARE` of
    the errors' RMSE (``floor=False``: exactly that least floor, unless every component is 0 on some row).
    ``([1, ...], 0)`` with fewer than 2 rows."""
    from scipy.optimize import minimize

    y, mean, *stds = finite_rows(y, mean, *stds)
    # exact hits (a band gap of a metal predicted exactly 0 by every member) carry no information on the scale and
    # would reward a variance of 0 without bound: they are left out of the fit
    keep = np.abs(y - mean) > 0
    error, stds = np.abs(y[keep] - mean[keep]), [sd[keep] for sd in stds]
    if error.size < 2:
        return [1.0] * len(stds), 0.0
    rmse = float(np.sqrt(np.mean(error ** 2))) or 1e-6
    start = [math.log(max(fit_std_scale(error, np.zeros_like(error), sd), 1e-3)) - math.log(len(stds))
             if (sd > 0).any() else math.log(1e-3) for sd in stds]
    least = MIN_FLOOR_SHARE * rmse  # no prediction claims to be surer than this (an error model's σ can reach 0)
    if not floor and (sum(sd ** 2 for sd in stds) > 0).all():
        found = minimize(lambda p: _nll(error, stds, np.append(p, math.log(least))), np.array(start),
                         method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 4000})
        return [float(c) for c in np.exp(found.x)], least
    start = np.array(start + [math.log(0.1 * rmse)])
    found = minimize(lambda p: _nll(error, stds, np.append(p[:-1], max(p[-1], math.log(least)))), start,
                     method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 4000})
    best = found.x if found.fun <= _nll(error, stds, start) else start
    coefs = np.exp(best)
    return [float(c) for c in coefs[:-1]], max(float(coefs[-1]), least)


def fit_scale_and_floor(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[float, float]:
    """``(s, f)`` maximising the likelihood of y under N(mean, (s·std)² + f²) (:func:`fit_variance` with one
    component): s dimensionless, f in the unit of y; ``(1.0, 0.0)`` with fewer than 2 rows."""
    scales, floor = fit_variance(y, mean, [std])
    return scales[0], floor


def fit_conformal_quantile(y: np.ndarray, mean: np.ndarray, std: np.ndarray, level: float = 0.9) -> float:
    """Split-conformal quantile q of the normalised residuals rᵢ = |yᵢ − meanᵢ| / stdᵢ (rows with std > 0).

    q is the k-th smallest r (1-based) with k = ⌈(n + 1)·level⌉, and +inf when k > n. The interval mean ± q·std
    then covers a new exchangeable row with probability ≥ level (Lei et al. 2018, J. Am. Stat. Assoc. 113, 1094;
    Angelopoulos & Bates 2021, arXiv:2107.07511). Dimensionless; ``level`` in (0, 1) else ValueError.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    error, std = _residual_rows(y, mean, std)
    r = np.sort(error / std)
    k = math.ceil((r.size + 1) * level - 1e-9)  # the tolerance keeps e.g. 10 * 0.9 at 9, not 10
    return math.inf if k > r.size else float(r[k - 1])


def constant_sigma(y: np.ndarray, mean: np.ndarray) -> float:
    """RMSE of the residuals, √(mean((y − mean)²)), in the unit of y: the σ of the constant-uncertainty baseline
    fitted on validation. Rows with a NaN are ignored; NaN when none is left."""
    y, mean = finite_rows(y, mean)
    return float(np.sqrt(np.mean((y - mean) ** 2))) if y.size else math.nan


@dataclass(frozen=True)
class Calibration:
    """A fitted recalibration: ``scale`` and ``floor`` give σ_cal = √((scale·raw_std)² + floor²); ``quantile``
    (conformal q, or None) sets the interval mean ± q·σ_cal; ``level`` is the nominal coverage;
    ``constant_sigma`` the baseline σ (unit of y)."""

    scale: float = 1.0
    quantile: float | None = None
    level: float = 0.9
    constant_sigma: float | None = None
    floor: float = 0.0
    error_scale: float = 0.0

    def std(self, raw_std: np.ndarray, error_std: np.ndarray | None = None) -> np.ndarray:
        """The recalibrated std √((scale·raw_std)² + (error_scale·error_std)² + floor²) (unit of y)."""
        var = (self.scale * np.asarray(raw_std, dtype=float)) ** 2 + self.floor ** 2
        if error_std is not None:
            var = var + (self.error_scale * np.asarray(error_std, dtype=float)) ** 2
        return np.sqrt(var)

    def interval(self, mean: np.ndarray, raw_std: np.ndarray,
                 error_std: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) at ``level``: mean ∓ q·σ_cal when conformal (±inf when q is inf), else the central
        Gaussian interval mean ∓ z·σ_cal with z = Φ⁻¹((1 + level)/2)."""
        mean = np.asarray(mean, dtype=float)
        std = self.std(raw_std, error_std)
        if self.quantile is None:
            half = stats.norm.ppf((1.0 + self.level) / 2.0) * std
        elif math.isinf(self.quantile):
            half = np.where(np.isnan(std), math.nan, math.inf)
        else:
            half = self.quantile * std
        return mean - half, mean + half

    def to_dict(self) -> dict[str, float | None]:
        """Plain floats (or None), e.g. for a JSON file; an infinite quantile stays ``inf``."""
        return {key: None if value is None else float(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """The inverse of :meth:`to_dict` (missing keys take their defaults; unknown keys raise ValueError)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown Calibration keys {unknown}; expected some of {sorted(names)}")
        return cls(**{key: None if value is None else float(value) for key, value in data.items()})


def fit_calibration(
    y: np.ndarray, mean: np.ndarray, std: np.ndarray, level: float = 0.9, method: str = "scale",
    error_std: np.ndarray | None = None, separate_components: bool | None = None,
) -> Calibration:
    """Fit a :class:`Calibration` on validation arrays with ``method``:

    - ``"scale"``: scale, floor (and with ``error_std``, a second std component such as an error model's σ, its
      error_scale) = :func:`fit_variance`, quantile None (Gaussian intervals); with fewer than
      :data:`MIN_ROWS_PER_COMPONENT` rows the components share one scale and the floor is 0 (unless some row's
      std is 0: a floor is then fitted too);
    - ``"conformal"``: the same, and the quantile :func:`fit_conformal_quantile` at ``level`` of the residuals
      normalised by σ_cal (intervals mean ± q·σ_cal);
    - ``"none"``: scale 1, floor 0, quantile None (error_scale 1 with ``error_std``).

    ``constant_sigma`` (:func:`constant_sigma`) is fitted in every case. ``separate_components`` overrides the
    row count's choice between one scale per component (True) and one common scale (False): rows whose std
    components are not distributed as a new row's (an ensemble's out-of-bag rows: members that saw them agree more)
    may set the scale but should not weigh the components. The floor follows the row count alone; a common scale
    and a floor keep the order of the summed std (Spearman with the errors unchanged).
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    sigma = constant_sigma(y, mean)
    if method == "none":
        return Calibration(level=float(level), constant_sigma=sigma, error_scale=0.0 if error_std is None else 1.0)
    n_fit = informative_rows(y, mean)
    if separate_components is None:
        separate_components = n_fit >= MIN_ROWS_PER_COMPONENT
    if not separate_components:
        # one scale for the components' sum; with few rows no floor either, unless it is needed
        combined = std if error_std is None else np.hypot(std, error_std)
        scales, floor = fit_variance(y, mean, [combined], floor=n_fit >= MIN_ROWS_PER_COMPONENT)
        scales = [scales[0], scales[0]]
    else:
        scales, floor = fit_variance(y, mean, [std] if error_std is None else [std, error_std])
    fitted = Calibration(scale=scales[0], floor=floor, level=float(level), constant_sigma=sigma,
                         error_scale=scales[1] if error_std is not None else 0.0)
    if method == "conformal":
        quantile = fit_conformal_quantile(y, mean, fitted.std(std, error_std), level)
        fitted = replace(fitted, quantile=quantile)
    return fitted


__all__ = [
    "METHODS",
    "MIN_FLOOR_SHARE",
    "Calibration",
    "constant_sigma",
    "fit_calibration",
    "fit_conformal_quantile",
    "fit_scale_and_floor",
    "fit_std_scale",
    "fit_variance",
    "informative_rows",
]
