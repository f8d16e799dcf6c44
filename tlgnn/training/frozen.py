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

import numpy as np
import torch

from tlgnn.embeddings import cached_embeddings
from tlgnn.models.ensemble import is_ensemble


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
    encoder when the run allows it (see the module docstring); returns whether it did. A head that is fitted
    directly (a tree head) needs it: :class:`~tlgnn.utils.config.ConfigError` if the encoder is not frozen."""
    direct = bool(getattr(module.model.head, "fits_directly", False))
    if direct and not encoder_frozen_throughout(module):
        from tlgnn.utils.config import ConfigError

        raise ConfigError("model.finetune.freeze", f"a {module.hparams['model']['head']['name']} head is fitted on "
                                                   "a frozen encoder's embeddings: set model.finetune.freeze: encoder "
                                                   "(without unfreeze_every)")
    if not ((config.model.cache_embeddings or direct) and encoder_frozen_throughout(module)):
        return False
    if not hasattr(dm, "use_embeddings") or getattr(dm, "embedded", False):
        return bool(getattr(dm, "embedded", False))
    from tlgnn.data.loader import graph_loader

    keys = [str(k) for k in dm.table.frame["structure_key"].tolist()]
    dataset = dm.dataset

    def loader_for(rows: Any) -> Any:
        return graph_loader(dataset.subset(rows), batch_size=max(int(config.data.batch_size), 64), shuffle=False)

    embeddings, counts = cached_embeddings(module.model.encoder, module.hparams["model"]["encoder"],
                                           module.hparams["graph"], keys, loader_for,
                                           Path(config.data.cache_dir).expanduser() / "embeddings",
                                           embedding_device(config))
    dm.use_embeddings(embeddings, counts)
    print(f"tlgnn: the encoder is frozen: the head trains on {len(keys)} stored embeddings "
          f"({embeddings.shape[1]} wide); model.cache_embeddings: false runs the encoder every batch", file=sys.stderr)
    return True


def head_arrays(module: Any, loader: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(inputs [n, f], y [n, T], y_mask [n, T], idx [n])`` of a directly fitted head (``head.tree_inputs``: the
    stored embedding and the head's context; ``idx``: the rows' table index) over every batch of ``loader``."""
    from tlgnn.embeddings import encoded_batches

    head = module.model.head
    xs, ys, masks, rows = [], [], [], []
    for batch, enc in encoded_batches(module.model, loader, module.device):
        xs.append(head.tree_inputs(enc, batch).float().cpu().numpy())
        ys.append(batch.y.float().cpu().numpy())
        masks.append(batch.y_mask.bool().cpu().numpy())
        rows.append(batch.idx.reshape(-1).cpu().numpy())
    n_tasks = len(module.tasks)
    if not xs:
        return (np.zeros((0, 0), np.float32), np.zeros((0, n_tasks), np.float32), np.zeros((0, n_tasks), bool),
                np.zeros(0, np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(masks), np.concatenate(rows)


def fit_head_directly(module: Any, dm: Any) -> dict[str, Any]:
    """Fit a head that is not trained by gradient steps (``head.fits_directly``, e.g. the tree head) on the
    training split's stored embeddings, validated on the validation split; returns the head's fit history."""
    module.eval()
    x, y, mask, idx = head_arrays(module, dm.train_dataloader())
    x_val, y_val, mask_val, _ = head_arrays(module, dm.val_dataloader())
    head = module.model.head
    rows = {"idx": idx} if is_ensemble(head) else {}  # an ensemble's bootstrap rows
    history = head.fit_arrays(x, y, mask, x_val, y_val, mask_val, **rows)
    print(f"tlgnn: {module.hparams['model']['head']['name']} head fitted on {len(x)} training rows "
          f"({x.shape[1]} inputs), validated on {len(x_val)}", file=sys.stderr)
    return dict(history or {})


__all__ = ["attach_cached_embeddings", "embedding_device", "encoder_frozen_throughout", "fit_head_directly",
           "head_arrays"]
