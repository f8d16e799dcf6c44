"""Gradient-boosted trees fitted with LightGBM: the options of the tree head and one fitting call.

LightGBM is imported only when fitting; the fitted trees leave here as a ``dump_model()`` dict, which
:mod:`tlgnn.models.trees` turns into tensors (so predicting never needs LightGBM).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

OBJECTIVES = ("regression", "l1", "huber")
#: Labelled validation rows below which a booster may early-stop on a held-out share of its own training rows
#: instead (:func:`held_out_stopping`): a handful of crystals cannot say when to stop.
MIN_STOPPING_ROWS = 100
#: LightGBM's own limit on leaves per tree.
MAX_LEAVES = 131072


@dataclass(frozen=True)
class BoosterOptions:
    """LightGBM settings (names follow its scikit-learn wrapper).

    Attributes:
        n_estimators: boosting rounds at most (early stopping may keep fewer trees).
        learning_rate: shrinkage per tree.
        num_leaves: leaves per tree at most (2 .. 131072); bounds a tree's depth at ``num_leaves - 1``.
        max_depth: depth limit per tree (-1: none besides ``num_leaves``).
        min_child_samples: training rows per leaf at least.
        subsample: fraction of rows drawn for each bagging round (0 < f <= 1; 1 = no bagging).
        subsample_freq: bag every k rounds (0: never).
        colsample: fraction of features tried per tree (0 < f <= 1).
        reg_lambda: L2 penalty on leaf values (>= 0).
        early_stopping_rounds: stop when the validation MAE has not improved for this many rounds and keep the
            best round's trees (0: off; also off when there are no validation rows, so all rounds are kept).
        objective: "regression" (squared error), "l1" (absolute error) or "huber".
        seed: seed of LightGBM's bagging and feature sampling (runs are deterministic for a given seed).
        n_jobs: LightGBM threads (0: LightGBM's own default, OpenMP's thread count, usually every core).
    """

    n_estimators: int = 2000
    learning_rate: float = 0.03
    num_leaves: int = 31
    max_depth: int = -1
    min_child_samples: int = 20
    subsample: float = 0.8
    subsample_freq: int = 1
    colsample: float = 0.5
    reg_lambda: float = 1.0
    early_stopping_rounds: int = 100
    objective: str = "regression"
    seed: int = 0
    n_jobs: int = 0

    def __post_init__(self) -> None:
        _integer("n_estimators", self.n_estimators, 1)
        _integer("num_leaves", self.num_leaves, 2, MAX_LEAVES)
        _integer("max_depth", self.max_depth, -1)
        if self.max_depth == 0:
            raise ValueError("tree head option max_depth must be -1 (no limit) or >= 1, got 0")
        _integer("min_child_samples", self.min_child_samples, 1)
        _integer("subsample_freq", self.subsample_freq, 0)
        _integer("early_stopping_rounds", self.early_stopping_rounds, 0)
        _integer("seed", self.seed, 0)
        _integer("n_jobs", self.n_jobs, 0)
        _number("learning_rate", self.learning_rate, low=0.0, low_open=True)
        _number("subsample", self.subsample, low=0.0, low_open=True, high=1.0)
        _number("colsample", self.colsample, low=0.0, low_open=True, high=1.0)
        _number("reg_lambda", self.reg_lambda, low=0.0)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"tree head option objective must be one of {OBJECTIVES}, got {self.objective!r}")

    def params(self, binary: bool = False) -> dict[str, Any]:
        """LightGBM ``train`` parameters (validation metric: MAE; ``binary``: the logistic objective on 0/1 labels,
        log-loss, whatever ``objective`` says)."""
        return {
            "objective": "binary" if binary else self.objective, "metric": "binary_logloss" if binary else "l1",
            "learning_rate": float(self.learning_rate),
            "num_leaves": self.num_leaves, "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_child_samples, "bagging_fraction": float(self.subsample),
            "bagging_freq": self.subsample_freq if self.subsample < 1.0 else 0,
            "feature_fraction": float(self.colsample), "lambda_l2": float(self.reg_lambda), "seed": self.seed,
            "num_threads": self.n_jobs, "deterministic": True, "force_col_wise": True, "verbosity": -1,
        }

    def as_dict(self) -> dict[str, Any]:
        """The options by name."""
        return asdict(self)


def _integer(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"tree head option {name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        limit = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"tree head option {name} must be {limit}, got {value}")


def _number(name: str, value: Any, low: float, low_open: bool = False, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ValueError(f"tree head option {name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or (high is not None and value > high):
        upper = f"{high}]" if high is not None else "inf)"
        span = f"{'(' if low_open else '['}{low}, {upper}"
        raise ValueError(f"tree head option {name} must be in {span}, got {value}")


def held_out_rows(n: int, share: float, seed: int) -> np.ndarray:
    """Which of ``n`` rows [n] bool are held out to early-stop on: a fixed ``share`` (at least one row) drawn by
    ``seed`` (the same rows in every process)."""
    return np.random.default_rng(seed).permutation(n) < max(1, int(n * share))


def held_out_stopping(x: np.ndarray, y: np.ndarray, share: float, seed: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_fit, y_fit, x_stop, y_stop)``: rows ``x`` [n, f] / ``y`` [n] split into the :func:`held_out_rows` to
    early-stop on and the rest to fit. Used where the validation split has fewer than :data:`MIN_STOPPING_ROWS`
    labels."""
    held = held_out_rows(len(y), share, seed)
    return x[~held], y[~held], x[held], y[held]


def fit_booster(x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None,
                options: BoosterOptions, what: str, binary: bool = False) -> tuple[Any, dict[str, Any]]:
    """Fit one LightGBM regressor on ``x`` [n, f] / ``y`` [n] with early stopping on ``(x_val, y_val)``; with
    ``binary``, a classifier of 0/1 labels whose trees sum to the logit of class 1 (early stopping on log-loss).

    Returns ``(booster, info)``: the ``lightgbm.Booster`` and ``best_iteration`` (the rounds to keep:
    ``booster.dump_model(num_iteration=best_iteration)``), ``n_train``, ``n_val``, ``seconds``. ``what`` names
    the model in errors ("task 'gap_hse'").
    """
    import lightgbm as lgb

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"{what}: features {x.shape} and labels {y.shape} do not match")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: no training rows with a label")
    if not np.isfinite(y).all():
        raise ValueError(f"{what}: labels contain NaN/inf; pass only labelled rows")
    start = time.perf_counter()
    train = lgb.Dataset(x, y, free_raw_data=True)
    n_val = 0 if x_val is None else int(np.asarray(x_val).shape[0])
    callbacks, valid = [], []
    if n_val and options.early_stopping_rounds:
        valid = [lgb.Dataset(np.asarray(x_val, dtype=np.float64), np.asarray(y_val, dtype=np.float64),
                             reference=train)]
        callbacks = [lgb.early_stopping(options.early_stopping_rounds, first_metric_only=True, verbose=False)]
    booster = lgb.train(options.params(binary), train, num_boost_round=options.n_estimators, valid_sets=valid,
                        valid_names=["val"][: len(valid)], callbacks=callbacks)
    best = int(booster.best_iteration) if valid and booster.best_iteration > 0 else booster.current_iteration()
    info = {"best_iteration": best, "n_train": int(x.shape[0]), "n_val": n_val,
            "seconds": round(time.perf_counter() - start, 3)}
    return booster, info
