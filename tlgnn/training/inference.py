"""The one inference loop: a trained module over a loader of PyG batches -> numpy arrays.

Every caller that needs a model's outputs for many structures uses :func:`predict_batches`: the test split of
``fit``/``test`` (``predictions_test.csv``), :class:`tlgnn.training.predict.Predictor` (``tlgnn predict``,
``tlgnn.load_model``), the benchmark's GNN cells and the scripts. Each batch goes through the encoder's
host-side checks (``Encoder.prepare_batch``, as in training), then to the module's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from tlgnn.data.tasks import TaskSpec
from tlgnn.embeddings.compute import encoded_batches
from tlgnn.models.ensemble import UNCERTAINTY_KEYS, is_ensemble


@dataclass
class Inference:
    """What :func:`predict_batches` collected, one row per graph in loader order.

    ``preds``: ``{task: array}`` for the tasks the head outputs: regression [n] in physical units,
    classification probabilities [n, C]. ``y`` / ``mask``: the batches' labels [n, T] and label masks (zeros /
    all False where the batches carry none). ``extras``: the head's :meth:`~tlgnn.models.heads.base.Head.extras`
    (``{name: [n]}``) when asked for. ``embeddings``: graph embeddings [n, d] when asked for.
    ``uncertainty`` (an ensemble, :mod:`tlgnn.models.ensemble`): regression ``<task>_std`` (calibrated),
    ``<task>_std_raw`` (the members' spread), ``<task>_std_error`` (the error model's σ, if it has one),
    ``<task>_lower`` / ``<task>_upper`` (the calibrated central interval) [n], physical units; classification ``<task>_std`` [n, C] (spread of the class probabilities).
    ``members``: ``{task: [k, n(, C)]}`` the members' own predictions (an ensemble only).
    """

    ids: list[str]
    preds: dict[str, np.ndarray]
    y: np.ndarray
    mask: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    uncertainty: dict[str, np.ndarray] = field(default_factory=dict)
    members: dict[str, np.ndarray] = field(default_factory=dict)


def task_predictions(tasks: Sequence[TaskSpec], out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a user reads from the model's outputs ``out``, for the tasks present in it: regression values [B]
    as float32 in physical units, classification probabilities [B, C] (softmax of the logits)."""
    preds: dict[str, torch.Tensor] = {}
    for task in tasks:
        if task.name in out:
            value = out[task.name].float()
            preds[task.name] = torch.softmax(value, dim=-1) if task.kind == "classification" else value
    return preds


def _batch_ids(batch: Any) -> list[str]:
    """Row ids of a batch: ``material_id`` (tables), ``id`` (structures), else the table row ``idx``, else
    positions."""
    for name in ("material_id", "id"):
        values = getattr(batch, name, None)
        if isinstance(values, (list, tuple)):
            return [str(v) for v in values]
    idx = getattr(batch, "idx", None)
    if isinstance(idx, torch.Tensor):
        return [str(int(i)) for i in idx.reshape(-1).cpu()]
    return [""] * int(batch.num_graphs)


def _labels(batch: Any, n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    y, mask = getattr(batch, "y", None), getattr(batch, "y_mask", None)
    if y is None or mask is None:
        n = int(batch.num_graphs)
        return np.zeros((n, n_tasks), np.float32), np.zeros((n, n_tasks), bool)
    return y.float().cpu().numpy(), mask.bool().cpu().numpy()


def _empty(tasks: Sequence[TaskSpec], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    by_name = {t.name: t for t in tasks}
    return {name: np.zeros((0, by_name[name].num_classes) if by_name[name].kind == "classification" else (0,),
                           np.float32) for name in outputs}


@torch.no_grad()
def predict_batches(module: Any, loader: Iterable[Any], *, extras: bool = False, embed: bool = False,
                    predict: bool = True) -> Inference:
    """Run ``module`` (a :class:`~tlgnn.training.module.TransferModule`) over ``loader`` in eval mode (its former
    mode is restored afterwards) on the module's device.

    Args:
        module: the trained module.
        loader: PyG batches (any iterable: ``graph_loader``, a PyG ``DataLoader``, a list of batches).
        extras: also collect the head's extra outputs (``head.extras``: the difference head's Δ, ELV latents).
        embed: also collect graph embeddings [n, d].
        predict: run the head (``False`` with ``embed=True``: embeddings only).
    """
    was_training = module.training
    module.eval()
    model, tasks = module.model, list(module.tasks)
    device = module.device
    ids: list[str] = []
    preds: dict[str, list[np.ndarray]] = {}
    more: dict[str, list[np.ndarray]] = {}
    embeddings: list[np.ndarray] = []
    ys, masks = [], []
    ensemble = is_ensemble(model.head)
    spread: dict[str, list[np.ndarray]] = {}
    more_u: dict[str, list[np.ndarray]] = {}
    try:
        for batch, enc in encoded_batches(model, loader, device):  # host-side checks, as in training
            if embed:
                embeddings.append(enc.graph_emb.float().cpu().numpy())
            if predict and ensemble:
                for name, item in model.head.uncertainty(enc, batch).items():
                    preds.setdefault(name, []).append(item["mean"].cpu().numpy())
                    spread.setdefault(name, []).append(item["members"].cpu().numpy())
                    for key in UNCERTAINTY_KEYS:
                        if key in item:
                            more_u.setdefault(f"{name}_{key}", []).append(item[key].cpu().numpy())
            elif predict:
                for name, value in task_predictions(tasks, model.head(enc, batch)).items():
                    preds.setdefault(name, []).append(value.cpu().numpy())
            if extras:
                for name, value in model.head.extras(enc, batch).items():
                    more.setdefault(name, []).append(value.float().cpu().numpy())
            y, mask = _labels(batch, len(tasks))
            ys.append(y)
            masks.append(mask)
            ids.extend(_batch_ids(batch))
    finally:
        module.train(was_training)
    n_tasks = len(tasks)
    collected = _empty(tasks, module.outputs) if predict else {}
    collected.update({k: np.concatenate(v) for k, v in preds.items()})
    return Inference(
        ids=ids,
        preds=collected,
        y=np.concatenate(ys) if ys else np.zeros((0, n_tasks), np.float32),
        mask=np.concatenate(masks) if masks else np.zeros((0, n_tasks), bool),
        extras={k: np.concatenate(v) for k, v in more.items()},
        embeddings=(np.concatenate(embeddings) if embeddings else np.zeros((0, model.encoder.out_dim), np.float32))
        if embed else None,
        uncertainty={k: np.concatenate(v) for k, v in more_u.items()},
        members={k: np.concatenate(v, axis=1) for k, v in spread.items()},
    )


__all__ = ["Inference", "predict_batches", "task_predictions"]
