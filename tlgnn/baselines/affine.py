"""The no-learning baseline of the "low fidelity known" regime: an affine map of the known low-fidelity label.

Regression: ``high ≈ a · low + b`` fitted by ordinary least squares on the training rows (units follow the
labels, e.g. eV). Classification: a logistic regression on the single feature ``low`` (an affine map to the
logit), e.g. metal / non-metal from the PBE gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _as_1d(name: str, values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: {int((~np.isfinite(array)).sum())} non-finite values (NaN/inf); drop them first")
    return array


@dataclass(frozen=True)
class AffineMap:
    """``high = slope · low + intercept`` (same units as the labels)."""

    slope: float
    intercept: float

    @classmethod
    def fit(cls, low, high) -> "AffineMap":
        """Least-squares fit on paired labels (1-D arrays of equal length, at least 2 distinct ``low``)."""
        x, y = _as_1d("low", low), _as_1d("high", high)
        if x.shape != y.shape:
            raise ValueError(f"low and high differ in length: {x.size} vs {y.size}")
        if x.size < 2 or np.ptp(x) == 0:
            raise ValueError(f"an affine fit needs at least 2 distinct low values, got {np.unique(x).size}")
        design = np.column_stack([x, np.ones_like(x)])
        (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
        return cls(float(slope), float(intercept))

    def predict(self, low) -> np.ndarray:
        """The mapped values for ``low`` (1-D array)."""
        return self.slope * _as_1d("low", low) + self.intercept


class AffineLogit:
    """Binary or multi-class classifier on the single feature ``low`` (logistic regression, affine logit)."""

    def __init__(self, seed: int = 0):
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=1e4, max_iter=1000, random_state=seed)

    def fit(self, low, labels) -> "AffineLogit":
        """Fit on the known low labels and integer class labels."""
        x = _as_1d("low", low).reshape(-1, 1)
        y = np.asarray(labels).reshape(-1)
        if np.unique(y).size < 2:
            raise ValueError("AffineLogit needs at least two classes among the training labels")
        self.model.fit(x, y)
        return self

    @property
    def classes_(self) -> np.ndarray:
        return self.model.classes_

    def predict_proba(self, low) -> np.ndarray:
        """Class probabilities [n, n_classes] in the order of :attr:`classes_`."""
        return self.model.predict_proba(_as_1d("low", low).reshape(-1, 1))


__all__ = ["AffineLogit", "AffineMap"]
