"""tlgnn.graphs builder, elemental features and Gaussian expansion, checked against pymatgen/ASE."""

from __future__ import annotations

import gzip
import json
import math
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from support.paths import ROOT
from tlgnn.graphs import ATOM_FEATURES, CrystalGraphBuilder, GaussianExpansion, IsolatedAtomError
from tlgnn.graphs.features import CATEGORIES, build_atom_feature_table, category_slices, load_atom_feature_table

DATA = ROOT / "data"
SAMPLE = DATA / "mp_structures_sample.jsonl.gz"
SLABS = DATA / "structures" / "extxyz" / "tinnet_oh_first6.extxyz.gz"


@pytest.fixture(scope="module")
def mp_structures() -> list[tuple[str, Structure]]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line in gzip.open(SAMPLE, "rt"):
            rec = json.loads(line)
            out.append((rec["material_id"], Structure.from_str(rec["cif"], fmt="cif")))
    assert len(out) == 150
    return out


def reference_edges(structure: Structure, cutoff: float) -> dict[tuple, float]:
    """pymatgen's neighbour list (pairs with d <= cutoff + 1e-8, self excluded) as {(i, j, image): d}."""
    ci, pi, images, dist = structure.get_neighbor_list(cutoff)
    return {
        (int(i), int(j), tuple(int(round(x)) for x in img)): float(d)
        for i, j, img, d in zip(ci, pi, images, dist)
    }


def graph_edges(data) -> dict[tuple, float]:
    ei, off, dist = data.edge_index.numpy(), data.cell_offset.numpy(), data.edge_dist.numpy()
    edges = {(int(i), int(j), tuple(map(int, o))): float(d) for i, j, o, d in zip(ei[0], ei[1], off, dist)}
    assert len(edges) == ei.shape[1], "duplicate edges"
    return edges


def assert_same_radius_graph(data, structure: Structure, cutoff: float) -> None:
    ref = reference_edges(structure, cutoff)
    got = graph_edges(data)
    assert set(got) == set(ref), (
        f"{len(set(got) - set(ref))} extra, {len(set(ref) - set(got))} missing edges vs pymatgen"
    )
    diff = max((abs(got[k] - ref[k]) for k in ref), default=0.0)
    assert diff < 1e-6


def assert_consistent(data) -> None:
    """Field dtypes/shapes of the contract, edge_vec/edge_dist geometry and the documented sort order."""
    n, e = data.num_nodes, data.edge_index.shape[1]
    assert set(data.keys()) == {"z", "pos", "cell", "edge_index", "edge_vec", "edge_dist", "cell_offset", "num_nodes"}
    batch = Batch.from_data_list([data, data])  # collates like a Data built by Data(**fields)
    assert batch.num_graphs == 2 and int(batch.edge_index[:, e:].min()) >= n and batch.cell.shape == (2, 3, 3)
    assert data.z.dtype == torch.long and data.z.shape == (n,)
    assert data.pos.dtype == torch.float32 and data.pos.shape == (n, 3)
    assert data.cell.dtype == torch.float32 and data.cell.shape == (1, 3, 3)
    assert data.edge_index.dtype == torch.long and data.cell_offset.dtype == torch.long
    assert data.edge_vec.shape == (e, 3) and data.edge_dist.shape == (e,) and data.cell_offset.shape == (e, 3)
    i, j = data.edge_index.double()
    vec = data.pos.double()[j.long()] + data.cell_offset.double() @ data.cell[0].double() - data.pos.double()[i.long()]
    assert torch.allclose(vec, data.edge_vec.double(), atol=1e-4)
    assert torch.allclose(data.edge_vec.double().norm(dim=1), data.edge_dist.double(), atol=1e-5)
    assert bool((i[1:] >= i[:-1]).all()), "edges not sorted by centre"
    same = i[1:] == i[:-1]
    assert bool((data.edge_dist[1:][same] >= data.edge_dist[:-1][same] - 1e-6).all()), "not sorted by distance"


# --------------------------------------------------------------------------------------------- radius graphs
def test_radius_graph_matches_pymatgen_on_150_real_structures(mp_structures):
    builder = CrystalGraphBuilder(cutoff=6.0, max_neighbors=None)
    for mid, s in mp_structures:
        data = builder(s, name=mid)
        assert_same_radius_graph(data, s, 6.0)
        assert data.z.tolist() == list(s.atomic_numbers)
    assert_consistent(data)


def test_knn_graph_matches_cgcnn_selection(mp_structures):
    """12 nearest within 8 Å, as CGCNN picks them (get_all_neighbors, sorted by distance, first 12)."""
    builder = CrystalGraphBuilder(cutoff=8.0, max_neighbors=12)
    for mid, s in mp_structures[:60]:
        data = builder(s, name=mid)
        assert_consistent(data)
        got = graph_edges(data)
        for i, nbrs in enumerate(s.get_all_neighbors(8.0)):
            ref = sorted(nbrs, key=lambda n: n.nn_distance)[:12]
            mine = sorted((d, k) for k, d in got.items() if k[0] == i)
            assert len(mine) == len(ref)
            assert np.allclose([d for d, _ in mine], [n.nn_distance for n in ref], atol=1e-6)
            # identical picks except among neighbours tied with the 12th (tie rule tested separately)
            last = ref[-1].nn_distance
            ref_keys = {(i, n.index, tuple(int(x) for x in n.image)) for n in ref if n.nn_distance < last - 1e-6}
            assert ref_keys <= {k for _, k in mine}, mid


def test_one_atom_cells_include_self_images():
    po = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    data = CrystalGraphBuilder(cutoff=8.0, max_neighbors=None)(po)
    assert_same_radius_graph(data, po, 8.0)
    assert (data.edge_index == 0).all()
    assert_consistent(data)
    # lattice points within 8 Å of the origin (minus the origin itself), counted independently
    r = range(-3, 4)
    expected = sum(1 for a in r for b in r for c in r if 0 < 3.35 * math.sqrt(a * a + b * b + c * c) <= 8.0)
    assert data.edge_index.shape[1] == expected
    fe = Structure(Lattice.cubic(2.86), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    assert len(fe) == 1
    data = CrystalGraphBuilder(cutoff=8.0, max_neighbors=None)(fe)
    assert_same_radius_graph(data, fe, 8.0)


def test_tie_rule_at_the_kth_neighbour():
    """bcc Fe: 8 neighbours at 2.48 Å, 6 at 2.86 Å; k=12 keeps the 4 second-shell ones with smallest offsets."""
    fe = Structure(Lattice.cubic(2.86), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    data = CrystalGraphBuilder(cutoff=8.0, max_neighbors=12)(fe)
    d = data.edge_dist.numpy()
    assert data.edge_index.shape[1] == 12
    assert np.allclose(d[:8], 2.86 * math.sqrt(3) / 2, atol=1e-5) and np.allclose(d[8:], 2.86, atol=1e-5)
    second = [tuple(map(int, o)) for o, dist in reference_offsets(fe, 2.9) if abs(dist - 2.86) < 1e-4]
    assert len(second) == 6
    assert [tuple(map(int, o)) for o in data.cell_offset[8:].tolist()] == sorted(second)[:4]
    # within the tie, edges are ordered by offset lexicographically (all j == 0 here)
    assert data.cell_offset[8:].tolist() == sorted(data.cell_offset[8:].tolist())


def reference_offsets(structure: Structure, cutoff: float):
    ci, pi, images, dist = structure.get_neighbor_list(cutoff)
    return [(img.round().astype(int), d) for img, d in zip(images, dist)]


def test_pair_exactly_at_cutoff_is_included():
    po = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])
    data = CrystalGraphBuilder(cutoff=3.35, max_neighbors=None)(po)
    assert data.edge_index.shape[1] == 6  # the 6 face neighbours sit at exactly 3.35 Å
    assert_same_radius_graph(data, po, 3.35)
    assert CrystalGraphBuilder(cutoff=3.35 - 1e-6, isolated="expand", max_neighbors=None)(po).edge_dist.min() >= 3.35 - 1e-5


def test_needle_and_skewed_cells(mp_structures):
    needle = Structure(Lattice.from_parameters(1.3, 9.0, 9.0, 90, 90, 90), ["Li"], [[0, 0, 0]])
    data = CrystalGraphBuilder(cutoff=8.0, max_neighbors=None)(needle)
    assert_same_radius_graph(data, needle, 8.0)
    assert int(data.cell_offset[:, 0].abs().max()) == 6  # 6 * 1.3 = 7.8 Å along the needle
    base = dict(mp_structures)["mp-1000"] if "mp-1000" in dict(mp_structures) else mp_structures[3][1]
    # the same crystal in a very skewed (unimodular-transformed) cell: identical distance multiset
    skewed = base.copy()
    skewed.make_supercell([[1, 0, 0], [4, 1, 0], [4, 4, 1]])
    assert len(skewed) == len(base) and min(skewed.lattice.angles) < 20
    builder = CrystalGraphBuilder(cutoff=7.0, max_neighbors=None)
    g0, g1 = builder(base), builder(skewed)
    assert_same_radius_graph(g1, skewed, 7.0)
    assert np.allclose(np.sort(g0.edge_dist.numpy()), np.sort(g1.edge_dist.numpy()), atol=1e-5)
    # a real structure's fractional coordinates in a triclinic cell with 20 degree angles
    lat = Lattice.from_parameters(5.0, 5.5, 6.0, 20, 20, 20)
    tri = Structure(lat, base.species, base.frac_coords)
    assert_same_radius_graph(builder(tri), tri, 7.0)


def test_large_supercell(mp_structures):
    s = next(st for _, st in mp_structures if 8 <= len(st) <= 20).copy()
    s.make_supercell([4, 4, 4] if len(s) * 64 >= 500 else [5, 5, 5])
    assert len(s) >= 500
    data = CrystalGraphBuilder(cutoff=4.0, max_neighbors=None)(s)
    assert_same_radius_graph(data, s, 4.0)


def test_slab_pbc_false_direction_matches_ase_and_pymatgen():
    import ase.io
    from ase.neighborlist import neighbor_list
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = ase.io.read(SLABS, index=1)
    assert list(atoms.pbc) == [True, True, False]
    builder = CrystalGraphBuilder(cutoff=6.0, max_neighbors=None)
    data = builder.from_arrays(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc)
    assert_consistent(data)
    assert (data.cell_offset[:, 2] == 0).all()  # no images through the vacuum direction
    i, j, S, d = neighbor_list("ijSd", atoms, 6.0)
    ref = {(int(a), int(b), tuple(map(int, s))): x for a, b, s, x in zip(i, j, S, d)}
    got = graph_edges(data)
    assert set(got) == set(ref)
    structure = AseAtomsAdaptor.get_structure(atoms)
    assert tuple(structure.lattice.pbc) == (True, True, False)
    assert_same_radius_graph(builder(structure), structure, 6.0)


def test_unwrapped_positions_give_same_graph(mp_structures):
    s = mp_structures[10][1]
    builder = CrystalGraphBuilder(cutoff=8.0, max_neighbors=12)
    pos = s.cart_coords.copy()
    shifted = pos + np.array([2, -1, 3]) @ s.lattice.matrix * (np.arange(len(s)) % 2 == 0)[:, None]
    a = builder.from_arrays(s.atomic_numbers, pos, s.lattice.matrix)
    b = builder.from_arrays(s.atomic_numbers, shifted, s.lattice.matrix)
    assert torch.allclose(a.edge_dist, b.edge_dist, atol=1e-5)

    def vec_set(g):  # offsets differ (shifted atoms), so the order inside distance ties may differ too
        return {(int(i), int(j), *np.round(v, 3).tolist()) for (i, j), v in zip(g.edge_index.T, g.edge_vec.numpy())}

    assert vec_set(a) == vec_set(b)
    assert torch.equal(builder(s).edge_index, a.edge_index)


def test_isolated_atom_error_and_expand():
    s = Structure(Lattice.cubic(12.0), ["H", "H", "Ar"], [[0, 0, 0], [0.0617, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(IsolatedAtomError, match=r"gas-box: atom 2 \(Ar\) has no neighbour within 5 Å") as info:
        CrystalGraphBuilder(cutoff=5.0)(s, name="gas-box")
    assert isinstance(info.value, ValueError) and info.value.index == 2 and info.value.element == "Ar"
    data = CrystalGraphBuilder(cutoff=5.0, isolated="expand", max_neighbors=None)(s)
    counts = torch.bincount(data.edge_index[0], minlength=3)
    assert (counts > 0).all()
    assert data.edge_dist.max() <= 11.25 + 1e-5  # 5 -> 7.5 -> 11.25 Å
    far = Structure(Lattice.cubic(60.0), ["H", "Ar"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(IsolatedAtomError):  # beyond 4x the cutoff: still an error, never a lone node
        CrystalGraphBuilder(cutoff=5.0, isolated="expand")(far)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="cutoff"):
        CrystalGraphBuilder(cutoff=-1)
    with pytest.raises(ValueError, match="max_neighbors"):
        CrystalGraphBuilder(max_neighbors=0)
    with pytest.raises(ValueError, match="isolated"):
        CrystalGraphBuilder(isolated="self_loop")
    b = CrystalGraphBuilder()
    with pytest.raises(ValueError, match="x: positions must have shape"):
        b.from_arrays([1, 1], np.zeros((3, 3)), np.eye(3), name="x")
    with pytest.raises(ValueError, match="singular"):
        b.from_arrays([1], np.zeros((1, 3)), np.zeros((3, 3)))
    disordered = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match="disordered"):
        b(disordered)


def test_settings_are_json_and_change_with_options():
    a, b = CrystalGraphBuilder().settings, CrystalGraphBuilder(cutoff=6.0).settings
    assert json.loads(json.dumps(a)) == a and a != b
    assert a["cutoff"] == 8.0 and a["max_neighbors"] == 12 and "format_version" in a


# --------------------------------------------------------------------------------------------- features
def test_atom_feature_table_stored_equals_fresh_build():
    fresh = build_atom_feature_table()
    assert fresh.shape == (101, 92)
    assert np.array_equal(load_atom_feature_table(), fresh)
    assert ATOM_FEATURES.dtype == torch.float32 and ATOM_FEATURES.shape == (101, 92)
    assert torch.equal(ATOM_FEATURES, torch.from_numpy(fresh))


def test_atom_features_one_hot_per_category():
    t = ATOM_FEATURES.numpy()
    assert not t[0].any()
    documented_missing = {"electronegativity": {2, 10, 18}, "covalent_radius_pm": {97, 98, 99, 100},
                          "log_atomic_volume_cm3_mol": {85, 87, 100}}
    for name, sl in category_slices().items():
        sums = t[1:, sl].sum(axis=1)
        zero = {z for z in range(1, 101) if sums[z - 1] == 0}
        assert set(np.unique(sums)) <= {0.0, 1.0}
        assert zero == documented_missing.get(name, set()), name
    assert len(CATEGORIES) == 9 and t.shape[1] == 92
    sl = category_slices()
    assert t[26, sl["group"]].argmax() == 7  # Fe: group 8
    assert t[8, sl["period"]].argmax() == 1  # O: period 2
    assert t[58, sl["group"]].argmax() == 18  # Ce: f-block "group"
    assert t[2, sl["block"]].argmax() == 0  # He: s block
    assert t[9, sl["electronegativity"]].argmax() == 9  # F (3.98): top bin
    assert t[55, sl["log_atomic_volume_cm3_mol"]].argmax() == 9  # Cs: largest volume bin
    assert t[6, sl["valence_electrons"]].argmax() == 3  # C: 4 valence electrons


# --------------------------------------------------------------------------------------------- gaussian
def test_gaussian_expansion_matches_cgcnn_formula():
    g = GaussianExpansion()
    d = torch.tensor([0.0, 0.2, 1.234, 8.0])
    out = g(d)
    assert out.shape == (4, 41)
    centres = np.arange(0.0, 8.0 + 0.2, 0.2)  # CGCNN: np.arange(dmin, dmax + step, step), var = step
    ref = np.exp(-((d.numpy()[:, None] - centres[None]) ** 2) / 0.2**2)
    assert np.allclose(out.numpy(), ref, atol=1e-6)
    assert out[0, 0] == 1 and abs(float(out[0, 1]) - math.exp(-1)) < 1e-6 and out[3, 40] == 1
    assert GaussianExpansion(0.0, 5.0, 11, 0.5)(torch.tensor([2.5])).argmax() == 5
    with pytest.raises(ValueError, match="width"):
        GaussianExpansion(width=0)
