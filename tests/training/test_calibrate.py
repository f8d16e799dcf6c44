"""The error models of an ensemble (tlgnn.training.calibrate.fit_task_error_model): which rows stop them."""

from __future__ import annotations

import numpy as np
import torch

from tlgnn.data import TaskSpec
from tlgnn.models import build_model
from tlgnn.models.boosting import MIN_STOPPING_ROWS
from tlgnn.training.calibrate import ERROR_MODEL_STOPPING_SHARE, fit_task_error_model

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
