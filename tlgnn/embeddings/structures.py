"""Embeddings of structure files or of an aligned table, through the cache: what ``tlgnn embed`` writes.

An encoder comes from a tlgnn checkpoint (its encoder and the graph settings it was trained with) or from the
encoder registry by name (e.g. ``chgnet``, pretrained weights from its package; default graph settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from tlgnn.embeddings.compute import cached_embeddings


@dataclass
class FrozenEncoder:
    """An encoder in eval mode with what names its embeddings: ``spec`` ``{name, **options}`` and the ``graph``
    builder settings of its inputs."""

    encoder: Any
    spec: dict[str, Any]
    graph: dict[str, Any]


def encoder_from_checkpoint(path: str | Path) -> FrozenEncoder:
    """The encoder of a tlgnn checkpoint (read with ``weights_only=True``)."""
    from tlgnn.training.checkpoint import load_module  # the one checkpoint reader

    module = load_module(path)
    return FrozenEncoder(module.model.encoder.eval(), dict(module.hparams["model"]["encoder"]),
                         dict(module.hparams["graph"]))


def encoder_by_name(name: str, options: Mapping[str, Any] | None = None,
                    graph: Mapping[str, Any] | None = None) -> FrozenEncoder:
    """A registered encoder built with ``options`` (a foundation encoder loads its pretrained weights); its
    inputs are graphs with ``graph`` settings (default: :class:`tlgnn.graphs.CrystalGraphBuilder`'s)."""
    from tlgnn.graphs import CrystalGraphBuilder
    from tlgnn.models import ENCODERS, build_encoder

    opts = ENCODERS.canonical(name, dict(options or {}))
    encoder = build_encoder(name, **opts).eval()
    settings = dict(graph) if graph is not None else dict(CrystalGraphBuilder().settings)
    return FrozenEncoder(encoder, {"name": name, **opts}, settings)


@dataclass
class Embedded:
    """Embeddings [n, d] of the structures that could be used, their ids and content keys, and the failures."""

    ids: list[str]
    keys: list[str]
    embeddings: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """``id``, ``structure_key`` and ``emb_0 .. emb_{d-1}`` (float32), one row per structure."""
        columns = {f"emb_{j}": self.embeddings[:, j] for j in range(self.embeddings.shape[1])}
        return pd.DataFrame({"id": self.ids, "structure_key": self.keys, **columns})


def embed_structures(frozen: FrozenEncoder, records: Sequence[Any], cache_root: str | Path,
                     batch_size: int = 64, device: str = "cpu") -> Embedded:
    """Embeddings of ``records`` (:class:`tlgnn.io.StructureRecord`); a structure whose graph cannot be built is
    reported in ``failures`` and left out."""
    from torch_geometric.loader import DataLoader

    from tlgnn.graphs import structure_key
    from tlgnn.graphs.records import builder_from_settings, record_graphs

    graphs, used, failures = record_graphs(builder_from_settings(frozen.graph), records)
    ids = [r.id for r in used]
    keys = [structure_key(r.structure) for r in used]

    def loader_for(rows: np.ndarray) -> Any:
        return DataLoader([graphs[i] for i in rows], batch_size=batch_size, shuffle=False)

    embeddings, _ = cached_embeddings(frozen.encoder, frozen.spec, frozen.graph, keys, loader_for, cache_root, device)
    return Embedded(ids, keys, embeddings, failures)


def embed_table(frozen: FrozenEncoder, table_path: str | Path, cache_root: str | Path, graph_cache_dir: str | Path,
                batch_size: int = 64, device: str = "cpu") -> Embedded:
    """Embeddings of every material of an aligned table (``aligned.parquet`` or its folder); ids are the
    ``material_id`` column. Graphs come from the graph cache under ``graph_cache_dir``."""
    from tlgnn.data import MaterialDataset, MaterialTable
    from tlgnn.data.graphs import graph_cache
    from tlgnn.data.loader import graph_loader

    table = MaterialTable.load(table_path, structures="lazy")
    cache = graph_cache(graph_cache_dir, float(frozen.graph.get("cutoff", 8.0)), frozen.graph.get("max_neighbors", 12))
    dataset = MaterialDataset(table, cache, tasks=[t.name for t in table.tasks])
    keys = [str(k) for k in table.frame["structure_key"].tolist()]

    def loader_for(rows: np.ndarray) -> Any:
        return graph_loader(dataset.subset(rows), batch_size=batch_size, shuffle=False)

    embeddings, _ = cached_embeddings(frozen.encoder, frozen.spec, frozen.graph, keys, loader_for, cache_root, device)
    return Embedded([str(i) for i in table.frame["material_id"].tolist()], keys, embeddings)


def write_embeddings(result: Embedded, path: str | Path, frozen: FrozenEncoder) -> Path:
    """Write ``result.frame()`` to Parquet (atomically), with the encoder spec and graph settings in the file's
    metadata (key ``tlgnn``)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tlgnn.utils.files import temp_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(result.frame(), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"tlgnn"] = json.dumps({"encoder": frozen.spec, "graph": frozen.graph}, default=str).encode()
    tmp = temp_path(path)
    try:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["Embedded", "FrozenEncoder", "embed_structures", "embed_table", "encoder_by_name",
           "encoder_from_checkpoint", "write_embeddings"]
