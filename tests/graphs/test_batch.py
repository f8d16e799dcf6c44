"""CrystalGraphBuilder.build_many (batch path) and the adaptive first search: bit-identical graphs, errors."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
import vesin
from pymatgen.core import Lattice, Structure

from support.paths import ROOT
import tlgnn.graphs.builder as builder_module
from tlgnn.graphs import CrystalGraphBuilder, IsolatedAtomError
from tlgnn.graphs.builder import structure_arrays

DATA = ROOT / "data"
SAMPLE = DATA / "mp_structures_sample.jsonl.gz"
SLABS = DATA / "structures" / "extxyz" / "tinnet_oh_first6.extxyz.gz"
FIELDS = ("z", "pos", "cell", "edge_index", "edge_vec", "edge_dist", "cell_offset")


@pytest.fixture(scope="module")
def structures() -> list[Structure]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line in gzip.open(SAMPLE, "rt"):
            out.append(Structure.from_str(json.loads(line)["cif"], fmt="cif"))
    bcc = Structure(Lattice.cubic(2.86), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    po = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])  # 6 neighbours tied at 3.35 Å, 12 at 4.74 Å
    return out + [bcc, po]


def assert_identical(a, b) -> None:
    for field in FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), field
        assert y.flags.c_contiguous, field


@pytest.mark.parametrize("cutoff,k", [(8.0, 12), (6.0, None), (5.0, 7)])
def test_build_many_is_bit_identical_to_single_builds(structures, cutoff, k):
    builder = CrystalGraphBuilder(cutoff=cutoff, max_neighbors=k)
    batch = builder.build_many(structures, on_error="return")
    assert len(batch) == len(structures)
    for n, (s, g) in enumerate(zip(structures, batch)):
        try:
            single = builder.arrays(s, name=f"structures[{n}]")
        except IsolatedAtomError as err:  # e.g. Cs at 5 Å: the same error, in its place
            assert type(g) is IsolatedAtomError and str(g) == str(err)
            continue
        assert_identical(single, g)
    data = batch[-2].to_data()  # bcc Fe, k = 12: 8 first-shell + 4 of the 6 tied second-shell neighbours
    if k == 12:
        assert data.edge_index.shape[1] == 12
        assert data.cell_offset[8:].tolist() == sorted(data.cell_offset[8:].tolist())


def test_build_many_from_arrays_slab_and_mixed_pbc(structures):
    import ase.io

    atoms = ase.io.read(SLABS, index=":")
    systems = [(a.numbers, a.positions, a.cell[:], a.pbc) for a in atoms] + [structure_arrays(s)
                                                                              for s in structures[:20]]
    builder = CrystalGraphBuilder(cutoff=6.0, max_neighbors=12)
    batch = builder.build_many_from_arrays(systems)
    for system, g in zip(systems, batch):
        assert_identical(builder.arrays_from_arrays(*system), g)
    assert (batch[0].cell_offset[:, 2] == 0).all()


class _CountingEdges(builder_module._Edges):
    """Records how many systems each search round finished while searched below their cutoff."""

    early: list[int] = []

    def __init__(self, systems, cutoffs, radii, k):
        super().__init__(systems, cutoffs, radii, k)
        short = np.asarray(radii) < np.asarray(cutoffs)
        _CountingEdges.early.append(int((self.complete & short).sum()))


def test_adaptive_first_search_equals_full_cutoff_search(structures, monkeypatch):
    """The small first search (and its fallback) gives exactly the full-cutoff graph."""
    builder = CrystalGraphBuilder(cutoff=8.0, max_neighbors=12)
    monkeypatch.setattr(builder_module, "_Edges", _CountingEdges)
    _CountingEdges.early = []
    adaptive = builder.build_many(structures)
    assert _CountingEdges.early[0] > 0.8 * len(structures)  # most finish in the small first search
    monkeypatch.setattr(builder_module, "_FIRST_RADIUS_FACTOR", 1e9)  # always the full cutoff
    full = builder.build_many(structures)
    monkeypatch.setattr(builder_module, "_FIRST_RADIUS_FACTOR", 0.45)  # first search mostly too small
    _CountingEdges.early = []
    tiny = builder.build_many(structures)
    assert len(_CountingEdges.early) == 2 and _CountingEdges.early[0] < 0.5 * len(structures)
    for a, b, c in zip(adaptive, full, tiny):
        assert_identical(b, a)
        assert_identical(b, c)


def test_vesin_distance_does_not_depend_on_search_radius(structures):
    """What the adaptive search relies on: a pair's reported distance depends on (i, j, shift) only."""
    checked = 0
    for s in structures[:40]:
        _, positions, cell, _ = structure_arrays(s)
        found = {}
        for radius in (8.0, 4.0):
            i, j, shift, d = vesin.NeighborList(cutoff=radius, full_list=True).compute(positions, cell, True, "ijSd")
            found[radius] = {(a, b, *c): x for a, b, c, x in zip(i.tolist(), j.tolist(), shift.tolist(), d.tolist())}
        assert all(found[8.0][key] == x for key, x in found[4.0].items())
        checked += len(found[4.0])
    assert checked > 1000


def test_batch_errors_stay_with_their_structure(structures):
    gas = Structure(Lattice.cubic(12.0), ["H", "H", "Ar"], [[0, 0, 0], [0.0617, 0, 0], [0.5, 0.5, 0.5]])
    disordered = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    builder = CrystalGraphBuilder(cutoff=5.0)
    fine = [s for s in structures[:10] if not isinstance(builder.build_many([s], on_error="return")[0], ValueError)]
    batch = [fine[0], disordered, gas, fine[1]]
    out = builder.build_many(batch, on_error="return")
    assert_identical(builder.arrays(fine[0]), out[0])
    assert_identical(builder.arrays(fine[1]), out[3])
    assert isinstance(out[1], ValueError) and str(out[1]).startswith("structures[1]: structure is disordered")
    assert isinstance(out[2], IsolatedAtomError)
    assert str(out[2]).startswith("structures[2]: atom 2 (Ar) has no neighbour within 5 Å")
    with pytest.raises(ValueError, match=r"^b: structure is disordered"):
        builder.build_many(batch, names=["a", "b", "c", "d"])
    with pytest.raises(IsolatedAtomError, match=r"^c: atom 2"):  # the first failing structure, in input order
        builder.build_many(batch[2:0:-1], names=["c", "b"])
    expand = CrystalGraphBuilder(cutoff=5.0, isolated="expand")
    out = expand.build_many(batch, on_error="return")
    assert_identical(expand.arrays(gas), out[2])
    assert_identical(expand.arrays(fine[1]), out[3])
    # bad arrays: each error names its system, the good one is built
    good = structure_arrays(fine[2])
    nan = (good[0], np.where(np.arange(len(good[0]))[:, None] == 0, np.nan, good[1]), good[2])
    out = builder.build_many_from_arrays([(np.zeros(2, int), np.zeros((2, 3)), np.eye(3) * 4), nan, good,
                                          ([1], np.zeros((2, 3)), np.eye(3))], names=["z0", "nan", "ok", "shape"],
                                         on_error="return")
    assert str(out[0]).startswith("z0: atomic numbers must be in 1..118")
    assert str(out[1]).startswith("nan: positions/cell contain NaN")
    assert_identical(builder.arrays_from_arrays(*good), out[2])
    assert str(out[3]).startswith("shape: positions must have shape (1, 3)")
    with pytest.raises(ValueError, match="on_error"):
        builder.build_many([], on_error="skip")
    assert builder.build_many([]) == []


def test_select_matches_lexsort_reference():
    """The packed-key sort equals a plain 6-key lexsort, on every code path (packed, lexsort ties, lexsort)."""
    rng = np.random.default_rng(0)
    n_nodes, m = 60, 4000
    for j_max, s_max in ((40, 3), (2**33, 3), (40, 200)):
        gi = rng.integers(0, n_nodes - 1, m)  # the last node has no edge
        dq = rng.integers(0, 25, m) * 10**7  # many exact ties
        j = rng.integers(0, j_max, m)
        shift = rng.integers(-s_max, s_max + 1, (m, 3)).astype(np.int32)
        ref = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, dq, gi))
        for k in (None, 1, 5, 200):
            order, kept = builder_module._select(gi, j, shift, dq, k, n_nodes)
            count = np.bincount(gi, minlength=n_nodes)
            expect = ref if k is None else ref[np.concatenate([np.arange(c) < k for c in count[count > 0]])]
            assert np.array_equal(order, expect), (j_max, s_max, k)
            assert np.array_equal(kept, count if k is None else np.minimum(count, k)) and kept[-1] == 0


def test_cache_keeps_the_good_graphs_when_one_structure_fails(structures, tmp_path):
    from tlgnn.graphs import GraphCache

    gas = Structure(Lattice.cubic(12.0), ["H", "H", "Ar"], [[0, 0, 0], [0.0617, 0, 0], [0.5, 0.5, 0.5]])
    disordered = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    good = structures[:130]  # 132 items: two worker processes
    builder = CrystalGraphBuilder(cutoff=6.0)
    cache = GraphCache(tmp_path, builder)
    with pytest.raises(IsolatedAtomError, match=r"^structures\[3\] \(key [0-9a-f]{12}\): atom 2 \(Ar\)") as info:
        cache.get_many(good[:3] + [gas] + good[3:50] + [disordered] + good[50:], n_jobs=2)
    assert "2 of 132 structures failed; the other graphs were built and cached" in str(info.value.__notes__)
    assert len(cache) == 130
    store = cache.get_many(good)  # all from the cache, identical to direct builds
    for s, g in zip(good, store):
        ref = builder.arrays(s).to_data()
        assert all(bool((getattr(g, f) == getattr(ref, f)).all()) for f in FIELDS)
