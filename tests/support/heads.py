"""Head configurations over three band-gap fidelities and a metal class, on the real batches of ``structures``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tlgnn.data import TaskSpec
from tlgnn.models import TransferModel, build_encoder, build_head

GAPS = [
    TaskSpec("gap_pbe", unit="eV", fidelity="pbe"),
    TaskSpec("gap_hse", unit="eV", fidelity="hse"),
    TaskSpec("gap_scan", unit="eV", fidelity="scan"),
]
METAL = TaskSpec("is_metal", kind="classification", classes=["metal", "non-metal"])
TASKS = [*GAPS, METAL]

HEAD_CONFIGS = {
    "single": {"task": "gap_hse"},
    "multitask": {},
    "difference": {"chain": ["gap_pbe", "gap_hse", "gap_scan"]},
    "fidelity": {},
    "elv": {"latents": ["gap_pbe", "shift"], "parameters": {"a": 1.0},
            "expressions": {"gap_hse": "gap_pbe + softplus(shift)", "gap_scan": "a * gap_pbe + 0.3"}},
}
EXPECTED_KEYS = {
    "single": {"gap_hse"},
    "multitask": {"gap_pbe", "gap_hse", "gap_scan", "is_metal"},
    "difference": {"gap_pbe", "gap_hse", "gap_scan"},
    "fidelity": {"gap_pbe", "gap_hse", "gap_scan"},
    "elv": {"gap_pbe", "gap_hse", "gap_scan"},
}


def model_for(head: str, seed: int = 0, **options) -> TransferModel:
    """A seeded small CGCNN encoder with head ``head`` over :data:`TASKS` (``HEAD_CONFIGS[head]`` + ``options``)."""
    torch.manual_seed(seed)
    enc = build_encoder("cgcnn", hidden_channels=16, num_layers=2, out_channels=24)
    return TransferModel(enc, build_head(head, enc.out_dim, TASKS, hidden=[16], **{**HEAD_CONFIGS[head], **options}))


def masked_mse(preds, batch, tasks=TASKS):
    """Plain loss for the tests: MSE over present regression labels, CE over present class labels."""
    total = 0.0
    for k, t in enumerate(tasks):
        if t.name not in preds:
            continue
        present = batch.y_mask[:, k]
        if not present.any():
            continue
        if t.kind == "classification":
            total = total + F.cross_entropy(preds[t.name][present], batch.y[present, k].long())
        else:
            total = total + ((preds[t.name][present] - batch.y[present, k]) ** 2).mean()
    return total
