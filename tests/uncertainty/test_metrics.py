"""Uncertainty metrics on draws with a known σ: coverage, miscalibration area, Spearman, NLL, NaN rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tlgnn.uncertainty import (
    calibration_curve,
    error_std_spearman,
    gaussian_interval,
    gaussian_nll,
    interval_coverage,
    miscalibration_area,
    normal_quantile,
    uncertainty_metrics,
)

N = 20000


@pytest.fixture(scope="module")
def draws() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y ~ N(mean, sigma²) with sigma varying from row to row (eV-like scale)."""
    rng = np.random.default_rng(0)
    mean = rng.uniform(0.0, 5.0, N)
    sigma = rng.uniform(0.05, 1.0, N)
    return mean + sigma * rng.standard_normal(N), mean, sigma


def test_normal_quantile_and_bad_levels():
    assert normal_quantile(0.9) == pytest.approx(1.6448536, abs=1e-6)
    assert normal_quantile(0.6827) == pytest.approx(1.0, abs=1e-3)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="level"):
            normal_quantile(bad)


def test_true_sigma_is_calibrated(draws):
    y, mean, sigma = draws
    lower, upper = gaussian_interval(mean, sigma, 0.9)
    assert interval_coverage(y, lower, upper) == pytest.approx(0.90, abs=0.01)
    assert miscalibration_area(y, mean, sigma) < 0.01
    levels, observed = calibration_curve(y, mean, sigma)
    assert levels.shape == observed.shape == (99,)
    assert levels[0] == pytest.approx(0.01) and levels[-1] == pytest.approx(0.99)
    assert np.max(np.abs(observed - levels)) < 0.02


def test_half_sigma_is_overconfident(draws):
    y, mean, sigma = draws
    lower, upper = gaussian_interval(mean, sigma / 2, 0.9)
    expected = 2 * stats.norm.cdf(normal_quantile(0.9) / 2) - 1  # ≈ 0.59
    assert interval_coverage(y, lower, upper) == pytest.approx(expected, abs=0.01)
    assert expected == pytest.approx(0.59, abs=0.01)
    assert miscalibration_area(y, mean, sigma / 2) > 0.15


def test_spearman_sign(draws):
    y, mean, sigma = draws
    assert error_std_spearman(y, mean, sigma) > 0.2
    shuffled = np.random.default_rng(1).permutation(sigma)
    assert abs(error_std_spearman(y, mean, shuffled)) < 0.03
    assert math.isnan(error_std_spearman(y[:2], mean[:2], sigma[:2]))
    assert math.isnan(error_std_spearman(y, mean, np.full(N, 0.3)))


def test_nll_true_sigma_beats_constant(draws):
    y, mean, sigma = draws
    rmse = float(np.sqrt(np.mean((y - mean) ** 2)))
    assert gaussian_nll(y, mean, sigma) < gaussian_nll(y, mean, np.full(N, rmse)) - 0.1
    # one row by hand: y = mean, s = 1 -> ½ log(2π)
    assert gaussian_nll([1.0], [1.0], [1.0]) == pytest.approx(0.5 * math.log(2 * math.pi))
    # a zero std is floored at 1e-6, not a division by zero
    assert math.isfinite(gaussian_nll([1.0], [1.0], [0.0]))


def test_nan_rows_are_ignored():
    y = np.array([0.0, 1.0, np.nan, 3.0, 2.0])
    mean = np.array([0.1, 1.2, 2.0, np.nan, 2.5])
    std = np.array([0.2, 0.1, 0.5, 0.5, np.nan])
    assert gaussian_nll(y, mean, std) == pytest.approx(gaussian_nll(y[:2], mean[:2], std[:2]))
    assert interval_coverage([1.0, np.nan], [0.0, 0.0], [2.0, 2.0]) == 1.0
    assert math.isnan(interval_coverage([np.nan], [0.0], [1.0]))
    assert math.isnan(miscalibration_area([np.nan], [0.0], [1.0]))


def test_uncertainty_metrics_keys_and_values(draws):
    y, mean, sigma = draws
    got = uncertainty_metrics(y, mean, sigma, constant_sigma=0.5)
    assert set(got) == {"coverage", "level", "interval_width", "miscalibration_area", "spearman", "nll",
                        "nll_constant", "mean_std", "n"}
    assert all(isinstance(v, float) for v in got.values())
    assert got["coverage"] == pytest.approx(0.9, abs=0.01)
    assert got["interval_width"] == pytest.approx(2 * normal_quantile(0.9) * sigma.mean())
    assert got["nll_constant"] == pytest.approx(gaussian_nll(y, mean, np.full(N, 0.5)))
    assert got["n"] == N and got["level"] == 0.9 and got["mean_std"] == pytest.approx(sigma.mean())
    assert math.isnan(uncertainty_metrics(y, mean, sigma)["nll_constant"])


def test_uncertainty_metrics_with_explicit_interval():
    y = np.array([0.0, 1.0, 2.0, np.nan])
    mean = np.array([0.0, 0.0, 0.0, 0.0])
    std = np.ones(4)
    got = uncertainty_metrics(y, mean, std, lower=[-0.5, -0.5, -0.5, -9], upper=[0.5, 1.5, 1.5, 9])
    assert got["coverage"] == pytest.approx(2 / 3)
    assert got["interval_width"] == pytest.approx((1 + 2 + 2) / 3)
    assert got["n"] == 3.0
    with pytest.raises(ValueError, match="lower and upper"):
        uncertainty_metrics(y, mean, std, lower=[0, 0, 0, 0])


def test_empty_input_gives_nan_floats():
    got = uncertainty_metrics([], [], [])
    assert got["n"] == 0.0
    assert all(math.isnan(got[k]) for k in ("coverage", "interval_width", "miscalibration_area", "spearman", "nll"))
