"""Acquisition scores: which crystal to compute next, from a predicted mean and std (unit of the target, e.g. eV).

Higher score = compute first (:func:`rank` gives the order). With ``minimize`` the search looks for low values
(e.g. a small band gap) instead of high ones.
"""

from __future__ import annotations

import difflib

import numpy as np
from scipy import stats

ACQUISITIONS = ("mean", "ucb", "exceed", "std", "random")
DESCRIPTIONS = {
    "mean": "exploit: the predicted mean (its negative with minimize)",
    "ucb": "upper confidence bound mean + kappa*std (lower bound mean - kappa*std, negated, with minimize)",
    "exceed": "probability that y > threshold under N(mean, std^2) (y < threshold with minimize)",
    "std": "explore: the predicted std, largest first",
    "random": "uniform random scores (a baseline), seeded",
}


def _check_kind(kind: str) -> None:
    """ValueError naming an unknown ``kind`` with its closest known names."""
    if kind in ACQUISITIONS:
        return
    close = difflib.get_close_matches(str(kind), ACQUISITIONS, n=2)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown acquisition {kind!r}{hint} (choose from {', '.join(ACQUISITIONS)})")


def exceed_probability(mean: np.ndarray, std: np.ndarray, threshold: float, minimize: bool = False) -> np.ndarray:
    """P(y > threshold) = 1 − Φ((threshold − mean)/std) under y ~ N(mean, std²), or P(y < threshold) with
    ``minimize``. A zero std is a point mass: the probability is the step 1[mean > threshold] (1[mean < threshold])."""
    mean = np.asarray(mean, dtype=float)
    std = np.asarray(std, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (threshold - mean) / std
    smooth = stats.norm.cdf(z) if minimize else stats.norm.sf(z)
    step = (mean < threshold if minimize else mean > threshold).astype(float)
    return np.where(std == 0, np.where(np.isnan(mean), np.nan, step), smooth)


def acquisition_scores(
    mean: np.ndarray,
    std: np.ndarray,
    kind: str,
    *,
    kappa: float = 2.0,
    threshold: float | None = None,
    minimize: bool = False,
    seed: int = 0,
) -> np.ndarray:
    """Scores (higher = compute first) of kind ``mean``, ``ucb`` (mean + kappa·std; with ``minimize``
    −(mean − kappa·std)), ``exceed`` (:func:`exceed_probability`; needs ``threshold``), ``std`` or ``random``
    (uniform on [0, 1) from ``np.random.default_rng(seed)``). NaN in mean or std gives a NaN score
    (except for ``random``). ValueError for an unknown kind or ``exceed`` without a threshold.
    """
    _check_kind(kind)
    mean = np.asarray(mean, dtype=float).ravel()
    std = np.asarray(std, dtype=float).ravel()
    if mean.size != std.size:
        raise ValueError(f"mean has {mean.size} rows, std has {std.size}")
    if kind == "mean":
        return -mean if minimize else mean.copy()
    if kind == "ucb":
        return -(mean - kappa * std) if minimize else mean + kappa * std
    if kind == "exceed":
        if threshold is None:
            raise ValueError("acquisition 'exceed' needs a threshold")
        return exceed_probability(mean, std, float(threshold), minimize)
    if kind == "std":
        return std.copy()
    return np.random.default_rng(seed).random(mean.size)


def rank(scores: np.ndarray) -> np.ndarray:
    """Indices in descending score order; stable (equal scores keep their input order); NaN scores last."""
    scores = np.asarray(scores, dtype=float).ravel()
    missing = np.isnan(scores)
    return np.lexsort((np.where(missing, 0.0, -scores), missing))


__all__ = ["ACQUISITIONS", "DESCRIPTIONS", "acquisition_scores", "exceed_probability", "rank"]
