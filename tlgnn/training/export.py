"""Compact checkpoints for shipping a trained model: fp32 weights and the self-description, no optimiser state.

A compact checkpoint is a regular tlgnn checkpoint (``state_dict`` + the ``"tlgnn"`` section), so
:func:`tlgnn.load_model`, ``tlgnn predict`` and ``model.init_from`` read it like a Lightning one, at a fraction
of the size (no optimiser moments, no loop state). An ``"info"`` section carries free-form provenance
(data, split, metrics, command), shown by :func:`checkpoint_info`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from tlgnn.training.module import CHECKPOINT_KEY, TransferModule, read_checkpoint


def export_checkpoint(module: TransferModule, path: str | Path, info: Mapping[str, Any] | None = None) -> Path:
    """Write ``module`` as a compact checkpoint to ``path`` (atomically); floating weights are stored as fp32.

    Returns the path. ``info`` (JSON-able) is stored under ``"info"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
             for k, v in module.state_dict().items()}
    hparams = {k: v for k, v in dict(module.hparams).items()}
    payload = {
        "state_dict": state,
        CHECKPOINT_KEY: module.describe(),
        "hyper_parameters": hparams,
        "info": dict(info or {}),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The ``"info"`` section of a checkpoint (``{}`` for a Lightning checkpoint)."""
    return dict(read_checkpoint(path).get("info") or {})


__all__ = ["checkpoint_info", "export_checkpoint"]
