"""Crystal graphs: periodic radius / k-nearest neighbour graphs built with vesin.

Conventions (see docs/graphs.md):

* edge ``i -> j`` for every neighbour ``j`` (periodic images included) of centre ``i``;
  ``edge_vec = pos[j] + cell_offset @ cell - pos[i]`` (Å), computed in float64, stored float32.
* an atom's own periodic images are neighbours (so one-atom cells have edges); the atom itself
  (zero offset) is never its own neighbour.
* a pair is inside the cutoff when ``d <= cutoff + 1e-8`` Å (the rule of pymatgen's
  ``Structure.get_all_neighbors``, which counts pairs at exactly the cutoff).
* edges are sorted by centre ``i``, then distance rounded to 1e-8 Å, then ``j``, then ``cell_offset``
  lexicographically; ``max_neighbors=k`` keeps the first ``k`` edges of each centre in this order.
* ``pbc`` False in a direction: no images along that cell vector (vesin/ASE semantics); the cell
  vector still defines the periodic directions' geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import vesin
from torch_geometric.data import Data

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

GRAPH_FORMAT_VERSION = 1
CUTOFF_TOL = 1e-8  # Å: pairs with d <= cutoff + CUTOFF_TOL are neighbours
_SEARCH_PAD = 1e-6  # Å: vesin searches slightly beyond the cutoff, then we filter exactly
_TIE_RESOLUTION = 1e-8  # Å: distances closer than this count as ties (broken by j, then offset)
_EXPAND_FACTOR = 1.5  # isolated="expand": cutoff grows by this factor per retry
_EXPAND_MAX = 4.0  # ... up to this multiple of the configured cutoff
ISOLATED_POLICIES = ("error", "expand")


class IsolatedAtomError(ValueError):
    """An atom has no neighbour within the cutoff (it would be a disconnected graph node)."""

    def __init__(self, name: str | None, index: int, element: str, cutoff: float):
        self.name = name
        self.index = index
        self.element = element
        self.cutoff = cutoff
        where = name if name is not None else "<structure>"
        super().__init__(
            f"{where}: atom {index} ({element}) has no neighbour within {cutoff:g} Å; "
            "use a larger cutoff or CrystalGraphBuilder(isolated='expand')"
        )


@dataclass
class GraphArrays:
    """A crystal graph as numpy arrays (the pack format of the cache; see ``to_data``)."""

    z: np.ndarray  # int64 [N]
    pos: np.ndarray  # float32 [N, 3]
    cell: np.ndarray  # float32 [1, 3, 3]
    edge_index: np.ndarray  # int64 [2, E]
    edge_vec: np.ndarray  # float32 [E, 3]
    edge_dist: np.ndarray  # float32 [E]
    cell_offset: np.ndarray  # int64 [E, 3]

    def to_data(self) -> Data:
        """Wrap the arrays (no copy) as a ``torch_geometric.data.Data``."""
        return make_data(
            torch.from_numpy(self.z),
            torch.from_numpy(self.pos),
            torch.from_numpy(self.cell),
            torch.from_numpy(self.edge_index),
            torch.from_numpy(self.edge_vec),
            torch.from_numpy(self.edge_dist),
            torch.from_numpy(self.cell_offset),
        )


def make_data(z, pos, cell, edge_index, edge_vec, edge_dist, cell_offset) -> Data:
    """The one place a graph ``Data`` is assembled (field names of docs/architecture.md)."""
    return fast_data({
        "z": z,
        "pos": pos,
        "cell": cell,
        "edge_index": edge_index,
        "edge_vec": edge_vec,
        "edge_dist": edge_dist,
        "cell_offset": cell_offset,
        "num_nodes": int(z.shape[0]),
    })


def fast_data(mapping: dict) -> Data:
    """``Data(**mapping)`` without PyG's per-attribute ``setattr`` (7x faster, the same object)."""
    data = Data()
    data._store._mapping.update(mapping)
    return data


def structure_arrays(structure: "Structure", name: str | None = None):
    """``(numbers, positions Å, cell Å, pbc)`` of an ordered pymatgen ``Structure``."""
    try:  # PeriodicSite.specie raises AttributeError for a disordered (partially occupied) site
        numbers = np.fromiter((site.specie.Z for site in structure), dtype=np.int64, count=len(structure))
    except AttributeError:
        raise ValueError(
            f"{name or structure.formula}: structure is disordered (partial occupancies); "
            "order it first (tlgnn.io read_structures(disordered='order'))"
        ) from None
    lattice = structure.lattice
    return numbers, structure.cart_coords, lattice.matrix, tuple(bool(p) for p in lattice.pbc)


class CrystalGraphBuilder:
    """Builds crystal graphs: neighbours within ``cutoff`` Å, optionally only the ``max_neighbors`` nearest.

    ``cutoff=8.0, max_neighbors=12`` is the CGCNN default; ``max_neighbors=None`` gives the plain
    radius graph. ``isolated``: "error" raises ``IsolatedAtomError`` for an atom without neighbours;
    "expand" retries the whole structure with the cutoff multiplied by 1.5 (up to 4x the configured
    cutoff, then raises) until every atom has a neighbour.
    """

    def __init__(self, cutoff: float = 8.0, max_neighbors: int | None = 12, isolated: str = "error"):
        if not (isinstance(cutoff, (int, float)) and np.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"cutoff: must be a positive number of Å, got {cutoff!r}")
        if max_neighbors is not None and (
            isinstance(max_neighbors, bool) or not isinstance(max_neighbors, (int, np.integer)) or max_neighbors < 1
        ):
            raise ValueError(f"max_neighbors: must be a positive integer or None, got {max_neighbors!r}")
        if isolated not in ISOLATED_POLICIES:
            raise ValueError(f"isolated: must be one of {ISOLATED_POLICIES}, got {isolated!r}")
        self.cutoff = float(cutoff)
        self.max_neighbors = None if max_neighbors is None else int(max_neighbors)
        self.isolated = isolated

    def __repr__(self) -> str:
        return (
            f"CrystalGraphBuilder(cutoff={self.cutoff:g}, max_neighbors={self.max_neighbors}, "
            f"isolated={self.isolated!r})"
        )

    @property
    def settings(self) -> dict[str, Any]:
        """JSON-able settings; the cache hashes them, so any change rebuilds graphs."""
        return {
            "kind": "CrystalGraphBuilder",
            "format_version": GRAPH_FORMAT_VERSION,
            "cutoff": self.cutoff,
            "max_neighbors": self.max_neighbors,
            "isolated": self.isolated,
            "cutoff_tol": CUTOFF_TOL,
            "tie_resolution": _TIE_RESOLUTION,
        }

    def __call__(self, structure: "Structure", name: str | None = None) -> Data:
        """Graph of a pymatgen ``Structure``; ``name`` is used in error messages."""
        return self.arrays(structure, name=name).to_data()

    def arrays(self, structure: "Structure", name: str | None = None) -> GraphArrays:
        """Like ``__call__`` but returns numpy ``GraphArrays``."""
        numbers, positions, cell, pbc = structure_arrays(structure, name)
        return self.arrays_from_arrays(numbers, positions, cell, pbc, name=name)

    def from_arrays(
        self,
        numbers: Sequence[int] | np.ndarray,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: Sequence[bool] | bool = (True, True, True),
        name: str | None = None,
    ) -> Data:
        """Graph from atomic numbers [N], Cartesian positions [N, 3] (Å) and cell [3, 3] (Å, rows = vectors)."""
        return self.arrays_from_arrays(numbers, positions, cell, pbc, name=name).to_data()

    def arrays_from_arrays(self, numbers, positions, cell, pbc=(True, True, True), name=None) -> GraphArrays:
        """Core of the builder (pymatgen-free): validated arrays in, ``GraphArrays`` out."""
        numbers, positions, cell, pbc = _validate(numbers, positions, cell, pbc, name)
        cutoff = self.cutoff
        while True:
            edges = _neighbor_edges(positions, cell, pbc, cutoff, self.max_neighbors)
            centres = edges[0]
            counts = np.bincount(centres, minlength=len(numbers))
            if counts.min() > 0:
                break
            lonely = int(np.argmin(counts))
            if self.isolated == "expand" and cutoff * _EXPAND_FACTOR <= _EXPAND_MAX * self.cutoff + 1e-9:
                cutoff *= _EXPAND_FACTOR
                continue
            raise IsolatedAtomError(name, lonely, _symbol(int(numbers[lonely])), cutoff)
        i, j, offsets, vec, dist = edges
        return GraphArrays(
            z=numbers,
            pos=positions.astype(np.float32),
            cell=cell.astype(np.float32).reshape(1, 3, 3),
            edge_index=np.stack([i, j]),
            edge_vec=vec.astype(np.float32),
            edge_dist=dist.astype(np.float32),
            cell_offset=offsets,
        )


def _neighbor_edges(positions, cell, pbc, cutoff, max_neighbors):
    """Sorted (and k-nearest truncated) edges ``(i, j, offsets, vec, dist)``, vec/dist in float64."""
    nl = vesin.NeighborList(cutoff=cutoff + _SEARCH_PAD, full_list=True, n_threads=1)
    i, j, s, dist = nl.compute(positions, cell, list(pbc), quantities="ijSd")
    keep = dist <= cutoff + CUTOFF_TOL
    if not keep.all():
        i, j, s, dist = i[keep], j[keep], s[keep], dist[keep]
    i = i.astype(np.int64)
    j = j.astype(np.int64)
    dq = np.rint(dist / _TIE_RESOLUTION).astype(np.int64)
    if max_neighbors is not None and len(i):
        # cheap pre-selection: sort by (centre, distance) only, keep each centre's first k edges plus any
        # edge tied with its k-th; the full tie-breaking sort then runs on this small set only.
        primary = _primary_key(i, dq)
        pre = np.argsort(primary)
        sp = primary[pre]
        si = i[pre]
        rank = np.arange(len(pre)) - np.searchsorted(si, si, side="left")
        boundary = np.full(int(si[-1]) + 1, np.iinfo(np.int64).max)
        at_k = rank == max_neighbors - 1
        boundary[si[at_k]] = sp[at_k]
        sel = pre[(rank < max_neighbors) | (sp == boundary[si])]
        i, j, s, dist, dq = i[sel], j[sel], s[sel], dist[sel], dq[sel]
    s = s.astype(np.int64)
    order = _edge_order(i, j, s, dq)
    if max_neighbors is not None and len(order):
        si = i[order]
        order = order[np.arange(len(order)) - np.searchsorted(si, si, side="left") < max_neighbors]
    i, j, s, dist = i[order], j[order], s[order], dist[order]
    vec = positions[j] - positions[i] + s @ cell
    return i, j, s, vec, dist


def _primary_key(i: np.ndarray, dq: np.ndarray) -> np.ndarray:
    """One sortable key for (centre, quantised distance); falls back to a lexsort rank if it cannot pack."""
    if int(dq.max()) < 2**32 and int(i.max()) < 2**30:
        return (i << 32) | dq
    order = np.lexsort((dq, i))
    key = np.empty_like(order)
    # equal (i, dq) must share a key so ties stay ties
    same = np.r_[False, (i[order][1:] == i[order][:-1]) & (dq[order][1:] == dq[order][:-1])]
    key[order] = np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))
    return key


def _edge_order(i: np.ndarray, j: np.ndarray, s: np.ndarray, dq: np.ndarray) -> np.ndarray:
    """Permutation sorting edges by centre, quantised distance ``dq``, then j, then offset (lexicographic).

    Packs the keys into two int64 words when they fit (the common case, 3x faster than a 6-key lexsort).
    """
    if not len(i):
        return np.zeros(0, dtype=np.int64)
    if int(np.abs(s).max()) < 127 and int(j.max()) < 2**38 and int(dq.max()) < 2**32 and int(i.max()) < 2**30:
        tie = (j << 24) | ((s[:, 0] + 128) << 16) | ((s[:, 1] + 128) << 8) | (s[:, 2] + 128)
        return np.lexsort((tie, (i << 32) | dq))
    return np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, dq, i))


def _validate(numbers, positions, cell, pbc, name):
    where = name or "<structure>"
    numbers = np.asarray(numbers)
    if numbers.ndim != 1 or len(numbers) == 0:
        raise ValueError(f"{where}: numbers must be a non-empty 1-d array of atomic numbers, got shape {numbers.shape}")
    if not np.issubdtype(numbers.dtype, np.integer):
        if not np.all(np.mod(numbers, 1) == 0):
            raise ValueError(f"{where}: numbers must be integer atomic numbers")
    numbers = numbers.astype(np.int64)
    if numbers.min() < 1 or numbers.max() > 118:
        raise ValueError(f"{where}: atomic numbers must be in 1..118, got {numbers.min()}..{numbers.max()}")
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"{where}: positions must have shape ({len(numbers)}, 3), got {positions.shape}")
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    if cell.shape == (1, 3, 3):
        cell = cell[0]
    if cell.shape != (3, 3):
        raise ValueError(f"{where}: cell must have shape (3, 3) (rows = lattice vectors), got {cell.shape}")
    if not (np.isfinite(positions).all() and np.isfinite(cell).all()):
        raise ValueError(f"{where}: positions/cell contain NaN or inf")
    if isinstance(pbc, (bool, np.bool_)):
        pbc = (bool(pbc),) * 3
    pbc = tuple(bool(p) for p in pbc)
    if len(pbc) != 3:
        raise ValueError(f"{where}: pbc must be a bool or 3 bools, got {pbc}")
    if any(pbc):
        (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = cell.tolist()
        volume = abs(a1 * (b2 * c3 - b3 * c2) - a2 * (b1 * c3 - b3 * c1) + a3 * (b1 * c2 - b2 * c1))
        if volume < 1e-6:
            raise ValueError(f"{where}: cell is singular (volume {volume:.3g} Å^3)")
    return numbers, positions, cell, pbc


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)
