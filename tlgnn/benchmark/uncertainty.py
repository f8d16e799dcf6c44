"""The uncertainty table of the transfer benchmark (issue 17): for every model whose cells carry an uncertainty
(the ``ens_*`` ensembles: calibrated std; the forests: their per-tree spread, uncalibrated), per experiment, regime
and training size, the mean over folds of MAE, the members' own MAE (``mae_single``), the coverage of the 90 %
interval (calibrated, and of the raw spread), the miscalibration area, Spearman(|error|, std) and the Gaussian NLL
against the constant-σ baseline (σ = the validation RMSE; forests have no validation split: not given).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

COLUMNS = [("m_mae", "MAE"), ("m_mae_single", "MAE one member"), ("m_coverage", "coverage 90 %"),
           ("m_coverage_raw", "coverage, raw spread"), ("m_miscalibration_area", "miscal. area"),
           ("m_spearman", "Spearman(|err|, σ)"), ("m_nll", "NLL"), ("m_nll_constant", "NLL constant σ")]
REGIMES = {"structure_only": "structure only", "low_fidelity_known": "low fidelity known"}


def uncertainty_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows (one per experiment, model, regime, training size) of models with a coverage figure."""
    if "m_coverage_mean" not in summary:
        return summary.iloc[0:0]
    rows = summary[np.isfinite(summary["m_coverage_mean"].astype(float))]
    return rows.sort_values(["experiment", "regime", "train_size", "kind", "model"])


def _cell(row: pd.Series, column: str) -> str:
    mean = row.get(f"{column}_mean")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if column == "m_nll" and mean > 1e3:  # a spread of exactly 0 on some crystal with an error: no likelihood
        return "unbounded (σ = 0)"
    std = row.get(f"{column}_std")
    spread = f" ± {std:.3f}" if isinstance(std, float) and not math.isnan(std) else ""
    return f"{mean:.3f}{spread}"


def uncertainty_section(summary: pd.DataFrame) -> str:
    """Markdown: the uncertainty figures of every model that has them, forests as the baseline rows."""
    rows = uncertainty_rows(summary)
    if rows.empty:
        return ""
    lines = ["### Uncertainty: calibrated ensembles vs the forests' per-tree spread (same folds)", "",
             "Mean ± std over folds; coverage of the central 90 % interval (target 0.85–0.95); NLL in nats per "
             "crystal (lower is better; 'unbounded': every tree agreed, σ = 0, on a crystal they got wrong); "
             "forests: per-tree spread, uncalibrated.", "",
             "| experiment | regime | N | model | folds | " + " | ".join(name for _, name in COLUMNS) + " |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for _, row in rows.iterrows():
        cells = [str(row["experiment"]), REGIMES.get(str(row["regime"]), str(row["regime"])), str(row["train_size"]),
                 str(row["model"]), str(int(row["n_folds"]))] + [_cell(row, column) for column, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["COLUMNS", "uncertainty_rows", "uncertainty_section"]
