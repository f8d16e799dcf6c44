"""The benchmark's uncertainty figures: a cell's metrics from its uncertainty columns, the forests' per-tree
spread, and the report's table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from support.paths import ROOT
from tlgnn.baselines import featurize
from tlgnn.baselines.forest import ForestConfig, fit_regressor, tree_spread
from tlgnn.benchmark.metrics import cell_uncertainty_metrics
from tlgnn.benchmark.uncertainty import uncertainty_section

SAMPLE = ROOT / "data" / "benchmark_sample" / "labels.csv.gz"


def test_cell_metrics_from_the_uncertainty_columns():
    rng = np.random.default_rng(0)
    n = 4000
    std = rng.uniform(0.1, 1.0, n)
    y_pred = rng.normal(size=n)
    y_true = y_pred + rng.normal(0.0, std)
    z = 1.6448536269514722
    members = {f"member_{i}": y_pred + rng.normal(0.0, 0.3, n) for i in range(3)}
    columns = {"y_std": std, "y_lower": y_pred - z * std, "y_upper": y_pred + z * std, "y_std_raw": std / 2,
               **members}
    got = cell_uncertainty_metrics(y_true, y_pred, columns, {"level": 0.9, "constant_sigma": float(np.mean(std))})
    assert got["coverage"] == pytest.approx(0.9, abs=0.015)
    assert got["coverage_raw"] < 0.7  # half the std: overconfident
    assert got["spearman"] > 0.2 and got["nll"] < got["nll_constant"]
    expected_single = np.mean([np.abs(m - y_true).mean() for m in members.values()])
    assert got["mae_single"] == pytest.approx(expected_single)
    no_sigma = cell_uncertainty_metrics(y_true, y_pred, {"y_std": std}, {})
    assert "nll_constant" not in no_sigma  # undefined figures are left out, not written as NaN


def test_forest_spread_is_the_std_over_its_trees():
    frame = pd.read_csv(SAMPLE).head(300)
    x, y = featurize(frame.formula_sum.tolist()), frame.band_gap_pbe.to_numpy()
    forest = fit_regressor(np.nan_to_num(x[:250]), y[:250], ForestConfig(n_estimators=30), seed=0)
    test = np.nan_to_num(x[250:])
    spread = tree_spread(forest, test)
    by_tree = np.stack([tree.predict(test) for tree in forest.estimators_])
    np.testing.assert_allclose(spread, by_tree.std(axis=0))
    np.testing.assert_allclose(forest.predict(test), by_tree.mean(axis=0))
    assert (spread > 0).mean() > 0.5


def test_the_report_lists_models_with_uncertainty_only():
    def row(model, kind, coverage):
        return {"experiment": "hse", "model": model, "kind": kind, "regime": "structure_only", "train_size": "all",
                "n_folds": 5, "m_mae_mean": 0.4, "m_mae_std": 0.01, "m_coverage_mean": coverage,
                "m_coverage_std": 0.02, "m_spearman_mean": 0.6, "m_spearman_std": math.nan}
    summary = pd.DataFrame([row("ens_tree", "gnn_difference", 0.9), row("rf_single", "rf_single", 0.97),
                            row("gnn_single", "gnn_single", math.nan)])
    text = uncertainty_section(summary)
    assert "| hse | structure only | all | ens_tree | 5 | 0.400 ± 0.010 |" in text
    assert "rf_single" in text and "gnn_single" not in text
    assert uncertainty_section(summary.drop(columns=["m_coverage_mean"])) == ""
