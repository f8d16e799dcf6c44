"""The learning-curve table of a pretrained encoder's model card (tlgnn.training.model_card)."""

from __future__ import annotations

import math

from tlgnn.training.model_card import CURVE_ROWS, _curve_section


def _epoch(i: int) -> dict:
    return {"epoch": i, "train_loss": 1.0 / (i + 1), "val_loss": 2.0 / (i + 1),
            "val_mae": {"gap": 0.5 + 1.0 / (i + 1), "eform": math.nan}}


def test_a_long_curve_is_thinned_evenly_and_always_ends_at_the_last_epoch():
    lines = _curve_section([_epoch(i) for i in range(98)], ["gap", "eform"])
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| epoch")
            and not line.startswith("| ---")]
    epochs = [int(r.split("|")[1]) for r in rows]
    assert epochs[0] == 1 and epochs[-1] == 98  # 1-based, the last epoch shown even off the stride
    assert len(rows) <= CURVE_ROWS + 1 and len(set(b - a for a, b in zip(epochs[:-2], epochs[1:-1]))) == 1
    last = rows[-1].split("|")
    assert last[2].strip() == f"{1 / 98:.4f}" and last[4].strip() == f"{0.5 + 1 / 98:.3f}" and last[5].strip() == "–"


def test_a_short_curve_shows_every_epoch_and_none_gives_no_section():
    lines = _curve_section([_epoch(i) for i in range(3)], ["gap"])
    assert [line.split("|")[1].strip() for line in lines if line[:3] in ("| 1", "| 2", "| 3")] == ["1", "2", "3"]
    assert _curve_section([], ["gap"]) == []
