"""Graphs of read structures for prediction and embedding: a builder from recorded settings, and the graphs of
:class:`tlgnn.io.StructureRecord` objects with the structures whose graph cannot be built reported, not fatal."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from tlgnn.graphs.builder import CrystalGraphBuilder


def builder_from_settings(settings: Mapping[str, Any]) -> CrystalGraphBuilder:
    """A :class:`CrystalGraphBuilder` configured as ``settings`` record (a checkpoint's ``graph`` section, the
    embedding cache's), defaults where a key is absent; a warning if they were made by another graph format."""
    builder = CrystalGraphBuilder(
        cutoff=float(settings.get("cutoff", 8.0)),
        max_neighbors=settings.get("max_neighbors", 12),
        isolated=settings.get("isolated", "error"),
    )
    recorded = settings.get("format_version")
    current = builder.settings.get("format_version")
    if recorded is not None and recorded != current:
        warnings.warn(
            f"the recorded graphs were built with graph format {recorded}, this tlgnn builds format {current}; "
            "predictions may differ from those of the original run",
            stacklevel=2,
        )
    return builder


def record_graphs(builder: CrystalGraphBuilder, records: Sequence[Any]) -> tuple[list[Any], list[Any], list[tuple[str, str]]]:
    """``(graphs, records used, failures)``: a PyG ``Data`` per record whose graph could be built (in order), those
    records, and ``(location, reason)`` for each that could not (e.g. an isolated atom)."""
    graphs, used, failures = [], [], []
    built = builder.build_many([r.structure for r in records], names=[r.id for r in records], on_error="return")
    for record, graph in zip(records, built):
        if isinstance(graph, ValueError):
            failures.append((record.path or record.id, f"cannot build a graph: {graph}"))
            continue
        graphs.append(graph.to_data())
        used.append(record)
    return graphs, used, failures


__all__ = ["builder_from_settings", "record_graphs"]
