"""The headline of the transfer benchmark: per experiment, regime and training size, the best tlgnn model against
the best random forest (the paper's own model class), on the same folds.

tlgnn models are the ``gnn_*`` kinds (graph networks trained from scratch, fine-tuned, or heads on a frozen
encoder's embeddings, the ``emb_*`` entries); forests are the ``rf_*`` kinds. Regression is compared on the mean MAE
over folds (lower is better), classification on the mean ROC-AUC (higher is better).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REGIMES = {"structure_only": "structure only", "low_fidelity_known": "low fidelity known"}


def _metric(task_kind: str) -> tuple[str, bool]:
    """``(summary column, higher is better)`` of the headline metric of a task kind."""
    return ("m_roc_auc_mean", True) if task_kind == "classification" else ("m_mae_mean", False)


def best_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, regime, train_size) with both a tlgnn model and a forest: ``tlgnn``/``tlgnn_value``
    (the best tlgnn model and its mean metric), ``forest``/``forest_value``, ``metric``, ``folds`` (of the tlgnn
    model) and ``wins`` (whether tlgnn is better)."""
    out = []
    for (experiment, regime, size), group in summary.groupby(["experiment", "regime", "train_size"], dropna=False):
        column, higher = _metric(str(group["task_kind"].iloc[0]))
        if column not in group:
            continue
        group = group[np.isfinite(group[column].astype(float))]
        group = group[group["n_folds"] == group["n_folds"].max()]  # models run on every fold only: a fair mean
        ours = group[group["kind"].astype(str).str.startswith("gnn_")]
        forests = group[group["kind"].astype(str).str.startswith("rf_")]
        if ours.empty or forests.empty:
            continue
        pick = (lambda g: g.loc[g[column].astype(float).idxmax()]) if higher else \
            (lambda g: g.loc[g[column].astype(float).idxmin()])
        a, b = pick(ours), pick(forests)
        wins = a[column] > b[column] if higher else a[column] < b[column]
        out.append({"experiment": experiment, "regime": regime, "train_size": str(size), "metric": column[2:-5],
                    "tlgnn": a["model"], "tlgnn_value": float(a[column]), "folds": int(a["n_folds"]),
                    "forest": b["model"], "forest_value": float(b[column]), "wins": bool(wins)})
    return pd.DataFrame(out)


def _size_order(size: str) -> float:
    return float("inf") if size == "all" else float(size)


def best_section(summary: pd.DataFrame) -> str:
    """Markdown: the best tlgnn model vs the best forest for every (experiment, regime, training size)."""
    rows = best_rows(summary)
    if rows.empty:
        return ""
    rows = rows.assign(order=rows["train_size"].map(_size_order)).sort_values(["experiment", "regime", "order"])
    lines = ["### Best tlgnn model vs best forest (same folds)", "",
             "| experiment | regime | N | metric | best tlgnn model | best forest | tlgnn better |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows.itertuples():
        lines.append(f"| {r.experiment} | {REGIMES.get(r.regime, r.regime)} | {r.train_size} | {r.metric} | "
                     f"{r.tlgnn} {r.tlgnn_value:.3f} ({r.folds}) | {r.forest} {r.forest_value:.3f} | "
                     f"{'yes' if r.wins else '**no**'} |")
    won = int(rows["wins"].sum())
    lines += ["", f"tlgnn's best model beats the best forest in {won} of {len(rows)} (experiment, regime, N) "
                  "settings; (k): folds averaged."]
    return "\n".join(lines)


__all__ = ["best_rows", "best_section"]
