"""Diagnostic plots of predictive uncertainty (PNG, matplotlib Agg backend): the calibration curve and the error
vs std plot. Rows where y, mean or std is NaN are left out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tlgnn.uncertainty.metrics import calibration_curve, error_std_spearman, finite_rows, miscalibration_area


def binned_rmse(
    y: np.ndarray, mean: np.ndarray, std: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """(mean std, RMSE of y − mean) per bin of rows sorted by std into ``bins`` near-equal-count (quantile) bins.

    Both in the unit of y; for a calibrated std, RMSE ≈ mean std in every bin. Empty arrays when no row is left.
    """
    y, mean, std = finite_rows(y, mean, std)
    order = np.argsort(std, kind="stable")
    groups = [g for g in np.array_split(order, max(1, min(int(bins), y.size))) if g.size]
    mean_std = np.array([std[g].mean() for g in groups])
    rmse = np.array([math.sqrt(np.mean((y[g] - mean[g]) ** 2)) for g in groups])
    return mean_std, rmse


def _figure(path: str | Path):
    """(pyplot, figure, axes, path) for a 4.5×4.5 in, 120 dpi figure whose parent folder exists."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    return plt, fig, ax, path


def _save(plt, fig, path: Path, title: str) -> Path:
    """Title, tight layout, write ``path`` and close the figure."""
    fig.axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def calibration_plot(y: np.ndarray, mean: np.ndarray, std: np.ndarray, path: str | Path, title: str) -> Path:
    """Observed vs expected coverage of the central Gaussian intervals (levels 0.01..0.99) with the diagonal; the
    shaded gap is the miscalibration area, whose value is written on the plot."""
    plt, fig, ax, path = _figure(path)
    levels, observed = calibration_curve(y, mean, std)
    area = miscalibration_area(y, mean, std)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
    ax.plot(levels, observed, lw=1.5, label="model")
    ax.fill_between(levels, levels, observed, alpha=0.2)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("expected coverage (interval level)")
    ax.set_ylabel("observed coverage")
    ax.text(0.04, 0.96, f"miscalibration area = {area:.3f}\nn = {len(finite_rows(y, mean, std)[0])}",
            transform=ax.transAxes, va="top", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, path, title)


def error_vs_std_plot(
    y: np.ndarray, mean: np.ndarray, std: np.ndarray, path: str | Path, title: str, bins: int = 10
) -> Path:
    """Scatter of |y − mean| against std, with the RMSE of std-quantile bins against their mean std and the line
    y = x (where a calibrated model's bins lie); the Spearman rank correlation of |error| and std is written on it."""
    plt, fig, ax, path = _figure(path)
    y, mean, std = finite_rows(y, mean, std)
    error = np.abs(y - mean)
    ax.scatter(std, error, s=8, alpha=0.4, edgecolors="none", label="|error|")
    if y.size:
        bin_std, bin_rmse = binned_rmse(y, mean, std, bins)
        ax.plot(bin_std, bin_rmse, "o-", color="C3", ms=4, label="binned RMSE")
        hi = float(max(np.max(std), np.max(error), np.max(bin_rmse))) or 1.0
        ax.plot([0, hi], [0, hi], "k--", lw=1, label="y = x")
        ax.set_xlim(0, 1.05 * hi)
        ax.set_ylim(0, 1.05 * hi)
    ax.set_xlabel("predicted std")
    ax.set_ylabel("|error|")
    rho = error_std_spearman(y, mean, std)
    ax.text(0.04, 0.96, f"Spearman ρ = {rho:.3f}\nn = {y.size}", transform=ax.transAxes, va="top", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, path, title)


__all__ = ["binned_rmse", "calibration_plot", "error_vs_std_plot"]
