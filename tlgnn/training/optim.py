"""Optimiser and learning-rate schedule from the ``optim`` config section (see :class:`OptimConfig`)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW (default), Adam or SGD with ``lr``, ``weight_decay`` (and ``momentum`` for SGD)."""
    name = cfg.get("optimizer", "adamw")
    lr = float(cfg.get("lr", 1e-3))
    wd = float(cfg.get("weight_decay", 0.0))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(cfg.get("momentum", 0.9)))
    raise ValueError(f"optim.optimizer: unknown optimizer {name!r}; use adamw, adam or sgd")


def warmup_cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier at optimiser step ``step``: linear warm-up over ``warmup`` steps, then cosine to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant_factor(step: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then 1."""
    return (step + 1) / warmup if warmup > 0 and step < warmup else 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int
) -> dict[str, Any] | None:
    """A Lightning ``lr_scheduler`` dict for ``cfg["scheduler"]`` (``None`` for a constant LR, no warm-up)."""
    kind = cfg.get("scheduler", "cosine")
    lr = float(cfg.get("lr", 1e-3))
    warmup = int(round(float(cfg.get("warmup_epochs", 0.0)) * steps_per_epoch))
    total_steps = max(1, int(total_steps))
    if kind == "none":
        if warmup == 0:
            return None
        fn = lambda step: warmup_constant_factor(step, warmup)  # noqa: E731
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "interval": "step"}
    if kind == "cosine":
        floor = float(cfg.get("min_lr", 0.0)) / lr
        fn = lambda step: warmup_cosine_factor(step, warmup, total_steps, floor)  # noqa: E731
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, fn), "interval": "step"}
    if kind == "onecycle":
        pct = warmup / total_steps if warmup else 0.3
        pct = min(max(pct, 1.0 / total_steps), 0.99)
        peaks = [float(g.get("lr", lr)) for g in optimizer.param_groups]  # per group (fine-tuning: encoder, head)
        sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps, pct_start=pct)
        return {"scheduler": sched, "interval": "step"}
    if kind == "plateau":
        monitor = cfg.get("monitor", "val/loss")
        mode = "max" if monitor.rsplit("/", 1)[-1] in ("r2", "accuracy", "f1", "roc_auc") else "min"
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=mode,
            factor=float(cfg.get("factor", 0.5)),
            patience=int(cfg.get("patience", 5)),
            min_lr=float(cfg.get("min_lr", 0.0)),
        )
        return {"scheduler": sched, "interval": "epoch", "monitor": monitor, "strict": True}
    raise ValueError(f"optim.scheduler: unknown scheduler {kind!r}; use none, cosine, plateau or onecycle")


__all__ = ["build_optimizer", "build_scheduler", "warmup_constant_factor", "warmup_cosine_factor"]
