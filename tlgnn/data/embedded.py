"""Datasets of precomputed graph embeddings: what a head trains on when the encoder is frozen.

A frozen encoder gives every material the same embedding in every epoch, so it runs once per material
(:mod:`tlgnn.embeddings`) and the head trains on the stored vectors. :class:`EmbeddedDataset` serves them with the
labels of a :class:`tlgnn.data.MaterialDataset`, in the same rows, as :class:`EmbeddedBatch` objects that carry
what a head reads from a graph batch: ``graph_emb`` [B, d] (the encoder output), ``element_counts`` [B, 119]
(atoms per element, column = Z: the composition a head with context needs), ``y`` [B, T], ``y_mask`` [B, T],
``idx`` [B] (table rows) and ``material_id``. ``tlgnn.data.loader.graph_loader`` batches it like a graph dataset.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class EmbeddedBatch:
    """A batch of stored embeddings with labels; ``to(device)`` moves its tensors (Lightning calls it).

    A plain class, not a dataclass: Lightning walks dataclasses field by field on every step (batch transfer,
    batch-size lookup), which costs more than the head's whole step.
    """

    __slots__ = ("graph_emb", "element_counts", "y", "y_mask", "idx", "material_id")

    def __init__(self, graph_emb: torch.Tensor, element_counts: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor,
                 idx: torch.Tensor, material_id: list[str]):
        self.graph_emb = graph_emb  # float32 [B, d]
        self.element_counts = element_counts  # float32 [B, 119]
        self.y = y  # float32 [B, T]
        self.y_mask = y_mask  # bool [B, T]
        self.idx = idx  # long [B]
        self.material_id = material_id

    @property
    def num_graphs(self) -> int:
        return int(self.graph_emb.shape[0])

    def _map(self, fn) -> "EmbeddedBatch":
        return EmbeddedBatch(fn(self.graph_emb), fn(self.element_counts), fn(self.y), fn(self.y_mask), fn(self.idx),
                             self.material_id)

    def to(self, device: Any, non_blocking: bool = False) -> "EmbeddedBatch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "EmbeddedBatch":
        return self._map(lambda t: t.pin_memory())


class EmbeddedDataset(Dataset):
    """Stored embeddings of a table's rows with the labels of ``dataset``, serving the same ``rows``.

    Args:
        dataset: the :class:`tlgnn.data.MaterialDataset` whose labels, ids and rows are served (its graphs are not
            used).
        embeddings: float32 [n_table_rows, d], row i = the embedding of table row i.
        element_counts: float32 [n_table_rows, 119], atoms per element of table row i.
    """

    def __init__(self, dataset: Any, embeddings: np.ndarray | torch.Tensor,
                 element_counts: np.ndarray | torch.Tensor):
        self.embeddings = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        self.element_counts = torch.as_tensor(np.asarray(element_counts, dtype=np.float32))
        n = len(dataset.material_ids)
        if self.embeddings.shape[0] != n or self.element_counts.shape[0] != n:
            raise ValueError(f"{self.embeddings.shape[0]} embeddings and {self.element_counts.shape[0]} element "
                             f"counts for a table of {n} rows")
        self.tasks = dataset.tasks
        self.y, self.y_mask = dataset.y, dataset.y_mask
        self.material_ids = dataset.material_ids
        self.rows = np.asarray(dataset.rows, dtype=np.int64)

    @property
    def dim(self) -> int:
        """Width d of the embeddings."""
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> EmbeddedBatch:
        return self.batch([i])

    def batch(self, positions: Sequence[int] | np.ndarray) -> EmbeddedBatch:
        """Items ``positions`` (positions in this dataset's rows) as one :class:`EmbeddedBatch`."""
        rows = self.rows[np.asarray(positions, dtype=np.int64).reshape(-1)]
        index = torch.from_numpy(rows)
        return EmbeddedBatch(graph_emb=self.embeddings[index], element_counts=self.element_counts[index],
                             y=self.y[index], y_mask=self.y_mask[index], idx=index.clone(),
                             material_id=[self.material_ids[r] for r in rows.tolist()])

    def subset(self, rows: Sequence[int] | np.ndarray) -> "EmbeddedDataset":
        """The same dataset restricted to table ``rows`` (shares the stored arrays)."""
        other = copy.copy(self)  # a shallow copy: the arrays are shared
        other.rows = np.asarray(rows, dtype=np.int64)
        return other


def is_embedded(batch: Any) -> bool:
    """Whether ``batch`` carries stored embeddings (an :class:`EmbeddedBatch`) instead of graphs."""
    return getattr(batch, "graph_emb", None) is not None


__all__ = ["EmbeddedBatch", "EmbeddedDataset", "is_embedded"]
