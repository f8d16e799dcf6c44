"""Predictive uncertainty for regression tasks: metrics, recalibration, diagnostic plots and acquisition scores.

Pure numpy/scipy (matplotlib for the plots); nothing here imports the rest of tlgnn.
"""

from tlgnn.uncertainty.acquisition import ACQUISITIONS, DESCRIPTIONS, acquisition_scores, exceed_probability, rank
from tlgnn.uncertainty.calibration import (
    METHODS,
    Calibration,
    constant_sigma,
    fit_calibration,
    fit_conformal_quantile,
    fit_scale_and_floor,
    fit_std_scale,
    fit_variance,
)
from tlgnn.uncertainty.metrics import (
    calibration_curve,
    error_std_spearman,
    gaussian_interval,
    gaussian_nll,
    interval_coverage,
    miscalibration_area,
    normal_quantile,
    uncertainty_metrics,
)
from tlgnn.uncertainty.plots import binned_rmse, calibration_plot, error_vs_std_plot

__all__ = [
    "ACQUISITIONS",
    "DESCRIPTIONS",
    "METHODS",
    "Calibration",
    "acquisition_scores",
    "binned_rmse",
    "calibration_curve",
    "calibration_plot",
    "constant_sigma",
    "error_std_spearman",
    "error_vs_std_plot",
    "exceed_probability",
    "fit_calibration",
    "fit_conformal_quantile",
    "fit_scale_and_floor",
    "fit_std_scale",
    "fit_variance",
    "gaussian_interval",
    "gaussian_nll",
    "interval_coverage",
    "miscalibration_area",
    "normal_quantile",
    "rank",
    "uncertainty_metrics",
]
