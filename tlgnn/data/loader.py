"""DataLoaders that fetch whole batches: one ``dataset.batch(indices)`` call per batch instead of B items.

:func:`graph_loader` is what :class:`tlgnn.data.TransferDataModule` uses. For a dataset with a ``batch(positions)``
method (:class:`tlgnn.data.MaterialDataset`) it returns a plain ``torch.utils.data.DataLoader`` over a
:class:`BatchedFetch` view: torch's fetcher calls ``__getitems__(indices)`` with the sampler's indices for a batch,
which returns a ready ``Batch`` that the ``collate_fn`` passes through. Samplers (random with a generator,
sequential, ``DistributedSampler``, Lightning's unrepeated evaluation sampler), ``drop_last``, workers,
``persistent_workers`` and ``pin_memory`` behave exactly as with any DataLoader, and the batches equal what PyG's
``DataLoader`` collates from the same items. Other datasets (e.g. :class:`tlgnn.data.StructureDataset`) get PyG's
``DataLoader`` (per-item fetch, ``Collater``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset, Sampler


class BatchedFetch(Dataset):
    """``dataset`` seen by a DataLoader: ``__getitems__(indices) = dataset.batch(indices)`` (a whole ``Batch``)."""

    def __init__(self, dataset: Any):
        if not callable(getattr(dataset, "batch", None)):
            raise TypeError(f"BatchedFetch: {type(dataset).__name__} has no batch(positions) method")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        return self.dataset.batch(indices)


def pass_batch(batch: Any) -> Any:
    """``collate_fn`` of a :class:`BatchedFetch` loader: the fetched batch is already collated."""
    return batch


def graph_loader(dataset: Any, batch_size: int, shuffle: bool = False, sampler: Sampler | None = None,
                 num_workers: int = 0, pin_memory: bool = False, persistent_workers: bool | None = None,
                 drop_last: bool = False, generator: Any = None, **kwargs: Any) -> DataLoader:
    """Batches of ``dataset`` (PyG ``Batch`` objects), fetched whole when the dataset has a ``batch`` method.

    Arguments are those of ``torch.utils.data.DataLoader``; ``persistent_workers=None`` means "when
    ``num_workers > 0``". Extra keyword arguments go to the DataLoader unchanged.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    common = dict(batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                  pin_memory=pin_memory, persistent_workers=persistent_workers, drop_last=drop_last,
                  generator=generator, **kwargs)
    if callable(getattr(dataset, "batch", None)):
        return DataLoader(BatchedFetch(dataset), collate_fn=pass_batch, **common)
    from torch_geometric.loader import DataLoader as PyGDataLoader

    return PyGDataLoader(dataset, **common)


__all__ = ["BatchedFetch", "graph_loader", "pass_batch"]
