"""A frozen encoder's shortcut on the one road: embed each material once, train the head on stored vectors.

:func:`tlgnn.training.run.fit` calls :func:`attach_cached_embeddings` after building the module: when the whole
encoder stays frozen for the whole run (``model.finetune.freeze: encoder`` without gradual unfreezing, and
``model.cache_embeddings``), the data module serves :class:`tlgnn.data.embedded.EmbeddedBatch` objects read from
the embedding cache (:mod:`tlgnn.embeddings`), computed there for the materials it lacks. The module, its
checkpoints and ``predict`` are unchanged: a checkpoint holds the frozen encoder too and predicts from structures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from tlgnn.embeddings import cached_embeddings


def encoder_frozen_throughout(module: Any) -> bool:
    """Whether every encoder layer group of ``module`` is frozen and stays frozen (no gradual unfreezing)."""
    plan = getattr(module, "finetune_plan", None)
    if plan is None:
        return False
    return plan.initial_frozen == plan.n_groups and not plan.config.unfreeze_every


def embedding_device(config: Any) -> torch.device:
    """Where the one-off embedding pass runs: the GPU when the trainer may use one and there is one, else CPU."""
    if config.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def attach_cached_embeddings(config: Any, module: Any, dm: Any) -> bool:
    """Switch ``dm`` (a set-up :class:`tlgnn.data.TransferDataModule`) to stored embeddings of ``module``'s frozen
    encoder when the run allows it (see the module docstring); returns whether it did."""
    if not (config.model.cache_embeddings and encoder_frozen_throughout(module)):
        return False
    if not hasattr(dm, "use_embeddings") or getattr(dm, "embedded", False):
        return bool(getattr(dm, "embedded", False))
    from tlgnn.data.loader import graph_loader

    keys = [str(k) for k in dm.table.frame["structure_key"].tolist()]
    dataset = dm.dataset

    def loader_for(rows: Any) -> Any:
        return graph_loader(dataset.subset(rows), batch_size=max(int(config.data.batch_size), 64), shuffle=False)

    device = embedding_device(config)
    encoder = module.model.encoder
    home = encoder.to(device) if device.type != "cpu" else encoder
    embeddings, counts = cached_embeddings(home, module.hparams["model"]["encoder"], module.hparams["graph"], keys,
                                           loader_for, Path(config.data.cache_dir).expanduser() / "embeddings",
                                           device)
    if device.type != "cpu":
        encoder.to("cpu")
    dm.use_embeddings(embeddings, counts)
    print(f"tlgnn: the encoder is frozen: the head trains on {len(keys)} stored embeddings "
          f"({embeddings.shape[1]} wide); model.cache_embeddings: false runs the encoder every batch", file=sys.stderr)
    return True


__all__ = ["attach_cached_embeddings", "embedding_device", "encoder_frozen_throughout"]
