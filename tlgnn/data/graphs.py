"""Graphs of an aligned table's materials through :class:`tlgnn.graphs.GraphCache` (built once, then mapped)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tlgnn.data.table import MaterialTable


class LazyStructures(Sequence):
    """The table's structures, parsed from their JSON only when indexed (the cache touches only missing ones)."""

    def __init__(self, texts: Sequence[str]):
        self.texts = texts if isinstance(texts, Sequence) else list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        from pymatgen.core import Structure

        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return Structure.from_str(self.texts[i], fmt="json")


def graph_cache(cache_dir: str | Path, cutoff: float = 8.0, max_neighbors: int | None = 12):
    """The :class:`GraphCache` under ``<cache_dir>/graphs`` for these builder settings."""
    from tlgnn.graphs import CrystalGraphBuilder, GraphCache

    builder = CrystalGraphBuilder(cutoff=cutoff, max_neighbors=max_neighbors)
    return GraphCache(Path(cache_dir).expanduser() / "graphs", builder)


def build_graphs(table: MaterialTable, cache_dir: str | Path, cutoff: float = 8.0, max_neighbors: int | None = 12,
                 n_jobs: int | None = None, progress: bool | None = None):
    """A :class:`tlgnn.graphs.GraphStore` with the graph of every row of ``table`` (in row order)."""
    cache = graph_cache(cache_dir, cutoff, max_neighbors)
    structures = LazyStructures(table.structure_texts())
    keys = table.frame["structure_key"].tolist() if "structure_key" in table.frame else None
    return cache.get_many(structures, keys=keys, n_jobs=n_jobs, progress=progress)


__all__ = ["LazyStructures", "build_graphs", "graph_cache"]
