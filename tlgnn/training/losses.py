"""The one masked loss every head uses: per-task losses over present labels only.

A missing label (``y_mask`` False) is never compared with anything: predictions are *selected* at the present
positions before any arithmetic, so a missing label contributes exactly zero loss and exactly zero gradient,
even when the prediction there is NaN or infinite. A task with no label in the batch is left out of the
returned dict (rather than contributing a 0/0 = NaN mean).
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch
import torch.nn.functional as F

from tlgnn.data.tasks import TaskSpec

RegressionLoss = Literal["mse", "huber", "l1"]


def _regression_loss(
    pred: torch.Tensor, target: torch.Tensor, std: float, kind: RegressionLoss, huber_delta: float
) -> torch.Tensor:
    """Mean loss between ``pred`` and ``target`` (both [n], physical units) in units of ``std``."""
    error = (pred - target) / std
    if kind == "mse":
        return error.pow(2).mean()
    if kind == "l1":
        return error.abs().mean()
    if kind == "huber":
        return F.huber_loss(error, torch.zeros_like(error), delta=huber_delta)
    raise ValueError(f"unknown regression loss {kind!r}; use 'mse', 'huber' or 'l1'")


def masked_loss(
    preds: Mapping[str, torch.Tensor],
    y: torch.Tensor,
    y_mask: torch.Tensor,
    tasks: Sequence[TaskSpec],
    std: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
    regression: RegressionLoss = "mse",
    huber_delta: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-task losses over the labels present in the batch.

    Args:
        preds: ``{task: prediction}``; regression [B] in physical units, classification logits [B, C].
        y: labels [B, T] in the order of ``tasks`` (class index for classification; any value where missing).
        y_mask: bool [B, T], True where the label is present.
        tasks: the task descriptions, column order of ``y``.
        std: per-task standard deviation of the regression targets on the training split (physical units);
            regression errors are divided by it so that tasks of different scale weigh alike. Default 1.
        weights: optional per-task multipliers (default 1).
        regression: ``"mse"`` (default), ``"huber"`` or ``"l1"`` on the standardised error.
        huber_delta: Huber threshold in units of ``std``.

    Returns:
        ``{task: scalar loss}`` for each task with at least one present label; tasks without a label in the
        batch (or without a prediction) are absent.
    """
    if y.dim() == 1:
        y = y.unsqueeze(1)
        y_mask = y_mask.unsqueeze(1)
    if y.shape != y_mask.shape or y.shape[1] != len(tasks):
        raise ValueError(
            f"masked_loss: y {tuple(y.shape)} and y_mask {tuple(y_mask.shape)} must both be [B, {len(tasks)}]"
        )
    mask = y_mask.bool()
    losses: dict[str, torch.Tensor] = {}
    for col, task in enumerate(tasks):
        if task.name not in preds:
            continue
        present = mask[:, col]
        if not bool(present.any()):
            continue
        pred = preds[task.name][present]
        target = y[present, col]
        if task.kind == "classification":
            loss = F.cross_entropy(pred.float(), target.long())
        else:
            scale = float(std.get(task.name, 1.0)) if std else 1.0
            if not scale > 0:
                scale = 1.0
            loss = _regression_loss(pred.float().reshape(-1), target.float(), scale, regression, huber_delta)
        if weights and task.name in weights:
            loss = loss * float(weights[task.name])
        losses[task.name] = loss
    return losses


__all__ = ["RegressionLoss", "masked_loss"]
