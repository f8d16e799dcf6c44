"""Whole batches straight from graph packs: one ``Batch`` per call, no per-graph ``Data`` objects.

:func:`collate_graphs` gathers the graphs ``indices`` of a :class:`tlgnn.graphs.GraphStore` with vectorised index
arithmetic on the packs' concatenated arrays (node/edge ranges from the offset arrays, one gather per array and
pack, ``edge_index`` shifted by each graph's node offset) and returns the ``torch_geometric`` ``Batch`` that
``Batch.from_data_list([store[i] for i in indices])`` would give: same fields in the same order, dtypes, values,
``batch``/``ptr`` vectors and the ``_slice_dict``/``_inc_dict`` that ``to_data_list()`` needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch_geometric.data import Batch, Data

#: graph fields of the contract (docs/architecture.md) in item order: name -> (dtype, trailing shape, per)
GRAPH_FIELDS: dict[str, tuple[torch.dtype, tuple[int, ...], str]] = {
    "z": (torch.long, (), "node"),
    "pos": (torch.float32, (3,), "node"),
    "cell": (torch.float32, (3, 3), "graph"),
    "edge_index": (torch.long, (), "edge"),
    "edge_vec": (torch.float32, (3,), "edge"),
    "edge_dist": (torch.float32, (), "edge"),
    "cell_offset": (torch.long, (3,), "edge"),
}


class PackedGraphs(Protocol):
    """What :func:`collate_graphs` reads (:class:`tlgnn.graphs.packs.GraphStore` is one; this module does not
    import it, the packs module imports this one).

    ``packs``: objects with ``node_offsets``/``node_counts``/``edge_offsets``/``edge_counts`` (int64 arrays, one
    value per graph), ``dtype(name)`` and ``take_rows(name, RowSelection, out=None)``; ``locate(indices)`` gives
    each item's ``(pack number, position in the pack)``.
    """

    packs: Sequence[Any]

    def __len__(self) -> int: ...

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class RowSelection:
    """Rows ``starts[k]:starts[k] + lengths[k]`` (k in order) of a pack's arrays, prepared once for all arrays.

    ``total`` rows; ``run_starts``/``run_lengths``: the same rows as maximal runs of adjacent ranges (lists, for
    positioned reads); ``index``: a ``slice`` when it is one run, else the row numbers (for in-RAM gathers).
    """

    __slots__ = ("total", "run_starts", "run_lengths", "index")

    def __init__(self, starts: np.ndarray, lengths: np.ndarray):
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        self.total = int(lengths.sum())
        if len(starts) == 0:
            self.run_starts, self.run_lengths, self.index = [], [], slice(0, 0)
            return
        joined = starts[1:] == starts[:-1] + lengths[:-1]
        if joined.all():
            first = int(starts[0])
            self.run_starts, self.run_lengths = [first], [self.total]
            self.index = slice(first, first + self.total)
            return
        heads = np.flatnonzero(np.concatenate(([True], ~joined)))
        self.run_starts = starts[heads].tolist()
        self.run_lengths = np.add.reduceat(lengths, heads).tolist()
        self.index = _ranges(starts, lengths)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


_DATA_BATCH = type(Batch(_base_cls=Data))  # the class Batch.from_data_list gives for Data items


def _pack_order(groups: list, spans: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per span kind: indices that turn rows concatenated pack after pack (``groups`` order) into batch order."""
    graphs = np.concatenate([where for _, where in groups])  # batch position of each graph, pack after pack
    order = {}
    for per, (_, lengths) in spans.items():
        in_joined = lengths[graphs]
        first = np.empty(len(graphs), np.int64)
        first[graphs] = np.cumsum(in_joined) - in_joined  # where each graph's rows start in the joined array
        order[per] = _ranges(first, lengths)
    return order


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """A new tensor; ``shared``: in shared memory (inside a DataLoader worker: no copy when sent to the main
    process, as PyG's ``Collater`` does)."""
    numel = math.prod(shape)
    if numel == 0 or not shared:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(numel * _ITEMSIZE[dtype])
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


_ITEMSIZE = {torch.long: 8, torch.float32: 4}


def _check_extra(extra: Mapping[str, Any], n: int) -> None:
    for key, value in extra.items():
        if key in GRAPH_FIELDS or key in ("num_nodes", "batch", "ptr") or "index" in key or "batch" in key \
                or key == "face":
            # PyG increments such keys by node counts when batching; a per-graph extra field must not be one
            raise ValueError(f"collate_graphs: extra field {key!r} clashes with a graph field or a name PyG "
                             "increments when batching")
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 or value.shape[0] != n:
                raise ValueError(f"collate_graphs: extra field {key!r} has shape {tuple(value.shape)}; "
                                 f"expected [{n}, ...] (one row per graph)")
        elif isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"collate_graphs: extra field {key!r} has {len(value)} values for {n} graphs")
        else:
            raise TypeError(f"collate_graphs: extra field {key!r} must be a tensor [B, ...] or a list of B values, "
                            f"got {type(value).__name__}")


def collate_graphs(store: PackedGraphs, indices: Sequence[int] | np.ndarray,
                   extra: Mapping[str, Any] | None = None) -> Batch:
    """Graphs ``indices`` of ``store`` as one ``Batch``, equal to ``Batch.from_data_list`` of the items.

    ``extra``: per-graph fields appended after the graph fields, in order, as ``Batch.from_data_list`` would
    batch them from items holding row ``k`` (a tensor ``[B, ...]``: item ``value[k:k+1]``, e.g. ``y`` [B, T]) or
    element ``k`` (a list of B values, e.g. ``material_id`` strings). Indices may repeat and be negative.
    A hot path (one call per training step): four steps, each vectorised over the whole batch.
    """
    idx = _checked_indices(indices, len(store))
    extra = dict(extra or {})
    _check_extra(extra, len(idx))
    spans = _locate(store, idx)
    out = _gather_fields(spans)
    return _assemble(out, spans, extra)


def _checked_indices(indices: Sequence[int] | np.ndarray, size: int) -> np.ndarray:
    """``indices`` as int64 positions in ``[0, size)`` (negative ones counted from the end)."""
    if isinstance(indices, range):
        idx = np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) == 0:
        raise ValueError("collate_graphs: no indices (a batch needs at least one graph)")
    low, high = int(idx.min()), int(idx.max())
    if low < 0:
        idx = np.where(idx < 0, idx + size, idx)
        low = int(idx.min())
    if low < 0 or high >= size:
        wrong = np.asarray(indices).reshape(-1)[(idx < 0) | (idx >= size)][0]
        raise IndexError(f"GraphStore index {int(wrong)} out of range for {size} graphs")
    return idx


class _Spans:
    """Where a batch's graphs lie in the packs: per span kind (``node``, ``edge``, ``graph``) the first row and
    row count of each graph in its pack; ``groups``: (pack, positions in the batch) per pack involved;
    ``order``: with several packs, per span kind the gather that puts rows joined pack after pack in batch order."""

    __slots__ = ("n_graphs", "single", "groups", "spans", "order", "node_ptr", "edge_ptr", "selections")

    def __init__(self, n_graphs: int, single: bool, groups: list, spans: dict) -> None:
        self.n_graphs, self.single, self.groups, self.spans = n_graphs, single, groups, spans
        node_count, edge_count = spans["node"][1], spans["edge"][1]
        self.node_ptr = np.zeros(n_graphs + 1, np.int64)
        np.cumsum(node_count, out=self.node_ptr[1:])
        self.edge_ptr = np.zeros(n_graphs + 1, np.int64)
        np.cumsum(edge_count, out=self.edge_ptr[1:])
        # several packs: each pack's rows are gathered (in batch order), concatenated pack after pack, and put in
        # batch order by one more gather with ``order[per]`` (a gather is ~3x faster than a scatter)
        self.order = {} if single else _pack_order(groups, spans)
        self.selections = {  # per pack, the rows of each span kind, prepared once for all arrays of that kind
            id(pack): {per: RowSelection(starts[where], lengths[where]) for per, (starts, lengths) in spans.items()}
            for pack, where in groups
        }


def _locate(store: PackedGraphs, idx: np.ndarray) -> _Spans:
    """The node, edge and graph rows of graphs ``idx`` in the store's packs."""
    n_graphs = len(idx)
    pack_of, local = store.locate(idx)
    single = len(store.packs) == 1 or int(pack_of.min()) == int(pack_of.max())
    if single:  # the common case (packs hold 50,000 graphs by default)
        pack = store.packs[int(pack_of[0])]
        node_start, node_count = pack.node_offsets[local], pack.node_counts[local]
        edge_start, edge_count = pack.edge_offsets[local], pack.edge_counts[local]
        groups = [(pack, slice(None))]
    else:
        node_start = np.empty(n_graphs, np.int64)
        node_count = np.empty(n_graphs, np.int64)
        edge_start = np.empty(n_graphs, np.int64)
        edge_count = np.empty(n_graphs, np.int64)
        groups = []  # (pack, positions in the batch) for each pack holding some of the graphs
        for p in np.unique(pack_of).tolist():
            where = np.flatnonzero(pack_of == p)
            pack, rows = store.packs[p], local[where]
            node_start[where], node_count[where] = pack.node_offsets[rows], pack.node_counts[rows]
            edge_start[where], edge_count[where] = pack.edge_offsets[rows], pack.edge_counts[rows]
            groups.append((pack, where))
    spans = {"node": (node_start, node_count), "edge": (edge_start, edge_count),
             "graph": (local, np.ones(n_graphs, np.int64))}
    return _Spans(n_graphs, single, groups, spans)


def _gather_fields(s: _Spans) -> dict[str, torch.Tensor]:
    """Every graph field of the batch (``edge_index`` still in each graph's local node numbers)."""
    out: dict[str, torch.Tensor] = {}
    counts = {"node": int(s.node_ptr[-1]), "edge": int(s.edge_ptr[-1]), "graph": s.n_graphs}
    shared = torch.utils.data.get_worker_info() is not None
    for name, (dtype, trailing, per) in GRAPH_FIELDS.items():
        target = _empty((2, counts["edge"]) if name == "edge_index" else (counts[per], *trailing), dtype, shared)
        out[name] = target
        target_np = target.numpy()
        axis = 1 if name == "edge_index" else 0
        if s.single:
            pack = s.groups[0][0]
            rows = s.selections[id(pack)][per]
            if pack.dtype(name) == target_np.dtype:
                pack.take_rows(name, rows, out=target_np)
            else:  # compact on disk (uint8, int32, int8): gather small, then widen
                target_np[...] = pack.take_rows(name, rows)
            continue
        joined = np.concatenate([pack.take_rows(name, s.selections[id(pack)][per]) for pack, _ in s.groups],
                                axis=axis)
        if joined.dtype == target_np.dtype:
            np.take(joined, s.order[per], axis=axis, out=target_np)
        else:
            target_np[...] = np.take(joined, s.order[per], axis=axis)
    return out


def _assemble(out: dict[str, torch.Tensor], s: _Spans, extra: dict[str, Any]) -> Batch:
    """The ``Batch`` of the gathered fields and ``extra``, with the ``batch``/``ptr`` vectors and the slice and
    increment dicts that ``to_data_list()`` needs."""
    n_graphs, node_ptr, node_count = s.n_graphs, s.node_ptr, s.spans["node"][1]
    node_ptr_t = torch.from_numpy(node_ptr)
    edge_ptr_t = torch.from_numpy(s.edge_ptr)
    if int(s.edge_ptr[-1]):  # local node numbers -> numbers in the batch
        out["edge_index"].numpy()[...] += np.repeat(node_ptr[:-1], s.spans["edge"][1])
    graph_slices = torch.arange(n_graphs + 1)
    zeros = torch.zeros(n_graphs, dtype=torch.long)
    slices: dict[str, Any] = {}
    incs: dict[str, Any] = {}
    for name, (_, _, per) in GRAPH_FIELDS.items():
        slices[name] = {"node": node_ptr_t, "edge": edge_ptr_t, "graph": graph_slices}[per]
        incs[name] = node_ptr_t[:-1] if name == "edge_index" else zeros
    mapping: dict[str, Any] = dict(out)
    mapping["num_nodes"] = int(node_ptr[-1])
    for key, value in extra.items():
        mapping[key] = value if isinstance(value, torch.Tensor) else list(value)
        slices[key] = graph_slices
        incs[key] = zeros if isinstance(value, torch.Tensor) else None
    mapping["batch"] = torch.from_numpy(np.repeat(np.arange(n_graphs, dtype=np.int64), node_count))
    mapping["ptr"] = node_ptr_t.clone()

    batch = type.__call__(_DATA_BATCH)  # = Batch(_base_cls=Data) without the metaclass's signature inspection
    store_ = batch._store
    store_._mapping.update(mapping)
    store_._num_nodes = node_count.tolist()
    batch._num_graphs = n_graphs
    batch._slice_dict = slices
    batch._inc_dict = incs
    return batch


__all__ = ["GRAPH_FIELDS", "PackedGraphs", "RowSelection", "collate_graphs"]
