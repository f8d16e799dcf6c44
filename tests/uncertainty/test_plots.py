"""The uncertainty plots write non-empty PNG files (parents created); binned RMSE by std quantile."""

from __future__ import annotations

import numpy as np
import pytest

from tlgnn.uncertainty import binned_rmse, calibration_plot, error_vs_std_plot

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 3, 2000)
    std = rng.uniform(0.05, 0.6, 2000)
    y = mean + std * rng.standard_normal(2000)
    y[:5] = np.nan
    return y, mean, std


def test_calibration_plot_writes_png(tmp_path, draws):
    path = calibration_plot(*draws, tmp_path / "sub" / "calibration.png", "gap_hse: test set")
    assert path == tmp_path / "sub" / "calibration.png"
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_error_vs_std_plot_writes_png(tmp_path, draws):
    path = error_vs_std_plot(*draws, str(tmp_path / "err.png"), "gap_hse", bins=8)
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG


def test_binned_rmse_matches_mean_std_when_calibrated(draws):
    bin_std, rmse = binned_rmse(*draws, bins=5)
    assert bin_std.shape == rmse.shape == (5,)
    assert np.all(np.diff(bin_std) > 0)
    np.testing.assert_allclose(rmse, bin_std, rtol=0.15)
