"""Scores of predictive uncertainty for a regression task: interval coverage, calibration, ranking, likelihood.

Every function takes 1-D float arrays in the task's physical unit (e.g. eV): ``y`` the true values, ``mean`` the
predictions and ``std`` the predicted standard deviations. Rows where ``y``, ``mean`` or ``std`` is NaN are
ignored (a model may give no uncertainty for some structures); a score with no rows left is NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

DEFAULT_LEVELS = np.linspace(0.01, 0.99, 99)
MIN_STD = 1e-6


def finite_rows(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays as 1-D floats, restricted to the rows where none of them is NaN (ValueError on unequal lengths)."""
    arrays = tuple(np.asarray(a, dtype=float).ravel() for a in arrays)
    if len({a.size for a in arrays}) > 1:
        raise ValueError(f"arrays of unequal lengths: {[a.size for a in arrays]}")
    keep = ~np.any([np.isnan(a) for a in arrays], axis=0)
    return tuple(a[keep] for a in arrays)


def normal_quantile(level: float) -> float:
    """z such that [-z, z] holds a fraction ``level`` of a standard normal: z = Φ⁻¹((1 + level) / 2).

    ``level`` must lie in (0, 1) (ValueError otherwise); e.g. level 0.9 gives z ≈ 1.645.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    return float(stats.norm.ppf((1.0 + level) / 2.0))


def gaussian_interval(mean: np.ndarray, std: np.ndarray, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Central interval of N(mean, std²) holding a fraction ``level``: mean ∓ z·std, z = :func:`normal_quantile`.

    Same unit as ``mean``; NaN rows stay NaN (nothing is dropped here).
    """
    z = normal_quantile(level)
    mean = np.asarray(mean, dtype=float)
    std = np.asarray(std, dtype=float)
    return mean - z * std, mean + z * std


def interval_coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of rows with lower ≤ y ≤ upper, ignoring rows where y, lower or upper is NaN (NaN when none)."""
    y, lower, upper = finite_rows(y, lower, upper)
    if not y.size:
        return math.nan
    return float(np.mean((lower <= y) & (y <= upper)))


def calibration_curve(
    y: np.ndarray, mean: np.ndarray, std: np.ndarray, levels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(levels p, observed fraction of y inside the central Gaussian interval at each p).

    Default levels: the 99 values 0.01, 0.02, ..., 0.99. A calibrated model has observed ≈ p. Rows with a NaN in
    y, mean or std are ignored; observed is all NaN when no row is left.
    """
    p = DEFAULT_LEVELS.copy() if levels is None else np.asarray(levels, dtype=float).ravel()
    y, mean, std = finite_rows(y, mean, std)
    if not y.size:
        return p, np.full(p.shape, math.nan)
    z = np.array([normal_quantile(float(level)) for level in p])
    inside = np.abs(y - mean)[None, :] <= z[:, None] * std[None, :]
    return p, inside.mean(axis=1)


def miscalibration_area(y: np.ndarray, mean: np.ndarray, std: np.ndarray, levels: np.ndarray | None = None) -> float:
    """Area between the calibration curve and the diagonal: mean over the level grid of |observed(p) − p|.

    With the default uniform grid on (0, 1) this approximates ∫₀¹ |observed(p) − p| dp, the miscalibration area of
    Tran et al. 2020 (Mach. Learn.: Sci. Technol. 1, 025006) as computed by the Uncertainty Toolbox (Chung et al.
    2021, arXiv:2109.10254). 0 is perfect; 0.5 is the worst possible. Rows with a NaN in y, mean or std are
    ignored; NaN when none is left.
    """
    p, observed = calibration_curve(y, mean, std, levels)
    if not p.size or np.isnan(observed).all():
        return math.nan
    return float(np.mean(np.abs(observed - p)))


def error_std_spearman(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """Spearman rank correlation between the absolute error |y − mean| and std (does a larger std flag a larger
    error?). NaN with fewer than 3 rows or a constant std (or constant error); NaN rows are ignored."""
    y, mean, std = finite_rows(y, mean, std)
    error = np.abs(y - mean)
    if y.size < 3 or np.ptp(std) == 0 or np.ptp(error) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(error, std)[0]
    return float(rho)


def gaussian_nll(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """Mean Gaussian negative log-likelihood per structure, in nats:
    mean of ½·log(2π s²) + (y − mean)² / (2 s²), with s = max(std, 1e-6) in the unit of y.

    Lower is better; it depends on the unit of y (a shift of log(unit ratio)). NaN rows are ignored; NaN when none
    is left.
    """
    y, mean, std = finite_rows(y, mean, std)
    if not y.size:
        return math.nan
    s2 = np.maximum(std, MIN_STD) ** 2
    return float(np.mean(0.5 * np.log(2.0 * math.pi * s2) + (y - mean) ** 2 / (2.0 * s2)))


def _interval_rows(
    y: np.ndarray, mean: np.ndarray, std: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, lower, upper) over the rows where y, mean and std are not NaN; Gaussian bounds when none are given."""
    if (lower is None) != (upper is None):
        raise ValueError("give both lower and upper, or neither")
    y, mean, std = (np.asarray(a, dtype=float).ravel() for a in (y, mean, std))
    if lower is None:
        lower, upper = gaussian_interval(mean, std, level)
    lower, upper = np.asarray(lower, dtype=float).ravel(), np.asarray(upper, dtype=float).ravel()
    if not lower.size == upper.size == y.size:
        raise ValueError(f"lower/upper have {lower.size}/{upper.size} rows, y has {y.size}")
    keep = ~(np.isnan(y) | np.isnan(mean) | np.isnan(std))
    return y[keep], lower[keep], upper[keep]


def _mean_width(lower: np.ndarray, upper: np.ndarray) -> float:
    """Mean of upper − lower over the rows where neither is NaN (NaN when none; +inf for an unbounded interval)."""
    lower, upper = finite_rows(lower, upper)
    return float(np.mean(upper - lower)) if lower.size else math.nan


def uncertainty_metrics(
    y: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    level: float = 0.9,
    constant_sigma: float | None = None,
) -> dict[str, float]:
    """All the scores of this module as plain floats (NaN where undefined), over the rows where y, mean and std
    are not NaN:

    - ``coverage``: fraction of y inside [lower, upper] if given, else inside the Gaussian interval at ``level``;
    - ``level``: the nominal level of that interval; ``interval_width``: mean upper − lower (unit of y);
    - ``miscalibration_area``, ``spearman`` (:func:`error_std_spearman`), ``nll`` (:func:`gaussian_nll`, nats);
    - ``nll_constant``: the NLL with std = ``constant_sigma`` everywhere (a baseline; NaN when it is None);
    - ``mean_std``: the mean predicted std (unit of y); ``n``: the number of rows used.
    """
    normal_quantile(level)
    y_in, lower, upper = _interval_rows(y, mean, std, lower, upper, level)
    y, mean, std = finite_rows(y, mean, std)
    constant = math.nan
    if constant_sigma is not None:
        constant = gaussian_nll(y, mean, np.full(y.shape, float(constant_sigma)))
    return {
        "coverage": interval_coverage(y_in, lower, upper),
        "level": float(level),
        "interval_width": _mean_width(lower, upper),
        "miscalibration_area": miscalibration_area(y, mean, std),
        "spearman": error_std_spearman(y, mean, std),
        "nll": gaussian_nll(y, mean, std),
        "nll_constant": constant,
        "mean_std": float(np.mean(std)) if y.size else math.nan,
        "n": float(y.size),
    }


__all__ = [
    "calibration_curve",
    "error_std_spearman",
    "gaussian_interval",
    "gaussian_nll",
    "interval_coverage",
    "miscalibration_area",
    "normal_quantile",
    "uncertainty_metrics",
]
