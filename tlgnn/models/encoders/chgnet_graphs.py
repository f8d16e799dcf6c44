"""CHGNet's own crystal graphs from tlgnn batches, with a bounded in-memory cache.

The ``chgnet`` encoder does not use tlgnn's edges: CHGNet has its own atom graph (every neighbour within
``atom_graph_cutoff``, 6 Å for 0.3.0 / r2scan, 5 Å for 0.2.0) and bond graph (angles between bonds shorter
than ``bond_graph_cutoff``, 3 Å). They are built here per structure from the batch's ``z`` [N], ``pos`` [N, 3]
(Å, Cartesian) and ``cell`` [B, 3, 3] (Å, rows = lattice vectors) by the package's ``CrystalGraphConverter``
(a pymatgen ``Structure`` made with ``coords_are_cartesian=True``).

Conversion (a neighbour search and the line graph, in Python/C) costs far more than looking a graph up, so
converted graphs are kept in :class:`GraphLRU`: keyed by a BLAKE2b digest of the structure's bytes (``z`` as
int64, ``pos`` and ``cell`` as given: float32 in tlgnn graphs), least recently used evicted first, bounded by a
number of graphs (a graph takes about 20 KiB for a 9-atom crystal, growing about linearly with the atoms).
Repeated epochs of fine-tuning then convert each training structure once. The cache lives in the process's
memory only (not in checkpoints); a cached graph holds no autograd history and no gradient-tracking tensors.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch

MAX_Z = 94
"""CHGNet's atom embedding covers atomic numbers 1..94 (H..Pu)."""


def check_atomic_numbers(z: np.ndarray | torch.Tensor) -> None:
    """Raise ``ValueError`` naming the atomic numbers outside CHGNet's 1..94 (reads ``z`` on the host)."""
    values = z.cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    if values.size and (values.max() > MAX_Z or values.min() < 1):
        bad = np.unique(values[(values > MAX_Z) | (values < 1)]).tolist()
        raise ValueError(f"atomic numbers {bad} are not supported by CHGNet (supported: 1..{MAX_Z})")


def structure_key(z: np.ndarray, pos: np.ndarray, cell: np.ndarray) -> bytes:
    """16-byte content digest of one structure: ``z`` [n] (as int64), ``pos`` [n, 3] and ``cell`` [3, 3] (Å,
    their bytes in their own float type, which is part of the key)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(z, dtype=np.int64).tobytes())
    for array in (pos, cell):
        array = np.ascontiguousarray(array)
        digest.update(array.dtype.str.encode())
        digest.update(array.tobytes())
    return digest.digest()


class GraphLRU:
    """A least-recently-used map ``key -> graph`` holding at most ``max_size`` graphs (0 disables it).

    ``hits`` / ``misses`` count lookups since creation (or :meth:`clear`).
    """

    def __init__(self, max_size: int) -> None:
        if int(max_size) < 0:
            raise ValueError(f"graph cache size must be >= 0, got {max_size}")
        self.max_size = int(max_size)
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: bytes) -> bool:
        return key in self._items

    def get(self, key: bytes) -> Any | None:
        """The graph stored under ``key`` (now the most recently used), or ``None``."""
        graph = self._items.get(key)
        if graph is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return graph

    def put(self, key: bytes, graph: Any) -> None:
        """Store ``graph`` under ``key``, evicting the least recently used graphs beyond ``max_size``."""
        if not self.max_size:
            return
        self._items[key] = graph
        self._items.move_to_end(key)
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every graph and reset the counters."""
        self._items.clear()
        self.hits = self.misses = 0


def split_structures(batch: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``[(z [n], pos [n, 3], cell [3, 3]), ...]`` host numpy arrays per structure of a PyG ``Batch``/``Data``."""
    z = batch.z.cpu().numpy()
    pos = batch.pos.detach().cpu().numpy()
    cell = batch.cell.detach().cpu().numpy().reshape(-1, 3, 3)
    ptr = getattr(batch, "ptr", None)
    if ptr is None:
        bounds = np.array([0, len(z)])
    else:
        bounds = ptr.cpu().numpy()
    if len(bounds) - 1 != len(cell):
        raise ValueError(f"the batch has {len(bounds) - 1} structures but {len(cell)} cells")
    return [(z[a:b], pos[a:b], cell[k]) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


class CHGNetGraphs:
    """Converts tlgnn batches to lists of CHGNet ``CrystalGraph`` (one per structure, in batch order), cached.

    ``converter``: a ``chgnet.graph.CrystalGraphConverter``; isolated atoms (no neighbour within the atom-graph
    cutoff) are allowed: such an atom keeps its own embedding through the residual updates.
    """

    def __init__(self, converter: Any, max_size: int) -> None:
        self.converter = converter
        self.cache = GraphLRU(max_size)

    def convert(self, z: np.ndarray, pos: np.ndarray, cell: np.ndarray) -> Any:
        """One CHGNet ``CrystalGraph`` (CPU tensors, nothing requiring gradients) from host arrays (Å)."""
        from pymatgen.core import Lattice, Structure

        structure = Structure(Lattice(np.asarray(cell, dtype=np.float64)), [int(v) for v in z],
                              np.asarray(pos, dtype=np.float64), coords_are_cartesian=True)
        graph = self.converter(structure)
        graph.atom_frac_coord = graph.atom_frac_coord.detach()
        graph.lattice = graph.lattice.detach()
        return graph

    def graphs(self, batch: Any, keep: bool = True) -> list[Any]:
        """The batch's CHGNet graphs on the host, from the cache where present (Z checked: 1..94); graphs converted
        now are kept in the cache only with ``keep`` (the encoder keeps them while training: epochs come back to the
        same structures; a one-off pass such as embedding every material once would only fill memory)."""
        check_atomic_numbers(batch.z)
        out = []
        for z, pos, cell in split_structures(batch):
            key = structure_key(z, pos, cell)
            graph = self.cache.get(key)
            if graph is None:
                graph = self.convert(z, pos, cell)
                if keep:
                    self.cache.put(key, graph)
            out.append(graph)
        return out

    def on_device(self, graphs: Sequence[Any], device: torch.device) -> list[Any]:
        """``graphs`` moved to ``device`` (the same objects on the CPU)."""
        if device.type == "cpu":
            return list(graphs)
        return [g.to(device) for g in graphs]
