"""The error models of an ensemble (tlgnn.training.calibrate.fit_task_error_model): which rows stop them, and
how those held-out rows join the calibration when the validation split is small."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlgnn.data import TaskSpec
from tlgnn.models import build_model
from tlgnn.models.boosting import MIN_STOPPING_ROWS
from tlgnn.training.calibrate import (ERROR_MODEL_STOPPING_SHARE, calibrate_task, fit_task_error_model,
                                     held_out_calibration_rows)
from tlgnn.uncertainty import uncertainty_metrics
from tlgnn.uncertainty.calibration import MIN_ROWS_PER_COMPONENT

TASKS = [TaskSpec("gap_hse", unit="eV", fidelity="hse")]


def _head():
    torch.manual_seed(0)
    return build_model({"name": "cgcnn", "hidden_channels": 16, "num_layers": 2, "out_channels": 24},
                       {"name": "single", "task": "gap_hse", "hidden": [16]}, TASKS,
                       {"members": 3, "bootstrap": True}).head


def _rows(n: int, seed: int):
    """Features [n, 4], labels and an out-of-bag mean whose |error| grows with feature 0 (heteroscedastic)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = rng.normal(size=n) * 3.0
    return x, y, y + rng.normal(size=n) * np.exp(x[:, 0])


def test_few_validation_labels_leave_the_stopping_to_held_out_training_rows():
    """N = 100 in the benchmark: 10 validation crystals stopped the error model after a tree or two, and then
    calibrated it. With fewer than MIN_STOPPING_ROWS it stops on a fixed fifth of its own rows instead, and the
    model it learns still ranks the errors of new rows; with enough validation labels those stop it."""
    x, y, oob = _rows(400, 0)
    xv, yv, mv = _rows(10, 1)
    few = fit_task_error_model(_head(), "gap_hse", x, y, oob, xv, yv, mv)
    held = int(400 * ERROR_MODEL_STOPPING_SHARE)
    assert few["n_val"] == held and few["n_train"] == 400 - held and few["best_iteration"] > 10
    xv, yv, mv = _rows(MIN_STOPPING_ROWS, 2)
    head = _head()
    many = fit_task_error_model(head, "gap_hse", x, y, oob, xv, yv, mv)
    assert many["n_val"] == MIN_STOPPING_ROWS and many["n_train"] == 400
    xt, yt, mt = _rows(300, 3)
    sigma = head.error_std("gap_hse", torch.as_tensor(xt), torch.as_tensor(mt)).numpy()
    assert np.corrcoef(np.argsort(np.argsort(sigma)), np.argsort(np.argsort(np.abs(yt - mt))))[0, 1] > 0.3


def test_held_out_training_rows_join_a_small_validation_split_in_the_calibration():
    """SCAN N = 100, fold 4: its 10 validation crystals had small errors, the scale fitted on them alone made the
    90 % interval cover 0.49 of the test crystals. The error model's held-out out-of-bag rows (fitted by neither
    it nor their out-of-bag members) now calibrate beside them; the constant-σ baseline stays the validation one."""
    x, y, oob = _rows(400, 0)
    head = _head()
    fitted = fit_task_error_model(head, "gap_hse", x, y, oob, *_rows(10, 1))
    held = fitted["held_out"]
    assert len(held) == int(400 * ERROR_MODEL_STOPPING_SHARE) == len(set(held.tolist()))
    spread = np.abs(np.random.default_rng(4).normal(size=400)) * 0.1
    rows = held_out_calibration_rows(head, "gap_hse", held, x, y, {"gap_hse": oob}, spread)
    expected = head.error_std("gap_hse", torch.as_tensor(x[held]), torch.as_tensor(oob[held])).numpy()
    assert np.allclose(rows["std_error"], expected) and np.array_equal(rows["y"], y[held])
    assert np.array_equal(rows["mean"], oob[held]) and np.array_equal(rows["std_raw"], spread[held])

    # ten validation rows whose errors happen to be the smallest of 200 (as on that fold)
    xv, yv, mv = _rows(200, 5)
    small = np.argsort(np.abs(yv - mv))[:10]
    xv, yv, mv = xv[small], yv[small], mv[small]
    xt, yt, mt = _rows(1000, 6)
    tensor = torch.as_tensor

    def coverage(extra):
        values = calibrate_task(head, "gap_hse", yv, mv, np.zeros(10),
                                head.error_std("gap_hse", tensor(xv), tensor(mv)).numpy(), extra)
        error_t = head.error_std("gap_hse", tensor(xt), tensor(mt))
        got = head.interval("gap_hse", tensor(mt), torch.zeros(1000, dtype=torch.float64), error_t)
        figures = uncertainty_metrics(yt, mt, got["std"].numpy(), got["lower"].numpy(), got["upper"].numpy())
        return figures["coverage"], values["constant_sigma"]

    alone, sigma_alone = coverage(None)
    both, sigma_both = coverage(rows)
    assert alone < 0.7 and 0.8 < both < 0.97
    # 10 + 80 rows, but the components' weights are the validation rows' call: 10 give one common scale
    assert len(rows["y"]) + 10 >= MIN_ROWS_PER_COMPONENT
    stored = head.calibration_of("gap_hse")
    assert stored["scale"] == stored["error_scale"]
    assert sigma_both == sigma_alone == pytest.approx(float(np.sqrt(np.mean((yv - mv) ** 2))), rel=1e-6)
