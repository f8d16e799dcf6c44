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

Speed: a k-nearest graph of a 3-d periodic cell is first searched within a radius holding about 2k
neighbours at the cell's mean density; a structure in which some atom's selection is not provably complete
within it is searched again at the full cutoff, so the graph is always the full-cutoff one. ``build_many``
runs one vesin search per structure and does the filtering, selection, sorting and casts once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import vesin
from torch_geometric.data import Data

from tlgnn.errors import TlgnnError

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

GRAPH_FORMAT_VERSION = 1
CUTOFF_TOL = 1e-8  # Å: pairs with d <= cutoff + CUTOFF_TOL are neighbours
_SEARCH_PAD = 1e-6  # Å: vesin searches slightly beyond the cutoff, then we filter exactly
_TIE_RESOLUTION = 1e-8  # Å: distances closer than this count as ties (broken by j, then offset)
_FIRST_RADIUS_FACTOR = 0.8  # k-nearest: first search radius = this x (k x cell volume per atom)^(1/3) Å
_EXPAND_FACTOR = 1.5  # isolated="expand": cutoff grows by this factor per retry
_EXPAND_MAX = 4.0  # ... up to this multiple of the configured cutoff
ISOLATED_POLICIES = ("error", "expand")


class IsolatedAtomError(TlgnnError, ValueError):
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

    def __reduce__(self):  # picklable (errors travel back from the cache's worker processes)
        return type(self), (self.name, self.index, self.element, self.cutoff)


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
    """``(numbers, positions Å, cell Å, pbc)`` of an ordered pymatgen ``Structure``.

    Positions are exactly ``structure.cart_coords`` (each site's cached ``coords``); one pass over the sites.
    """
    numbers, coords = [], []
    for site in structure:
        species = site.species  # a site is ordered when it holds one species with occupancy 1 (Site.is_ordered)
        if len(species) != 1 or species.num_atoms != 1:
            raise ValueError(
                f"{name or structure.formula}: structure is disordered (partial occupancies); "
                "order it first (tlgnn.io read_structures(disordered='order'))"
            )
        numbers.append(next(iter(species)).Z)
        coords.append(site.coords)
    lattice = structure.lattice
    positions = np.array(coords) if coords else np.empty((0, 3))
    return np.array(numbers, dtype=np.int64), positions, lattice.matrix, tuple(bool(p) for p in lattice.pbc)


class CrystalGraphBuilder:
    """Builds crystal graphs: neighbours within ``cutoff`` Å, optionally only the ``max_neighbors`` nearest.

    ``cutoff=8.0, max_neighbors=12`` is the CGCNN default; ``max_neighbors=None`` gives the plain
    radius graph. ``isolated``: "error" raises ``IsolatedAtomError`` for an atom without neighbours;
    "expand" retries the whole structure with the cutoff multiplied by 1.5 (up to 4x the configured
    cutoff, then raises) until every atom has a neighbour.

    One structure: ``builder(structure)``; many: ``builder.build_many(structures)``, which gives the
    same graphs (bit for bit) with the fixed per-call costs paid once per batch.
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

    # ------------------------------------------------------------------------------------------ one structure
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
        (graph,) = self._build([_prepare(numbers, positions, cell, pbc, name)], raise_errors=True)
        return graph

    # ------------------------------------------------------------------------------------------ many structures
    def build_many(
        self,
        structures: Iterable["Structure"],
        names: Sequence[str | None] | None = None,
        on_error: str = "raise",
    ) -> list[GraphArrays | ValueError]:
        """``GraphArrays`` of many pymatgen ``Structure``s, identical to ``arrays(s)`` of each, built as one batch.

        ``names`` (default ``structures[n]``) are used in error messages. ``on_error="raise"`` raises the
        error of the first failing structure in input order (a ``ValueError`` naming it);
        ``on_error="return"`` puts the error in that structure's place and keeps every other graph.
        Batches of a few hundred to a few thousand structures amortise the fixed costs best.
        """
        items = []
        for n, structure in enumerate(structures):
            name = _name_at(names, n)
            try:
                items.append(structure_arrays(structure, name))
            except ValueError as err:
                items.append(err)
        return self.build_many_from_arrays(items, names=names, on_error=on_error)

    def build_many_from_arrays(
        self,
        systems: Sequence[tuple | ValueError],
        names: Sequence[str | None] | None = None,
        on_error: str = "raise",
    ) -> list[GraphArrays | ValueError]:
        """``build_many`` for ``(numbers, positions Å, cell Å[, pbc])`` tuples (as ``arrays_from_arrays`` takes).

        A ``ValueError`` in place of a tuple is passed through as that item's error.
        """
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error: must be 'raise' or 'return', got {on_error!r}")
        prepared = []
        for n, system in enumerate(systems):
            if isinstance(system, ValueError):
                prepared.append(system)
                continue
            try:
                prepared.append(_prepare(*system[:4], name=_name_at(names, n)))
            except ValueError as err:
                prepared.append(err)
        return self._build(prepared, raise_errors=on_error == "raise")

    # ------------------------------------------------------------------------------------------ core
    def _build(self, systems: list["_System | ValueError"], raise_errors: bool) -> list[GraphArrays | ValueError]:
        """Graphs of prepared systems: value checks, then search rounds until every system is done."""
        results: list[GraphArrays | ValueError | None] = [None] * len(systems)
        for idx, err in _check_values(systems).items():
            systems[idx] = err
        todo = []
        for idx, system in enumerate(systems):
            if isinstance(system, ValueError):
                results[idx] = system
            else:
                todo.append((idx, self.cutoff, self._first_radius(system)))
        while todo:
            found = _Edges([systems[idx] for idx, _, _ in todo], [c for _, c, _ in todo], [r for _, _, r in todo],
                           self.max_neighbors)
            retry = []
            for g, (idx, cutoff, radius) in enumerate(todo):
                if found.complete[g]:
                    results[idx] = found.graph(g)
                elif radius < cutoff:  # an atom's k nearest may lie beyond the first search radius
                    retry.append((idx, cutoff, cutoff))
                elif self.isolated == "expand" and cutoff * _EXPAND_FACTOR <= _EXPAND_MAX * self.cutoff + 1e-9:
                    retry.append((idx, cutoff * _EXPAND_FACTOR, cutoff * _EXPAND_FACTOR))
                else:
                    system, lonely = systems[idx], found.lonely_atom(g)
                    results[idx] = IsolatedAtomError(system.name, lonely, _symbol(int(system.numbers[lonely])), cutoff)
            todo = retry
        if raise_errors:
            for result in results:
                if isinstance(result, ValueError):
                    raise result
        return results  # type: ignore[return-value]

    def _first_radius(self, system: "_System") -> float:
        """Radius (Å) of the first neighbour search: for k-nearest graphs of 3-d periodic cells, a radius that
        holds about 2k neighbours at the cell's mean density (exact either way: atoms whose k nearest are not
        provably inside it make the structure be searched again at the full cutoff)."""
        if self.max_neighbors is None or not all(system.pbc):
            return self.cutoff
        radius = _FIRST_RADIUS_FACTOR * (self.max_neighbors * system.volume / len(system.numbers)) ** (1 / 3)
        return radius if radius < 0.8 * self.cutoff else self.cutoff


def _name_at(names, n: int) -> str | None:
    return f"structures[{n}]" if names is None else names[n]


class _System(NamedTuple):
    """One structure's validated input."""

    numbers: np.ndarray  # int64 [N]
    positions: np.ndarray  # float64 [N, 3], C-contiguous
    cell: np.ndarray  # float64 [3, 3]
    pbc: tuple[bool, bool, bool]
    volume: float  # Å^3 (|det cell|)
    name: str | None


def _prepare(numbers, positions, cell, pbc=(True, True, True), name=None) -> _System:
    """Shape/dtype checks of one structure's arrays (value checks run batched in ``_check_values``)."""
    where = name or "<structure>"
    numbers = np.asarray(numbers)
    if numbers.ndim != 1 or len(numbers) == 0:
        raise ValueError(f"{where}: numbers must be a non-empty 1-d array of atomic numbers, got shape {numbers.shape}")
    if numbers.dtype != np.int64:
        if not np.issubdtype(numbers.dtype, np.integer) and not np.all(np.mod(numbers, 1) == 0):
            raise ValueError(f"{where}: numbers must be integer atomic numbers")
        numbers = numbers.astype(np.int64)
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"{where}: positions must have shape ({len(numbers)}, 3), got {positions.shape}")
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    if cell.shape == (1, 3, 3):
        cell = cell[0]
    if cell.shape != (3, 3):
        raise ValueError(f"{where}: cell must have shape (3, 3) (rows = lattice vectors), got {cell.shape}")
    if isinstance(pbc, (bool, np.bool_)):
        pbc = (bool(pbc),) * 3
    pbc = tuple(bool(p) for p in pbc)
    if len(pbc) != 3:
        raise ValueError(f"{where}: pbc must be a bool or 3 bools, got {pbc}")
    (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = cell.tolist()
    volume = abs(a1 * (b2 * c3 - b3 * c2) - a2 * (b1 * c3 - b3 * c1) + a3 * (b1 * c2 - b2 * c1))
    if any(pbc) and volume < 1e-6:  # NaN volumes pass here and fail the finiteness check
        raise ValueError(f"{where}: cell is singular (volume {volume:.3g} Å^3)")
    return _System(numbers, positions, cell, pbc, volume, name)


def _check_values(systems: list) -> dict[int, ValueError]:
    """Atomic numbers in 1..118 and finite positions/cells, checked once over all systems; errors by index."""
    ok = [(idx, s) for idx, s in enumerate(systems) if isinstance(s, _System)]
    if not ok:
        return {}
    z = np.concatenate([s.numbers for _, s in ok])
    xyz = np.concatenate([s.positions for _, s in ok] + [s.cell for _, s in ok])
    if z.min() >= 1 and z.max() <= 118 and np.isfinite(xyz).all():
        return {}
    errors = {}
    for idx, s in ok:
        where = s.name or "<structure>"
        if s.numbers.min() < 1 or s.numbers.max() > 118:
            errors[idx] = ValueError(
                f"{where}: atomic numbers must be in 1..118, got {s.numbers.min()}..{s.numbers.max()}"
            )
        elif not (np.isfinite(s.positions).all() and np.isfinite(s.cell).all()):
            errors[idx] = ValueError(f"{where}: positions/cell contain NaN or inf")
    return errors


class _Edges:
    """Neighbour edges of a batch of systems: one vesin search per system, everything else batched.

    Edges are sorted by centre, quantised distance, ``j`` and offset, and cut to ``k`` per centre.
    ``complete[g]``: system ``g`` is done — every atom has a neighbour and, when it was searched within a
    radius below its cutoff, every atom's selection provably equals that of the full-cutoff search (each atom
    has ``k`` selected edges and its ``k``-th lies within the search radius, so every edge that sorts before or
    ties with it was found: vesin reports a pair's distance from its ``i``, ``j`` and shift alone, whatever
    the search radius).
    """

    def __init__(self, systems: list[_System], cutoffs: list[float], radii: list[float], k: int | None):
        self.systems = systems
        n_sys = len(systems)
        n_atoms = np.fromiter((len(s.numbers) for s in systems), np.int64, n_sys)
        self.node_ptr = node_ptr = np.zeros(n_sys + 1, np.int64)
        np.cumsum(n_atoms, out=node_ptr[1:])
        n_nodes = int(node_ptr[-1])

        # the searches (vesin's C cell list; one calculator reused, its radius set per system)
        calculator = vesin.NeighborList(cutoff=radii[0] + _SEARCH_PAD, full_list=True, n_threads=1)
        pairs, shifts, dists = [], [], []
        for system, radius in zip(systems, radii):
            calculator.cutoff = radius + _SEARCH_PAD
            p, s, d = calculator.compute(system.positions, system.cell, system.pbc, quantities="PSd")
            pairs.append(p)
            shifts.append(s)
            dists.append(d)
        n_pairs = np.fromiter((len(d) for d in dists), np.int64, n_sys)
        pair = np.concatenate(pairs).astype(np.int64).reshape(-1, 2)
        shift = np.concatenate(shifts).reshape(-1, 3)
        dist = np.concatenate(dists)
        sid = np.repeat(np.arange(n_sys), n_pairs)
        i, j = pair[:, 0], pair[:, 1]

        # exact cutoff: d <= cutoff + CUTOFF_TOL (vesin searched _SEARCH_PAD further)
        limits = np.asarray(cutoffs, dtype=np.float64) + CUTOFF_TOL
        keep = dist <= (limits[0] if (limits == limits[0]).all() else limits[sid])
        if not keep.all():
            i, j, shift, dist, sid = i[keep], j[keep], shift[keep], dist[keep], sid[keep]
        gi = i + node_ptr[sid]  # centre as a batch-global node index
        dq = np.rint(dist / _TIE_RESOLUTION).astype(np.int64)

        order, per_node = _select(gi, j, shift, dq, k, n_nodes)
        self.i, self.j, self.sid = i[order], j[order], sid[order]
        self.shift = shift[order].astype(np.int64)
        self.dist = dist[order]
        gi = gi[order]

        # which systems are done
        lonely = per_node == 0
        unsettled = lonely.copy()
        radius_of = np.asarray(radii, dtype=np.float64)
        short = radius_of < np.asarray(cutoffs, dtype=np.float64)
        if k is not None and short.any():
            last = np.cumsum(per_node) - 1  # position of each node's last selected edge
            last_dist = np.where(lonely, np.inf, self.dist[np.maximum(last, 0)] if len(self.dist) else np.inf)
            node_sid = np.repeat(np.arange(n_sys), n_atoms)
            unsettled |= short[node_sid] & ((per_node < k) | (last_dist > radius_of[node_sid]))
        self.lonely = lonely
        self.complete = ~np.logical_or.reduceat(unsettled, node_ptr[:-1])

        # graph arrays for the whole batch; each system's graph is a set of slices (views)
        n_edges = np.bincount(self.sid, minlength=n_sys)
        self.edge_ptr = edge_ptr = np.zeros(n_sys + 1, np.int64)
        np.cumsum(n_edges, out=edge_ptr[1:])
        cells = np.stack([s.cell for s in systems])
        positions = np.concatenate([s.positions for s in systems])
        gj = self.j + node_ptr[self.sid]
        fs = self.shift.astype(np.float64)
        cell_rows = cells[self.sid]
        vec = (positions[gj] - positions[gi]) + (
            fs[:, 0:1] * cell_rows[:, 0] + fs[:, 1:2] * cell_rows[:, 1] + fs[:, 2:3] * cell_rows[:, 2]
        )
        self.vec32 = vec.astype(np.float32)
        self.dist32 = self.dist.astype(np.float32)
        self.pos32 = positions.astype(np.float32)
        self.cell32 = cells.astype(np.float32)
        self.z = np.concatenate([s.numbers for s in systems])
        # edge_index of system g: rows i then j, contiguous in ei[2 * edge_ptr[g] : 2 * edge_ptr[g + 1]]
        at = np.arange(len(self.i)) + edge_ptr[self.sid]
        self.ei = np.empty(2 * len(self.i), np.int64)
        self.ei[at] = self.i
        self.ei[at + n_edges[self.sid]] = self.j

    def graph(self, g: int) -> GraphArrays:
        n0, n1 = int(self.node_ptr[g]), int(self.node_ptr[g + 1])
        e0, e1 = int(self.edge_ptr[g]), int(self.edge_ptr[g + 1])
        return GraphArrays(
            z=self.z[n0:n1],
            pos=self.pos32[n0:n1],
            cell=self.cell32[g : g + 1],
            edge_index=self.ei[2 * e0 : 2 * e1].reshape(2, e1 - e0),
            edge_vec=self.vec32[e0:e1],
            edge_dist=self.dist32[e0:e1],
            cell_offset=self.shift[e0:e1],
        )

    def lonely_atom(self, g: int) -> int:
        """Index (in system ``g``) of its first atom without a neighbour."""
        n0, n1 = int(self.node_ptr[g]), int(self.node_ptr[g + 1])
        return int(np.flatnonzero(self.lonely[n0:n1])[0])


def _select(gi: np.ndarray, j: np.ndarray, shift: np.ndarray, dq: np.ndarray, k: int | None, n_nodes: int):
    """Permutation sorting edges by centre ``gi``, quantised distance ``dq``, ``j``, then offset
    (lexicographic), keeping each centre's first ``k`` (all when ``k`` is None); and edges kept per node.

    Sorting uses one 64-bit key where the values fit (the common case): centre and distance packed into a
    primary key, ties in it resolved by a second key packing the rank of the primary value with ``j`` and
    the offset; for k-nearest graphs only each centre's first ``k`` (plus ties with the ``k``-th) enter
    the second sort. Otherwise a 6-key ``lexsort``.
    """
    count = np.bincount(gi, minlength=n_nodes)
    kept = count if k is None else np.minimum(count, k)
    if not len(gi):
        return np.zeros(0, np.int64), kept
    span = int(np.abs(shift).max())
    j_bits = max(int(j.max()).bit_length(), 1)
    if int(dq.max()) < 2**32 and n_nodes < 2**31 and span < 127:
        primary = (gi << 32) | dq
        order = np.argsort(primary)
        key = primary[order]
        if k is not None:
            start = np.cumsum(count) - count
            rank = np.arange(len(order)) - start[key >> 32]
            kth = np.full(n_nodes, np.iinfo(np.int64).max)
            full = count >= k
            kth[full] = key[start[full] + (k - 1)]
            cand = (rank < k) | (key == kth[key >> 32])
            if not cand.all():
                order, key = order[cand], key[cand]
        tied = key[1:] == key[:-1]
        if tied.any():
            group = np.zeros(len(key), np.int64)
            np.cumsum(~tied, out=group[1:])
            if int(group[-1]) < 2 ** (39 - j_bits):
                s = shift[order].astype(np.int64) + 128
                tie = (j[order] << 24) | (s[:, 0] << 16) | (s[:, 1] << 8) | s[:, 2]
                order = order[np.argsort((group << (24 + j_bits)) | tie)]
            else:
                s = shift[order]
                order = order[np.lexsort((s[:, 2], s[:, 1], s[:, 0], j[order], group))]
    else:
        order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, dq, gi))
    if k is not None and len(order) > int(kept.sum()):
        centre = gi[order]
        sel_count = np.bincount(centre, minlength=n_nodes)
        first = np.cumsum(sel_count) - sel_count  # each node's first position in ``order``
        order = order[np.arange(len(order)) - first[centre] < k]
    return order, kept


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)
