"""Benchmark adapters for the classical baselines (kinds ``rf_single``, ``rf_difference``, ``affine``).

Features are the composition descriptors of :mod:`tlgnn.baselines.composition` (the "structure only" view of a
composition model); in the ``low_fidelity_known`` regime ``rf_single`` also gets the known low-fidelity label as
one more feature. Forest options (``n_estimators``, ``max_features``, ``min_samples_leaf``, ``n_jobs``) come from
``model.options``; ``options.low_forest`` overrides them for the low-fidelity forest of the structure-only regime.
"""

from __future__ import annotations

import json

import numpy as np

from tlgnn.baselines.affine import AffineLogit, AffineMap
from tlgnn.baselines.composition import featurize
from tlgnn.baselines.forest import (DifferenceForest, ForestConfig, fit_classifier, fit_regressor, predict_proba_full,
                                   tree_spread)
from tlgnn.benchmark.models import CellInput, CellOutput
from tlgnn.utils.config import ConfigError, from_dict


def forest_config(cell: CellInput) -> ForestConfig:
    """The forest settings of the cell's model (unknown option keys are a ConfigError naming the model)."""
    options = {k: v for k, v in cell.model.options.items() if k in ForestConfig.__dataclass_fields__}
    unknown = set(cell.model.options) - set(options) - {"low_forest"}
    if unknown:
        raise ConfigError(f"models[{cell.model.name}].options", f"unknown forest option(s) {sorted(unknown)}")
    return from_dict(ForestConfig, options, prefix=f"models[{cell.model.name}].options")


def low_forest_config(cell: CellInput) -> ForestConfig:
    """Settings of the low-fidelity forest: the model's forest settings updated by ``options.low_forest``.

    The low forest trains on every training-fold low label (~24k rows for the PBE gap), so configs may give it
    fewer trees than the scarce-task forest.
    """
    from tlgnn.utils.config import to_dict

    overrides = cell.model.options.get("low_forest") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"models[{cell.model.name}].options.low_forest", f"expected a mapping, got {overrides!r}")
    base = {k: v for k, v in to_dict(forest_config(cell)).items()}
    return from_dict(ForestConfig, {**base, **overrides}, prefix=f"models[{cell.model.name}].options.low_forest")


def composition_features(cell: CellInput) -> np.ndarray:
    """Composition features of every row of the experiment table (memoised per experiment)."""
    key = ("composition_features", cell.experiment.name, len(cell.frame))
    if key not in cell.shared:
        cell.shared[key] = featurize(cell.frame["formula"].tolist())
    return cell.shared[key]


def _known_low(cell: CellInput, rows: np.ndarray, what: str) -> np.ndarray:
    low = cell.low_values(rows)
    missing = ~np.isfinite(low)
    if missing.any():
        ids = cell.frame["id"].to_numpy()[rows[missing]][:5]
        raise ValueError(
            f"{cell.experiment.name}/{cell.model.name}: {int(missing.sum())} {what} rows lack the low-fidelity "
            f"label {cell.experiment.low!r} (e.g. {', '.join(ids)})"
        )
    return low


def low_forest_predictions(cell: CellInput) -> np.ndarray:
    """Low-fidelity labels of the test rows predicted by a forest trained on every training-fold low label."""
    return low_forest(cell)[0]


def low_forest(cell: CellInput) -> tuple[np.ndarray, np.ndarray]:
    """The low forest's test-row predictions and their per-tree spread (:func:`tree_spread`).

    Memoised per (experiment, fold, seed, forest settings, training rows): the low forest does not depend on the
    scarce-label training size, so its fit time is counted in the wall time of the first cell of a fold that
    needs it.
    """
    config = low_forest_config(cell)
    train_low = cell.train_idx[np.isfinite(cell.low_values(cell.train_idx))]
    key = (
        "low_forest",
        cell.experiment.name,
        cell.fold,
        cell.seed,
        json.dumps(config.kwargs(cell.seed), sort_keys=True),
        len(train_low),
        int(train_low.sum()),
    )
    if key not in cell.shared:
        features = composition_features(cell)
        model = fit_regressor(features[train_low], cell.low_values(train_low), config, cell.seed)
        cell.shared[key] = (model.predict(features[cell.test_idx]), tree_spread(model, features[cell.test_idx]))
    return cell.shared[key]


def spread_columns(mean: np.ndarray, std: np.ndarray, level: float = 0.9) -> dict[str, np.ndarray]:
    """A forest's uncertainty columns: ``y_std`` (per-tree spread, uncalibrated) and the Gaussian interval at
    ``level`` ``y_lower``/``y_upper`` (what ``tlgnn.benchmark.metrics.cell_uncertainty_metrics`` scores)."""
    from tlgnn.uncertainty import gaussian_interval

    lower, upper = gaussian_interval(mean, std, level)
    return {"y_std": std, "y_lower": lower, "y_upper": upper}


def run_rf_single(cell: CellInput) -> CellOutput:
    """Forest on the scarce labels only (plus the known low label as a feature in ``low_fidelity_known``)."""
    features = composition_features(cell)
    train, test = cell.train_target_idx, cell.test_idx
    X_train, X_test = features[train], features[test]
    info = {"features": "composition"}
    if cell.regime == "low_fidelity_known":
        X_train = np.column_stack([X_train, _known_low(cell, train, "training")])
        X_test = np.column_stack([X_test, _known_low(cell, test, "test")])
        info["features"] = f"composition + {cell.experiment.low}"
    config = forest_config(cell)
    y = cell.target_values(train)
    columns: dict[str, np.ndarray] = {}
    if cell.experiment.kind == "classification":
        model = fit_classifier(X_train, y.astype(np.int64), config, cell.seed)
        pred = predict_proba_full(model, X_test, len(cell.experiment.classes or []))
    else:
        model = fit_regressor(X_train, y, config, cell.seed)
        pred = model.predict(X_test)
        columns.update(spread_columns(pred, tree_spread(model, X_test)))
        if cell.regime == "structure_only" and cell.experiment.low is not None:
            # the "difference of two separately predicted gaps" used by the correction metric
            columns["low_pred"] = low_forest_predictions(cell)
    info["n_features"] = int(X_train.shape[1])
    return CellOutput(pred, columns, info)


def run_rf_difference(cell: CellInput) -> CellOutput:
    """Forest on ``target − low``; the test low label is known or predicted by a forest on all low labels."""
    if cell.experiment.kind != "regression" or cell.experiment.low is None:
        raise ConfigError(f"models[{cell.model.name}].kind", "rf_difference needs a regression target and a 'low' column")
    features = composition_features(cell)
    train, test = cell.train_target_idx, cell.test_idx
    model = DifferenceForest(forest_config(cell), cell.seed)
    model.fit(features[train], cell.target_values(train), _known_low(cell, train, "training"))
    spread = tree_spread(model.model, features[test])
    if cell.regime == "low_fidelity_known":
        low = _known_low(cell, test, "test")
    else:
        low, low_spread = low_forest(cell)
        spread = np.hypot(spread, low_spread)  # two independent forests: variances add
    delta = model.predict_delta(features[test])
    columns = {"low_pred": low, "delta_pred": delta, **spread_columns(low + delta, spread)}
    return CellOutput(low + delta, columns, {"features": "composition"})


def run_affine(cell: CellInput) -> CellOutput:
    """No learning beyond ``target ≈ a·low + b`` (regression) or a logistic map of ``low`` (classification)."""
    if cell.regime != "low_fidelity_known":
        raise ConfigError(f"models[{cell.model.name}].regime", "affine needs regime 'low_fidelity_known'")
    train, test = cell.train_target_idx, cell.test_idx
    low_train, low_test = _known_low(cell, train, "training"), _known_low(cell, test, "test")
    y = cell.target_values(train)
    if cell.experiment.kind == "classification":
        model = AffineLogit(cell.seed).fit(low_train, y.astype(np.int64))
        proba = np.zeros((len(test), len(cell.experiment.classes or [])))
        proba[:, model.classes_.astype(np.int64)] = model.predict_proba(low_test)
        coef = model.model.coef_.ravel().tolist()
        return CellOutput(proba, {}, {"coef": coef, "intercept": model.model.intercept_.tolist()})
    fit = AffineMap.fit(low_train, y)
    return CellOutput(fit.predict(low_test), {}, {"slope": fit.slope, "intercept": fit.intercept})


__all__ = ["composition_features", "forest_config", "low_forest_predictions", "run_affine", "run_rf_difference", "run_rf_single"]
