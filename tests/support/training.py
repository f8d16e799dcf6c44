"""Tiny run configurations on the shipped Materials Project sample, one per head kind, for the training tests."""

from __future__ import annotations

import copy
from pathlib import Path

from support.paths import ROOT

SAMPLE = ROOT / "configs" / "data" / "mp_sample.yaml"
TINY_ENCODER = {"name": "cgcnn", "hidden_channels": 16, "num_layers": 1, "out_channels": 16}


def deep_update(base: dict, extra: dict) -> dict:
    """Merge ``extra`` into ``base`` in place, nested dicts key by key; returns ``base``."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def raw_config(out: Path, cache_dir: Path, head: dict, tasks: list[str], **extra) -> dict:
    """A two-epoch CPU run config (raw dict) on the shipped sample writing to ``out``; ``extra`` is merged in."""
    raw = {
        "data": {
            "sources": str(SAMPLE),
            "tasks": tasks,
            "cache_dir": str(cache_dir),
            "batch_size": 16,
            "split": {"kind": "random", "val_fraction": 0.15, "test_fraction": 0.15, "seed": 0},
        },
        "model": {"encoder": dict(TINY_ENCODER), "head": head},
        "optim": {"lr": 5e-3, "scheduler": "none"},
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "limit_train_batches": 4,
            "limit_val_batches": 2,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "deterministic": True,
            "log_every_n_steps": 1,
            "early_stopping": {"patience": None},
        },
        "output_dir": str(out),
    }
    return deep_update(raw, copy.deepcopy(extra))


# head kind -> (head config, tasks it trains on)
HEADS = {
    "single": ({"name": "single", "task": "gap_hse", "hidden": [16]}, ["gap_hse"]),
    "multitask": ({"name": "multitask", "hidden": [16], "weighting": "uncertainty"},
                  ["gap_pbe_mf", "gap_hse", "is_metal_exp"]),
    "difference": ({"name": "difference", "chain": ["gap_pbe_mf", "gap_hse"], "hidden": [16]},
                   ["gap_pbe_mf", "gap_hse"]),
    "fidelity": ({"name": "fidelity", "embedding_dim": 4, "hidden": [16]}, ["gap_pbe_mf", "gap_hse", "gap_gllbsc"]),
    "elv": ({"name": "elv", "latents": ["gap_pbe_mf", "delta"], "hidden": [16],
             "expressions": {"gap_hse": "relu(s * gap_pbe_mf + delta)"}, "parameters": {"s": 1.0}},
            ["gap_pbe_mf", "gap_hse"]),
}
