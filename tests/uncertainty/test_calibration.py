"""Recalibration: the NLL scale, split-conformal quantile (exact index rule, coverage on fresh data), Calibration."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tlgnn.uncertainty import (
    Calibration,
    constant_sigma,
    fit_calibration,
    fit_conformal_quantile,
    fit_std_scale,
    interval_coverage,
)

N = 20000


def _draws(seed: int, heavy: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, mean, std) with errors std·ε, ε standard normal or Student-t with 3 degrees of freedom."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(-2.0, 2.0, N)
    std = rng.uniform(0.1, 0.8, N)
    noise = rng.standard_t(3, N) if heavy else rng.standard_normal(N)
    return mean + std * noise, mean, std


def test_fit_std_scale_recovers_the_factor():
    y, mean, std = _draws(0)
    assert fit_std_scale(y, mean, std / 2.5) == pytest.approx(2.5, rel=0.02)
    assert fit_std_scale([1.0], [0.0], [0.0]) == 1.0  # no row with std > 0
    assert fit_std_scale([], [], []) == 1.0


def test_conformal_index_rule_by_hand():
    # r = |y - mean| / std = [0.5, 1, 1.5, 2, 3] (sorted), n = 5
    y = np.array([2.0, 1.0, 3.0, 1.5, 6.0])
    mean = np.zeros(5)
    std = np.array([1.0, 2.0, 1.0, 0.5, 4.0])  # r = 2, 0.5, 3, 3, 1.5 -> sorted 0.5, 1.5, 2, 3, 3
    assert fit_conformal_quantile(y, mean, std, level=0.5) == 2.0  # k = ceil(6 * 0.5) = 3
    assert fit_conformal_quantile(y, mean, std, level=0.6) == 3.0  # k = ceil(3.6) = 4
    assert fit_conformal_quantile(y, mean, std, level=0.8) == 3.0  # k = ceil(4.8) = 5 = n
    assert fit_conformal_quantile(y, mean, std, level=0.9) == math.inf  # k = ceil(5.4) = 6 > n
    # 10 * 0.9 is 9 exactly: the 9th of 9 values, not +inf
    assert fit_conformal_quantile(np.arange(1.0, 10.0), np.zeros(9), np.ones(9), level=0.9) == 9.0
    with pytest.raises(ValueError, match="level"):
        fit_conformal_quantile(y, mean, std, level=1.0)


@pytest.mark.parametrize("heavy", [False, True])
def test_conformal_covers_fresh_data(heavy):
    cal = fit_calibration(*_draws(1, heavy), level=0.9, method="conformal")
    y, mean, std = _draws(2, heavy)
    lower, upper = cal.interval(mean, std)
    assert interval_coverage(y, lower, upper) == pytest.approx(0.9, abs=0.01)


def test_scale_fixes_gaussian_coverage_but_not_heavy_tails():
    cal = fit_calibration(*_draws(3), method="scale")
    y, mean, std = _draws(4)
    assert interval_coverage(y, *cal.interval(mean, std / 3)) < 0.5  # raw std / 3: badly overconfident
    cal = fit_calibration(y, mean, std / 3, method="scale")
    assert cal.scale == pytest.approx(3.0, rel=0.02)
    assert interval_coverage(y, *cal.interval(mean, std / 3)) == pytest.approx(0.9, abs=0.01)
    np.testing.assert_allclose(cal.std(std / 3), np.hypot(cal.scale * std / 3, cal.floor))
    assert cal.floor < 0.1 * float(np.mean(std))  # adds < 0.5 % in quadrature: errors that scale with std need none


def test_a_floor_is_fitted_where_members_agree_but_are_wrong():
    """Half the rows have a raw std of 0 (every member agrees) yet errors of σ = 0.3: the floor takes them, so the
    likelihood stays finite and the interval covers them."""
    rng = np.random.default_rng(7)
    n = 20000
    std = np.where(np.arange(n) % 2 == 0, 0.0, rng.uniform(0.2, 1.0, n))
    y = rng.normal(0.0, np.hypot(std, 0.3))
    cal = fit_calibration(y, np.zeros(n), std, method="scale")
    assert cal.floor == pytest.approx(0.3, rel=0.05) and cal.scale == pytest.approx(1.0, rel=0.05)
    zero = std == 0
    assert interval_coverage(y[zero], *cal.interval(np.zeros(zero.sum()), std[zero])) == pytest.approx(0.9, abs=0.02)


def test_constant_sigma_is_the_rmse():
    assert constant_sigma([1.0, 2.0, np.nan], [0.0, 0.0, 5.0]) == pytest.approx(math.sqrt(2.5))
    assert math.isnan(constant_sigma([np.nan], [0.0]))


def test_fit_calibration_methods_and_round_trip():
    y, mean, std = _draws(5)
    none = fit_calibration(y, mean, std, method="none")
    assert none.scale == 1.0 and none.quantile is None
    assert none.constant_sigma == pytest.approx(constant_sigma(y, mean))
    conformal = fit_calibration(y, mean, std, level=0.8, method="conformal")
    assert conformal.level == 0.8
    assert conformal.quantile == fit_conformal_quantile(y, mean, conformal.std(std), 0.8)
    text = json.dumps(conformal.to_dict())
    assert Calibration.from_dict(json.loads(text)) == conformal
    assert all(isinstance(v, float) for v in conformal.to_dict().values())
    with pytest.raises(ValueError, match="'isotonic'"):
        fit_calibration(y, mean, std, method="isotonic")
    with pytest.raises(ValueError, match="unknown Calibration keys"):
        Calibration.from_dict({"scale": 1.0, "bogus": 2.0})


def test_infinite_quantile_gives_an_unbounded_interval():
    cal = Calibration(quantile=math.inf)
    lower, upper = cal.interval(np.array([1.0, 2.0]), np.array([0.0, 1.0]))
    assert np.all(np.isneginf(lower)) and np.all(np.isposinf(upper))
    with pytest.raises(AttributeError):
        cal.scale = 2.0  # frozen


def test_the_floor_never_falls_below_a_share_of_the_rmse():
    """A component that explains every error (and is 0 on one row with a small error) would drive the floor to 0
    and the likelihood of that row to infinity; the fitted std keeps at least 1 % of the errors' RMSE."""
    from tlgnn.uncertainty.calibration import MIN_FLOOR_SHARE, fit_variance

    rng = np.random.default_rng(3)
    std = rng.uniform(0.2, 1.0, 500)
    y = rng.normal(0.0, std)
    std[0], y[0] = 0.0, 0.01
    scales, floor = fit_variance(y, np.zeros(500), [std])
    rmse = float(np.sqrt(np.mean(y ** 2)))
    assert floor >= MIN_FLOOR_SHARE * rmse - 1e-12
    assert scales[0] == pytest.approx(1.0, rel=0.1)
    _, small = fit_variance(y[1:21], np.zeros(20), [std[1:21]], floor=False)  # no zero std: the least floor only
    assert small == pytest.approx(MIN_FLOOR_SHARE * float(np.sqrt(np.mean(y[1:21] ** 2))))


def test_separate_components_overrides_the_row_count():
    """Two std components (an ensemble's spread, an error model's σ): with many rows each gets its own scale (the
    errors here follow the second only), with few one common scale; ``separate_components`` decides instead of the
    row count where some rows' components are biased (an ensemble's out-of-bag rows)."""
    from tlgnn.uncertainty.calibration import MIN_ROWS_PER_COMPONENT

    rng = np.random.default_rng(7)
    n = 4 * MIN_ROWS_PER_COMPONENT
    spread, error = rng.uniform(0.1, 1.0, n), rng.uniform(0.1, 1.0, n)
    y = rng.normal(0.0, error)
    both = fit_calibration(y, np.zeros(n), spread, error_std=error)
    assert both.error_scale > 3 * both.scale  # the spread carries nothing here
    common = fit_calibration(y, np.zeros(n), spread, error_std=error, separate_components=False)
    assert common.scale == common.error_scale
    few = fit_calibration(y[:20], np.zeros(20), spread[:20], error_std=error[:20])
    assert few.scale == few.error_scale
    assert fit_calibration(y[:20], np.zeros(20), spread[:20], error_std=error[:20],
                           separate_components=True).error_scale != few.error_scale


def test_a_common_scale_still_fits_a_floor_when_the_rows_are_many():
    """One common scale (``separate_components=False``) keeps the order of the summed std; with enough rows the
    floor, the constant part of the errors, is fitted beside it (few rows: the least floor only)."""
    from tlgnn.uncertainty.calibration import MIN_FLOOR_SHARE, MIN_ROWS_PER_COMPONENT

    rng = np.random.default_rng(8)
    n = 40 * MIN_ROWS_PER_COMPONENT
    spread, error = rng.uniform(0.1, 1.0, n), rng.uniform(0.1, 1.0, n)
    y = rng.normal(0.0, np.sqrt(spread ** 2 + error ** 2 + 0.5 ** 2))
    many = fit_calibration(y, np.zeros(n), spread, error_std=error, separate_components=False)
    assert many.scale == many.error_scale == pytest.approx(1.0, abs=0.1)
    assert many.floor == pytest.approx(0.5, abs=0.1)
    few = fit_calibration(y[:20], np.zeros(20), spread[:20], error_std=error[:20], separate_components=False)
    assert few.floor == pytest.approx(MIN_FLOOR_SHARE * float(np.sqrt(np.mean(y[:20] ** 2))))
