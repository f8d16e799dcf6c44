"""The benchmark's headline table: the best tlgnn model against the best forest on the same folds."""

from __future__ import annotations

import pandas as pd

from tlgnn.benchmark.best import best_rows, best_section


def _row(model, kind, regime, size, mae=None, auc=None, folds=5, task_kind="regression", experiment="hse"):
    return {"experiment": experiment, "model": model, "kind": kind, "regime": regime, "task_kind": task_kind,
            "train_size": size, "m_mae_mean": mae, "m_roc_auc_mean": auc, "n_folds": folds}


def test_best_model_per_setting_lower_mae_and_higher_auc_win():
    summary = pd.DataFrame([
        _row("gnn_single", "gnn_single", "structure_only", "50", mae=0.9),
        _row("emb_tree", "gnn_difference", "structure_only", "50", mae=0.6),
        _row("emb_partial", "gnn_single", "structure_only", "50", mae=0.1, folds=2),  # not on every fold
        _row("rf_single", "rf_single", "structure_only", "50", mae=0.7),
        _row("rf_difference", "rf_difference", "structure_only", "50", mae=0.65),
        _row("affine_lowknown", "affine", "low_fidelity_known", "all", mae=0.1),  # no forest here: no row
        _row("gnn_single", "gnn_single", "structure_only", "all", auc=0.90, task_kind="classification",
             experiment="metal"),
        _row("rf_single", "rf_single", "structure_only", "all", auc=0.95, task_kind="classification",
             experiment="metal"),
    ])
    rows = best_rows(summary).set_index("experiment")
    assert list(rows.index) == ["hse", "metal"]
    hse = rows.loc["hse"]
    assert (hse["tlgnn"], hse["forest"], hse["wins"]) == ("emb_tree", "rf_difference", True)
    metal = rows.loc["metal"]
    assert (metal["tlgnn"], metal["forest"], metal["wins"]) == ("gnn_single", "rf_single", False)
    text = best_section(summary)
    assert "| hse | structure only | 50 | mae | emb_tree 0.600 (5) | rf_difference 0.650 | yes |" in text
    assert "beats the best forest in 1 of 2" in text
