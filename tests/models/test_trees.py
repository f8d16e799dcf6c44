"""Tensor trees (tlgnn.models.trees) against LightGBM's own predictions, on composition features of real formulas
(data/benchmark_sample) and their PBE gaps; LightGBM settings that exercise every kind of split and leaf."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch

from support.paths import ROOT
from tlgnn.baselines import featurize
from tlgnn.models.boosting import BoosterOptions, fit_booster
from tlgnn.models.trees import TreeEnsemble, lightgbm_arrays

SAMPLE = ROOT / "data" / "benchmark_sample" / "labels.csv.gz"


@pytest.fixture(scope="module")
def xy():
    frame = pd.read_csv(SAMPLE)
    x = featurize(frame.formula_sum.tolist())
    x[np.random.default_rng(1).random(x.shape) < 0.05] = np.nan
    return x, frame.band_gap_pbe.to_numpy()


def _ensemble(booster) -> TreeEnsemble:
    forest = TreeEnsemble()
    forest.set_arrays(lightgbm_arrays(booster.dump_model()))
    return forest


@pytest.mark.parametrize("params, kind", [
    ({"objective": "regression"}, "NaN"),                       # NaN takes the learned default side
    ({"objective": "l1", "zero_as_missing": True}, "Zero"),     # zeros and NaN take the default side
    ({"objective": "huber", "use_missing": False}, "None"),     # NaN compared as 0
])
def test_tensor_trees_match_lightgbm_for_every_missing_type(xy, params, kind):
    x, y = xy
    booster = lgb.train({**params, "num_leaves": 15, "verbosity": -1, "num_threads": 1, "learning_rate": 0.1},
                        lgb.Dataset(x[:300], y[:300]), num_boost_round=60)
    forest = _ensemble(booster)
    missing = {node.get("missing_type") for tree in booster.dump_model()["tree_info"]
               for node in _nodes(tree["tree_structure"])}
    assert kind in missing
    got = forest(torch.as_tensor(x[300:])).numpy()
    np.testing.assert_allclose(got, booster.predict(x[300:]), atol=1e-9, rtol=0)
    np.testing.assert_allclose(forest(torch.as_tensor(x[300:]), chunk_cells=7).numpy(), got, atol=1e-12, rtol=0)


def _nodes(item):
    if "leaf_value" in item:
        return []
    return [item, *_nodes(item["left_child"]), *_nodes(item["right_child"])]


def test_single_leaf_trees_and_empty_input(xy):
    x, y = xy
    booster = lgb.train({"objective": "regression", "min_data_in_leaf": 50, "verbosity": -1, "num_threads": 1},
                        lgb.Dataset(x[:60], y[:60]), num_boost_round=3)
    forest = _ensemble(booster)  # no split leaves 50 rows on each side: LightGBM stops after one constant tree
    assert forest.num_trees == 1 and int(forest.depth) == 0 and (forest.root < 0).all()
    np.testing.assert_allclose(forest(torch.as_tensor(x[60:80])).numpy(), booster.predict(x[60:80]), atol=1e-12)
    assert forest(torch.as_tensor(x[:0])).shape == (0,)


def test_categorical_splits_and_unfitted_ensembles_are_refused(xy):
    x, y = xy
    cats = np.nan_to_num(x[:, :1])  # the number of elements as a category
    booster = lgb.train({"objective": "regression", "verbosity": -1, "min_data_per_group": 5, "cat_smooth": 1,
                         "num_threads": 1}, lgb.Dataset(cats, y, categorical_feature=[0]), num_boost_round=2)
    with pytest.raises(ValueError, match="categorical"):
        lightgbm_arrays(booster.dump_model())
    with pytest.raises(RuntimeError, match="not been fitted"):
        TreeEnsemble()(torch.zeros(2, 3))


def test_fit_booster_keeps_the_best_round_and_state_dict_resizes(xy):
    x, y = xy
    options = BoosterOptions(n_estimators=400, learning_rate=0.2, early_stopping_rounds=10, n_jobs=1)
    booster, info = fit_booster(x[:250], y[:250], x[250:320], y[250:320], options, "test")
    assert info["best_iteration"] < 400 and info["n_train"] == 250 and info["n_val"] == 70
    forest = TreeEnsemble()
    forest.set_arrays(lightgbm_arrays(booster.dump_model(num_iteration=info["best_iteration"])))
    fresh = TreeEnsemble()
    fresh.load_state_dict(forest.state_dict())
    assert fresh.num_trees == info["best_iteration"]
    expected = booster.predict(x[320:], num_iteration=info["best_iteration"])
    np.testing.assert_allclose(fresh(torch.as_tensor(x[320:], dtype=torch.float32)).numpy(),
                               booster.predict(x[320:].astype(np.float32).astype(np.float64),
                                               num_iteration=info["best_iteration"]), atol=1e-9)
    assert np.abs(expected - y[320:]).mean() < np.abs(y[320:] - y[:250].mean()).mean()
    with pytest.raises(ValueError, match="labels contain NaN"):
        fit_booster(x[:5], np.array([1.0, np.nan, 0, 0, 0]), None, None, options, "test")
