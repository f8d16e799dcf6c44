"""The uncertainty table of the transfer benchmark (issue 17): for every model whose cells carry an uncertainty
(the ``ens_*`` ensembles: calibrated std; the forests: their per-tree spread, uncalibrated), per experiment, regime
and training size, the mean over folds of MAE, the members' own MAE (``mae_single``), the coverage of the 90 %
interval (calibrated, and of the raw spread), the miscalibration area, Spearman(|error|, std) and the Gaussian NLL
against the constant-σ baseline (σ = the validation RMSE; forests have no validation split: not given).
"""

from __future__ import annotations

import math
from pathlib import Path

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


def _value(row: pd.Series, column: str) -> float:
    value = row.get(f"{column}_mean")
    return float(value) if value is not None else math.nan


def target_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Per ensemble (``ens_*``) row, the issue's three checks against the composition forest of its regime
    (``rf_single`` / ``rf_single_lowknown``, per-tree spread) on the same folds: ``coverage_ok`` (0.85–0.95),
    ``nll_ok`` (NLL below the constant-σ baseline's), ``spearman_ok`` (Spearman(|error|, σ) at least the
    forest's)."""
    rows = uncertainty_rows(summary)
    out = []
    for _, row in rows[rows["model"].astype(str).str.startswith("ens_")].iterrows():
        forest_name = "rf_single_lowknown" if row["regime"] == "low_fidelity_known" else "rf_single"
        forest = rows[(rows["experiment"] == row["experiment"]) & (rows["train_size"] == row["train_size"])
                      & (rows["model"] == forest_name)]
        coverage, nll, constant = (_value(row, c) for c in ("m_coverage", "m_nll", "m_nll_constant"))
        ours, theirs = _value(row, "m_spearman"), (_value(forest.iloc[0], "m_spearman") if len(forest) else math.nan)
        out.append({"experiment": row["experiment"], "regime": row["regime"], "train_size": row["train_size"],
                    "model": row["model"], "folds": int(row["n_folds"]), "coverage": coverage,
                    "coverage_ok": 0.85 <= coverage <= 0.95, "nll": nll, "nll_constant": constant,
                    "nll_ok": nll < constant, "spearman": ours, "forest": forest_name, "forest_spearman": theirs,
                    "spearman_ok": ours >= theirs})
    return pd.DataFrame(out)


def spearman_on_same_errors(results: str | Path, experiment: str, model: str, forest: str, size: str) -> float:
    """Mean over folds of Spearman(|error of ``model``|, the per-tree spread of ``forest``) on the same test
    crystals: how well the forest's spread ranks *this model's* errors (beside ``model``'s own σ). NaN without
    both cells' predictions."""
    from scipy.stats import spearmanr

    values = []
    for ours in sorted(Path(results, experiment, model).glob(f"fold*_n{size}_s*.predictions.csv")):
        theirs = Path(results, experiment, forest, ours.name)
        if not theirs.is_file():
            continue
        a, b = pd.read_csv(ours, dtype={"id": str}), pd.read_csv(theirs, dtype={"id": str})
        both = a.merge(b[["id", "y_std"]], on="id", suffixes=("", "_forest"))
        if len(both) > 2:
            values.append(spearmanr((both["y_true"] - both["y_pred"]).abs(), both["y_std_forest"])[0])
    return float(np.mean(values)) if values else math.nan


def targets_section(summary: pd.DataFrame, results: str | Path | None = None) -> str:
    """Markdown: the issue's targets per ensemble row (see :func:`target_rows`) and how many are met."""
    rows = target_rows(summary)
    if rows.empty:
        return ""
    mark = {True: "yes", False: "**no**"}
    lines = ["### Uncertainty targets (issue 17): the ensembles against their targets", "",
             "Spearman: the ensemble's σ against its own errors vs the composition forest's per-tree spread against "
             "the forest's own errors (the issue's check); last column: the forest's spread against the ensemble's "
             "errors, on the same crystals (which σ ranks the ensemble's errors better).", "",
             "| experiment | regime | N | model | folds | coverage 90 % (0.85–0.95) | NLL < constant σ | "
             "Spearman ≥ composition forest's | forest's σ on the ensemble's errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows.itertuples():
        same = spearman_on_same_errors(results, r.experiment, r.model, r.forest, r.train_size) if results else math.nan
        lines.append(f"| {r.experiment} | {REGIMES.get(r.regime, r.regime)} | {r.train_size} | {r.model} | {r.folds} "
                     f"| {r.coverage:.3f} {mark[bool(r.coverage_ok)]} | {r.nll:.3f} vs {r.nll_constant:.3f} "
                     f"{mark[bool(r.nll_ok)]} | {r.spearman:.3f} vs {r.forest_spearman:.3f} ({r.forest}) "
                     f"{mark[bool(r.spearman_ok)]} | {same:.3f} |")
    met = {k: int(rows[f"{k}_ok"].sum()) for k in ("coverage", "nll", "spearman")}
    lines += ["", f"Met: coverage {met['coverage']} of {len(rows)}, NLL {met['nll']} of {len(rows)}, Spearman "
                  f"{met['spearman']} of {len(rows)}."]
    return "\n".join(lines)


def uncertainty_section(summary: pd.DataFrame, results: str | Path | None = None) -> str:
    """Markdown: the targets (:func:`targets_section`; with the ``results`` folder also the forests' spread on the
    ensembles' errors), then the uncertainty figures of every model that has them, forests as the baseline rows."""
    rows = uncertainty_rows(summary)
    if rows.empty:
        return ""
    targets = targets_section(summary, results)
    lines = ([targets, ""] if targets else []) + [
             "### Uncertainty: calibrated ensembles vs the forests' per-tree spread (same folds)", "",
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


__all__ = ["COLUMNS", "spearman_on_same_errors", "target_rows", "targets_section", "uncertainty_rows", "uncertainty_section"]
