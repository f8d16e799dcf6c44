"""Random-forest baselines on composition features (scikit-learn), the model class of Hutchinson et al. 2017.

- single task: a forest fitted on the scarce (high-fidelity / experimental) labels only;
- difference: a forest fitted on ``Δ = high − low`` over rows where both are known; at prediction time
  ``high = low + Δ(x)`` with ``low`` either known (regime "low fidelity known") or itself predicted by a second
  forest trained on every available low-fidelity label (regime "structure only").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlgnn.utils.config import ConfigError


@dataclass
class ForestConfig:
    """Random-forest hyper-parameters (scikit-learn names).

    Attributes:
        n_estimators: number of trees.
        max_features: fraction of features tried per split (0 < f ≤ 1), or ``"sqrt"``.
        min_samples_leaf: minimum rows in a leaf.
        n_jobs: parallel jobs for fit/predict (-1 = all cores).
    """

    n_estimators: int = 300
    max_features: float | str = 0.33
    min_samples_leaf: int = 1
    n_jobs: int = -1

    def validate(self) -> None:
        if self.n_estimators < 1:
            raise ConfigError("n_estimators", f"must be >= 1, got {self.n_estimators}")
        if isinstance(self.max_features, str):
            if self.max_features not in ("sqrt", "log2"):
                raise ConfigError("max_features", f"must be a fraction in (0, 1] or 'sqrt'/'log2', got {self.max_features!r}")
        elif not 0.0 < self.max_features <= 1.0:
            raise ConfigError("max_features", f"must be in (0, 1], got {self.max_features}")
        if self.min_samples_leaf < 1:
            raise ConfigError("min_samples_leaf", f"must be >= 1, got {self.min_samples_leaf}")

    def kwargs(self, seed: int) -> dict:
        return {
            "n_estimators": self.n_estimators,
            "max_features": self.max_features,
            "min_samples_leaf": self.min_samples_leaf,
            "n_jobs": self.n_jobs,
            "random_state": seed,
        }


def _check_xy(X: np.ndarray, y: np.ndarray, what: str) -> None:
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: features {X.shape} and labels {y.shape} do not match")
    if X.shape[0] == 0:
        raise ValueError(f"{what}: no training rows")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{what}: labels contain NaN/inf; pass only labelled rows")


def fit_regressor(X: np.ndarray, y: np.ndarray, config: ForestConfig | None = None, seed: int = 0):
    """A fitted ``RandomForestRegressor`` on features ``X`` [n, F] and labels ``y`` [n]."""
    from sklearn.ensemble import RandomForestRegressor

    y = np.asarray(y, dtype=np.float64)
    _check_xy(X, y, "fit_regressor")
    model = RandomForestRegressor(**(config or ForestConfig()).kwargs(seed))
    return model.fit(X, y)


def fit_classifier(X: np.ndarray, y: np.ndarray, config: ForestConfig | None = None, seed: int = 0):
    """A fitted ``RandomForestClassifier`` on features ``X`` [n, F] and integer class labels ``y`` [n]."""
    from sklearn.ensemble import RandomForestClassifier

    y = np.asarray(y)
    _check_xy(X, y.astype(np.float64), "fit_classifier")
    model = RandomForestClassifier(**(config or ForestConfig()).kwargs(seed))
    return model.fit(X, y.astype(np.int64))


def predict_proba_full(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities [n, n_classes] even when some classes were absent from the training labels."""
    proba = model.predict_proba(X)
    full = np.zeros((X.shape[0], n_classes))
    full[:, model.classes_.astype(np.int64)] = proba
    return full


def tree_spread(model, X: np.ndarray) -> np.ndarray:
    """The per-tree spread of a fitted forest regressor at ``X`` [n, F]: the std over its trees' predictions
    (units of the labels; the uncertainty the random-forest transfer models of Hutchinson et al. report)."""
    return np.stack([tree.predict(X) for tree in model.estimators_]).std(axis=0)


class DifferenceForest:
    """``high = low + Δ(x)`` with a forest fitted on the difference ``high − low`` (units of the labels)."""

    def __init__(self, config: ForestConfig | None = None, seed: int = 0):
        self.config = config or ForestConfig()
        self.seed = seed
        self.model = None

    def fit(self, X: np.ndarray, high: np.ndarray, low: np.ndarray) -> "DifferenceForest":
        """Fit Δ on rows where both ``high`` and ``low`` are known (rows with a missing one are skipped)."""
        high = np.asarray(high, dtype=np.float64)
        low = np.asarray(low, dtype=np.float64)
        both = np.isfinite(high) & np.isfinite(low)
        if not both.any():
            raise ValueError("DifferenceForest.fit: no row has both a high and a low label")
        self.model = fit_regressor(X[both], high[both] - low[both], self.config, self.seed)
        return self

    def predict_delta(self, X: np.ndarray) -> np.ndarray:
        """The predicted correction ``Δ = high − low`` [n]."""
        if self.model is None:
            raise RuntimeError("DifferenceForest: call fit() first")
        return self.model.predict(X)

    def predict(self, X: np.ndarray, low: np.ndarray) -> np.ndarray:
        """``low + Δ(x)`` for known or separately predicted ``low`` [n]."""
        low = np.asarray(low, dtype=np.float64)
        if not np.all(np.isfinite(low)):
            raise ValueError("DifferenceForest.predict: low labels contain NaN; predict them first")
        return low + self.predict_delta(X)


__all__ = ["DifferenceForest", "ForestConfig", "fit_classifier", "fit_regressor", "predict_proba_full", "tree_spread"]
