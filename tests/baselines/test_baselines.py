"""Composition features, affine map and forests on real labels (data/benchmark_sample, 400 MP rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from support.paths import ROOT
from tlgnn.baselines import AffineLogit, AffineMap, DifferenceForest, ForestConfig, element_table, feature_names, featurize, fit_regressor
from tlgnn.utils.config import ConfigError, from_dict

SAMPLE = ROOT / "data" / "benchmark_sample" / "labels.csv.gz"


@pytest.fixture(scope="module")
def hse() -> pd.DataFrame:
    frame = pd.read_csv(SAMPLE)
    return frame[frame.gap_hse.notna()].reset_index(drop=True)


def _features(formula: str) -> dict[str, float]:
    return dict(zip(feature_names(), featurize([formula])[0]))


def test_nacl_features_are_exact_fraction_weighted_statistics():
    f = _features("Na1 Cl1")
    assert f["n_elements"] == 2
    assert f["Z_mean"] == pytest.approx(14.0)
    assert f["Z_mad"] == pytest.approx(3.0)
    assert (f["Z_min"], f["Z_max"], f["Z_range"]) == (11.0, 17.0, 6.0)
    assert f["frac_norm_L2"] == pytest.approx(np.sqrt(0.5))
    assert f["X_mean"] == pytest.approx((0.93 + 3.16) / 2)
    assert f["row_mean"] == pytest.approx(3.0) and f["group_range"] == pytest.approx(16.0)
    # Na [Ne]3s1, Cl [Ne]3s2 3p5
    assert f["valence_s_mean"] == pytest.approx(1.5) and f["valence_p_mean"] == pytest.approx(2.5)
    assert f["valence_total_max"] == pytest.approx(7.0)
    # the same composition written differently gives the same features
    np.testing.assert_allclose(featurize(["NaCl", "Na4 Cl4", "ClNa"]), np.repeat(featurize(["Na1 Cl1"]), 3, axis=0))


def test_fe2o3_fractions_mode_and_valence():
    f = _features("Fe2O3")
    assert f["Z_mean"] == pytest.approx(0.4 * 26 + 0.6 * 8)
    assert f["Z_mad"] == pytest.approx(0.4 * abs(26 - 15.2) + 0.6 * abs(8 - 15.2))
    assert f["Z_mode"] == 8  # O is the most abundant element
    assert f["valence_d_mean"] == pytest.approx(0.4 * 6)  # Fe 3d6, O has no d electrons
    assert f["valence_s_mean"] == pytest.approx(2.0)
    assert f["atomic_mass_max"] == pytest.approx(55.845, abs=1e-3)


def test_missing_elemental_data_uses_the_group_mean_and_is_reported():
    table = element_table()
    col = table.properties.index("X")
    he, kr, xe = (table.symbols.index(s) for s in ("He", "Kr", "Xe"))
    assert table.imputed[he, col] and not table.imputed[kr, col]
    group18 = [table.symbols.index(s) for s in ("He", "Ne", "Ar", "Kr", "Xe", "Rn")]
    known = [i for i in group18 if not table.imputed[i, col]]
    assert table.values[he, col] == pytest.approx(np.mean(table.values[known, col]))
    assert not np.isnan(table.values).any()
    assert np.isfinite(featurize(["Xe1 F2", "He1"])).all()


def test_featurize_rejects_bad_formulas_naming_them():
    with pytest.raises(ValueError, match="Qq2O"):
        featurize(["NaCl", "Qq2O"])


def test_featurize_real_formulas_shape(hse):
    X = featurize(hse.formula_sum.tolist())
    assert X.shape == (len(hse), len(feature_names())) and np.isfinite(X).all()


def test_affine_recovers_a_known_map_on_real_pbe_gaps(hse):
    pbe = hse.band_gap_pbe.to_numpy()
    fit = AffineMap.fit(pbe, 1.3 * pbe + 0.2)
    assert fit.slope == pytest.approx(1.3, abs=1e-10) and fit.intercept == pytest.approx(0.2, abs=1e-10)


def test_affine_on_real_hse_is_the_least_squares_line_and_beats_raw_pbe(hse):
    half = len(hse) // 2
    train, test = hse.iloc[:half], hse.iloc[half:]
    fit = AffineMap.fit(train.band_gap_pbe, train.gap_hse)
    slope, intercept = np.polyfit(train.band_gap_pbe, train.gap_hse, 1)
    assert (fit.slope, fit.intercept) == (pytest.approx(slope), pytest.approx(intercept))
    assert 1.1 < fit.slope < 1.6  # HSE opens PBE gaps
    mae = np.abs(fit.predict(test.band_gap_pbe) - test.gap_hse).mean()
    assert mae < 0.7 * np.abs(test.band_gap_pbe - test.gap_hse).mean()
    with pytest.raises(ValueError, match="distinct"):
        AffineMap.fit([1.0, 1.0, 1.0], [2.0, 3.0, 4.0])


def test_affine_logit_separates_metals_by_pbe_gap(hse):
    is_metal = (hse.gap_hse == 0).astype(int).to_numpy()
    model = AffineLogit().fit(hse.band_gap_pbe, is_metal)
    p_metal = model.predict_proba([0.0, 3.0])[:, list(model.classes_).index(1)]
    assert p_metal[0] > 0.5 > p_metal[1]


def test_difference_forest_beats_single_forest_when_pbe_is_known(hse):
    X = featurize(hse.formula_sum.tolist())
    order = np.random.default_rng(0).permutation(len(hse))
    train, test = order[:120], order[120:]
    config = ForestConfig(n_estimators=60, n_jobs=1)
    y, low = hse.gap_hse.to_numpy(), hse.band_gap_pbe.to_numpy()
    single = fit_regressor(X[train], y[train], config, seed=0).predict(X[test])
    diff = DifferenceForest(config, seed=0).fit(X[train], y[train], low[train])
    pred = diff.predict(X[test], low[test])
    np.testing.assert_allclose(pred - low[test], diff.predict_delta(X[test]))
    assert np.abs(pred - y[test]).mean() < 0.6 * np.abs(single - y[test]).mean()


def test_difference_forest_uses_only_rows_with_both_labels(hse):
    X = featurize(hse.formula_sum.tolist())[:40]
    high = hse.gap_hse.to_numpy()[:40].copy()
    low = hse.band_gap_pbe.to_numpy()[:40].copy()
    low[:10] = np.nan
    model = DifferenceForest(ForestConfig(n_estimators=5, n_jobs=1)).fit(X, high, low)
    assert model.model.n_features_in_ == X.shape[1] and model.model.estimators_[0].tree_.n_node_samples[0] <= 30
    with pytest.raises(ValueError, match="NaN"):
        model.predict(X, low)
    with pytest.raises(RuntimeError, match="fit"):
        DifferenceForest().predict_delta(X)


def test_forest_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="max_features"):
        from_dict(ForestConfig, {"max_features": 1.5})
    with pytest.raises(ConfigError, match="n_estimators"):
        from_dict(ForestConfig, {"n_estimators": 0})
