"""Per-task evaluation metrics over the masked predictions of a whole epoch.

:class:`TaskMetrics` is a ``torchmetrics.Metric`` whose states are the present (label, prediction) pairs of
each task, concatenated over the epoch's batches and, under DDP, gathered over all ranks (``dist_reduce_fx=
"cat"``) before :meth:`TaskMetrics.compute` — so MAE, RMSE, R², accuracy, F1 and ROC-AUC are those of the
whole validation/test set, not an average of per-batch or per-rank values.

Regression metrics (:func:`tlgnn.training.scores.regression_metrics`, the one regression scorer) are in the
task's physical unit (the head outputs physical units). Classification: accuracy;
F1 of class index 1 for two classes, macro F1 otherwise; ROC-AUC of class 1 (two classes) or macro one-vs-rest.
A metric that is undefined for the data (R² with < 2 labels or constant labels, ROC-AUC with one class present)
is NaN rather than a misleading number.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from tlgnn.data.tasks import TaskSpec
from tlgnn.training.scores import regression_metrics

REGRESSION_METRICS = ("mae", "rmse", "r2")
CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc")


def _binary_auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC-AUC by the rank-sum (Mann-Whitney) formula, ties counted half; NaN with one class only."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = torch.argsort(score, stable=True)
    sorted_scores = score[order]
    ranks = torch.empty_like(score, dtype=torch.float64)
    # average ranks over ties
    unique, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1.0) / 2.0
    ranks[order] = avg[inverse]
    rank_sum = ranks[positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _f1(pred: torch.Tensor, target: torch.Tensor, cls: int) -> float:
    tp = int(((pred == cls) & (target == cls)).sum())
    fp = int(((pred == cls) & (target != cls)).sum())
    fn = int(((pred != cls) & (target == cls)).sum())
    return 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else math.nan


def classification_metrics(probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Accuracy, F1 and ROC-AUC of class probabilities ``probs`` [n, C] against class indices ``target`` [n]."""
    target = target.long().reshape(-1)
    n, num_classes = probs.shape[0], probs.shape[1]
    if n == 0:
        return {"accuracy": math.nan, "f1": math.nan, "roc_auc": math.nan}
    probs = probs.double()
    pred = probs.argmax(dim=1)
    accuracy = (pred == target).double().mean().item()
    if num_classes == 2:
        f1 = _f1(pred, target, 1)
        auc = _binary_auc(probs[:, 1], target == 1)
    else:
        f1s = [_f1(pred, target, c) for c in range(num_classes) if bool((target == c).any() | (pred == c).any())]
        f1 = sum(f1s) / len(f1s) if f1s else math.nan
        aucs = [_binary_auc(probs[:, c], target == c) for c in range(num_classes)]
        aucs = [a for a in aucs if not math.isnan(a)]
        auc = sum(aucs) / len(aucs) if aucs else math.nan
    return {"accuracy": accuracy, "f1": f1, "roc_auc": auc}


class TaskMetrics(Metric):
    """Collects each task's present labels and predictions over an epoch (all ranks) and scores them.

    ``update(preds, y, y_mask)`` takes the head's outputs (regression [B] physical units, classification
    logits [B, C]) and the batch labels/mask [B, T]. ``compute()`` returns ``{task: {metric: value, "n": count}}``.
    ``gathered()`` returns the concatenated ``{task: (pred, target)}`` (classification ``pred`` = probabilities).
    """

    full_state_update = False

    def __init__(self, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        for i, _ in enumerate(self.tasks):
            self.add_state(f"pred_{i}", default=[], dist_reduce_fx="cat")
            self.add_state(f"target_{i}", default=[], dist_reduce_fx="cat")

    def update(self, preds: Mapping[str, torch.Tensor], y: torch.Tensor, y_mask: torch.Tensor) -> None:
        mask = y_mask.bool()
        for i, task in enumerate(self.tasks):
            if task.name not in preds:
                continue
            present = mask[:, i]
            pred = preds[task.name].detach()[present].float()
            if task.kind == "classification":
                pred = torch.softmax(pred, dim=-1)
            else:
                pred = pred.reshape(-1)
            # always append (possibly empty) tensors so every rank holds a state to gather
            getattr(self, f"pred_{i}").append(pred)
            getattr(self, f"target_{i}").append(y[present, i].detach().float())

    def _cat(self, name: str, task: TaskSpec) -> torch.Tensor:
        state = getattr(self, name)
        if isinstance(state, list):
            if not state:
                width = (0, task.num_classes) if task.kind == "classification" and name.startswith("pred") else (0,)
                return torch.zeros(width, device=self.device)
            return dim_zero_cat(state)
        return state

    def gathered(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{task: (pred, target)}`` concatenated over the epoch (and ranks, once synced)."""
        return {
            task.name: (self._cat(f"pred_{i}", task), self._cat(f"target_{i}", task))
            for i, task in enumerate(self.tasks)
        }

    def compute(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, (pred, target) in self.gathered().items():
            task = next(t for t in self.tasks if t.name == name)
            if task.kind == "classification":
                scores = classification_metrics(pred.reshape(-1, task.num_classes), target)
            else:
                scored = regression_metrics(y_true=target, y_pred=pred)
                scores = {name: scored[name] for name in REGRESSION_METRICS}
            scores["n"] = int(target.numel())
            out[name] = scores
        return out


__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "TaskMetrics",
    "classification_metrics",
    "regression_metrics",
]
