"""tlgnn.benchmark.finetune_curve, the package side of ``scripts/bench_finetune.py``: the fixed test set never
trains, the nested cells, and one real cell trained through ``tlgnn.training.run.fit`` on the HSE gaps of the
shipped Materials Project sample."""

from __future__ import annotations

import numpy as np
import pytest

from support.paths import ROOT
from tlgnn.benchmark.finetune_curve import CurveSettings, cell_key, cell_rows, done_key, plan, run_cell

SAMPLE = ROOT / "configs" / "data" / "mp_sample.yaml"
ENCODER = {"name": "cgcnn", "atom_fea_len": 16, "n_conv": 1, "h_fea_len": 16}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hse_table(cache_dir):
    from tlgnn.data.config import DataConfig
    from tlgnn.data.datamodule import load_table

    cfg = DataConfig(sources=str(SAMPLE), tasks=["gap_hse"], cache_dir=str(cache_dir))
    table, _ = load_table(cfg)
    return table.subset(np.flatnonzero(table.frame["gap_hse"].notna().to_numpy()))


def test_cells_are_nested_and_never_touch_the_test_rows(hse_table):
    test, pool, cells = plan(hse_table, ["20", "40"], [0, 1], ["scratch", "finetune"])
    assert len(cells) == 8 and {c["size"] for c in cells} == {"20", "40"}
    assert np.intersect1d(test, pool).size == 0 and len(test) + len(pool) == len(hse_table)
    small_train, small_val = cell_rows(hse_table, pool, "20", 0)
    big_train, big_val = cell_rows(hse_table, pool, "40", 0)
    assert len(small_train) + len(small_val) == 20 and len(small_val) >= 5
    assert set(np.concatenate([small_train, small_val])) <= set(np.concatenate([big_train, big_val]))
    assert np.intersect1d(np.concatenate([big_train, big_val]), test).size == 0


def test_one_cell_trains_through_fit_and_scores_the_fixed_test_rows(hse_table, cache_dir, tmp_path):
    settings = CurveSettings(pretrained=str(ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"),
                             out=str(tmp_path), steps=4, min_epochs=2, batch_size=8)
    test, pool, cells = plan(hse_table, ["20"], [0], ["scratch"])
    result = run_cell(cells[0], hse_table, str(cache_dir), test, pool, settings, ENCODER,
                      {"cutoff": 8.0, "max_neighbors": 12})
    assert result["n_test"] == len(test) and result["n_train"] + result["n_val"] == 20
    assert result["epochs"] == result["max_epochs"] == 2 and 0 <= result["best_epoch"] <= 1
    assert result["steps"] == 2 * int(np.ceil(result["n_train"] / 8))
    assert np.isfinite([result["mae"], result["rmse"], result["r2"]]).all() and result["mae"] <= result["rmse"]
    assert result["settings"] == "steps4_bs8_lr0.002_encf0.25_min2" and result["pretrained"] is None
    assert done_key(result) == ("scratch", "20", 0, result["settings"], None)
    assert cell_key(cells[0], settings.key(), "0123456789abcdef") == done_key(result)  # the script's skip test
    assert cell_key({**cells[0], "arm": "finetune"}, settings.key(), "0123456789abcdef")[-1] == "0123456789abcdef"
    assert not (tmp_path / "cells").exists() or not any((tmp_path / "cells").iterdir())  # the cell cleans up
