"""Encoders on real crystals: shapes, invariances, faithfulness of CGCNN, triplets, layer groups, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from support.structures import BUILDER, graphs, structures
from tlgnn.graphs import ATOM_FEATURES, CrystalGraphBuilder
from tlgnn.models import ENCODERS, build_encoder
from tlgnn.models.encoders.triplets import angle_triplets
from tlgnn.models.registry import accepted_options

SMALL = {"cgcnn": {"hidden_channels": 16, "num_layers": 2, "out_channels": 24},
         "m3gnet_lite": {"hidden_channels": 16, "num_layers": 2, "out_channels": 24},
         "chgnet": {},  # the pretrained CHGNet (tests/models/test_chgnet.py has its own)
         "stack": {"encoders": [{"name": "cgcnn", "hidden_channels": 16, "num_layers": 2, "out_channels": 24},
                                {"name": "m3gnet_lite", "hidden_channels": 8, "num_layers": 1, "out_channels": 12}]}}


def taking(option: str) -> list[str]:
    """The registered encoders whose constructor takes ``option``."""
    return sorted(name for name, cls in ENCODERS.items() if option in accepted_options(cls))


def small(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder(name, **{**SMALL[name], **extra}).eval()


def rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def variants(s: Structure, seed: int = 0) -> dict[str, Structure]:
    perm = np.random.default_rng(seed).permutation(len(s))
    return {
        "original": s,
        "permuted": Structure(s.lattice, [s.species[i] for i in perm], s.frac_coords[perm]),
        "image_shift": Structure(s.lattice, s.species, s.frac_coords + 1.0),
        "rotated": Structure(Lattice(s.lattice.matrix @ rotation(seed).T), s.species, s.frac_coords),
    }


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_shapes_on_real_batch(name):
    data = graphs(6)
    batch = next(iter(DataLoader(data, batch_size=6)))
    enc = small(name)
    out = enc(batch)
    n_atoms = sum(g.num_nodes for g in data)
    assert out.node_emb.shape[0] == n_atoms
    assert out.graph_emb.shape == (6, enc.out_dim)
    assert torch.isfinite(out.graph_emb).all() and torch.isfinite(out.node_emb).all()
    # different crystals give different embeddings
    assert torch.cdist(out.graph_emb, out.graph_emb).triu(1)[torch.triu(torch.ones(6, 6), 1).bool()].min() > 1e-4


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_invariances(name):
    enc = small(name)
    per_variant = {}
    for kind in ("original", "permuted", "image_shift", "rotated"):
        batch = Batch.from_data_list([BUILDER(variants(s, k)[kind]) for k, s in enumerate(structures(6))])
        with torch.no_grad():
            per_variant[kind] = enc(batch).graph_emb
    ref = per_variant["original"]
    scale = ref.abs().max()
    for kind, emb in per_variant.items():
        assert torch.allclose(emb, ref, atol=1e-5 * float(scale) + 1e-6), kind


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_batching_does_not_mix_graphs(name):
    enc = small(name)
    data = graphs(4)
    together = enc(Batch.from_data_list(data)).graph_emb
    alone = torch.cat([enc(Batch.from_data_list([g])).graph_emb for g in data])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_layer_groups_cover_every_parameter_once(name):
    enc = small(name)
    groups = enc.layer_groups()
    assert len(groups) >= 3
    seen = [id(p) for g in groups for p in g.parameters()]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in enc.parameters()}


@pytest.mark.parametrize("name", taking("atom_input"))
def test_learned_atom_embedding_option(name):
    enc = small(name, atom_input="embedding")
    out = enc(Batch.from_data_list(graphs(3)))
    assert out.graph_emb.shape == (3, enc.out_dim)
    embeddings = [m for m in enc.layer_groups()[0].modules() if isinstance(m, torch.nn.Embedding)]
    assert len(embeddings) == 1 and embeddings[0].num_embeddings == ATOM_FEATURES.shape[0]


@pytest.mark.parametrize("edge_projection", ["per_atom", "per_edge"])
def test_cgcnn_matches_reference_formulation(edge_projection):
    """Both ways of evaluating the conv equal the paper's z_ij = [v_i, v_j, u_ij] -> Linear -> BN -> gate form."""
    enc = small("cgcnn", edge_projection=edge_projection).train()
    batch = Batch.from_data_list(graphs(4))
    for conv in enc.convs:  # non-trivial batch-norm affine parameters
        for bn in (conv.bn1, conv.bn2):
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
    out = enc(batch).graph_emb

    x = enc.embedding.linear(ATOM_FEATURES[batch.z])
    u = enc.expansion(batch.edge_dist)
    assert u.shape[1] == 41  # CGCNN: 0..8 Å in steps of 0.2 Å
    i, j = batch.edge_index
    for conv in enc.convs:
        z = torch.cat([x[i], x[j], u], dim=1)
        gated = F.batch_norm(conv.fc_full(z), None, None, conv.bn1.weight, conv.bn1.bias, training=True)
        f, c = gated.chunk(2, dim=1)
        summed = torch.zeros_like(x).index_add(0, i, torch.sigmoid(f) * F.softplus(c))
        x = F.softplus(x + F.batch_norm(summed, None, None, conv.bn2.weight, conv.bn2.bias, training=True))
    pooled = torch.stack([x[batch.batch == b].mean(0) for b in range(batch.num_graphs)])
    expected = F.softplus(enc.conv_to_fc(F.softplus(pooled)))
    assert torch.allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("edge_projection", ["per_atom", "per_edge"])
def test_cgcnn_without_edge_batch_norm_is_pyg_cgconv(edge_projection):
    """``edge_batch_norm=False`` is PyG's CGConv(batch_norm=True) layer (the speed reference of bench_train)."""
    from torch_geometric.nn import CGConv

    enc = small("cgcnn", edge_projection=edge_projection, edge_batch_norm=False).train()
    assert all(conv.bn1 is None for conv in enc.convs)
    batch = Batch.from_data_list(graphs(4))
    u = enc.expansion(batch.edge_dist)
    x = enc.embedding.linear(ATOM_FEATURES[batch.z])
    d = x.shape[1]
    out = x
    for conv in enc.convs:
        conv.bn2.weight.data.uniform_(0.5, 1.5)
        conv.bn2.bias.data.uniform_(-0.5, 0.5)
        ref = CGConv(d, dim=u.shape[1], aggr="add", batch_norm=True).train()
        with torch.no_grad():
            ref.lin_f.weight.copy_(conv.fc_full.weight[:d]); ref.lin_f.bias.copy_(conv.fc_full.bias[:d])
            ref.lin_s.weight.copy_(conv.fc_full.weight[d:]); ref.lin_s.bias.copy_(conv.fc_full.bias[d:])
            ref.bn.weight.copy_(conv.bn2.weight); ref.bn.bias.copy_(conv.bn2.bias)
        expected = F.softplus(ref(out, batch.edge_index.flip(0), u))  # PyG aggregates at row 1
        out = conv(out, u, batch.edge_index)
        assert torch.allclose(out, expected, atol=1e-5)


def test_cgcnn_edge_projections_give_the_same_gradients():
    """"per_atom" (CPU default) and "per_edge" (GPU default) are one function: same outputs and gradients."""
    batch = Batch.from_data_list(graphs(4))
    grads = {}
    for mode in ("per_atom", "per_edge"):
        enc = small("cgcnn", edge_projection=mode).train()
        enc(batch).graph_emb.square().sum().backward()
        grads[mode] = {n: p.grad.clone() for n, p in enc.named_parameters()}
    assert grads["per_atom"].keys() == grads["per_edge"].keys()
    scale = max(float(g.abs().max()) for g in grads["per_atom"].values())
    for name, g in grads["per_atom"].items():  # fc_full.bias feeds a batch norm: its gradient is ~0 (noise)
        assert torch.allclose(g, grads["per_edge"][name], rtol=1e-4, atol=1e-5 * scale), name
    with pytest.raises(ValueError, match="edge_projection"):
        build_encoder("cgcnn", edge_projection="concat")


@pytest.mark.parametrize("name", taking("cutoff"))
def test_prepare_batch_drops_long_edges_on_the_host(name):
    """Graphs built at 8 Å fed to a 5 Å encoder: the host-side filter gives the graphs built at 5 Å."""
    wide = CrystalGraphBuilder(cutoff=8.0, max_neighbors=None)
    narrow = CrystalGraphBuilder(cutoff=5.0, max_neighbors=None)
    enc = small(name, cutoff=5.0)
    batch = enc.prepare_batch(Batch.from_data_list([wide(s) for s in structures(3)]))
    expected = Batch.from_data_list([narrow(s) for s in structures(3)])
    assert float(batch.edge_dist.max()) <= 5.0
    for key in ("edge_index", "edge_dist", "edge_vec", "cell_offset"):
        assert torch.equal(batch[key], expected[key]), key
    for got, want in zip(batch.to_data_list(), expected.to_data_list()):  # per-graph slices stay consistent
        assert torch.equal(got.edge_index, want.edge_index) and torch.equal(got.cell_offset, want.cell_offset)
    assert torch.allclose(enc(batch).graph_emb, enc(expected).graph_emb, atol=1e-5)


def test_cgcnn_defaults_are_the_reference_ones():
    enc = build_encoder("cgcnn")
    assert enc.out_dim == 128 and len(enc.convs) == 3 and enc.convs[0].atom_fea_len == 64
    assert enc.embedding.linear.in_features == 92
    assert enc.expansion.num == 41 and math.isclose(enc.expansion.width, 0.2)


def test_triplets_match_brute_force_and_respect_cutoff():
    g = graphs(6)[1]
    cutoff = 4.0
    tri = angle_triplets(g.edge_index, g.edge_vec, g.edge_dist, g.num_nodes, cutoff)
    short = [e for e in range(g.edge_index.shape[1]) if g.edge_dist[e] < cutoff]
    expected = {}
    for a in short:
        for b in short:
            if a != b and g.edge_index[0, a] == g.edge_index[0, b]:
                va, vb = g.edge_vec[a], g.edge_vec[b]
                expected[(a, b)] = float(va @ vb / (va.norm() * vb.norm()))
    got = {(int(tri.edges[a]), int(tri.edges[b])): float(c) for a, b, c in zip(tri.a, tri.b, tri.cos)}
    assert got.keys() == expected.keys() and len(got) > 0
    assert all(abs(got[k] - expected[k]) < 1e-5 for k in got)
    assert all(g.edge_dist[e] < cutoff for e in tri.edges.tolist())


def test_three_body_cutoff_limits_triplets():
    g = Batch.from_data_list(graphs(6))
    few = angle_triplets(g.edge_index, g.edge_vec, g.edge_dist, g.num_nodes, 3.0).a.numel()
    many = angle_triplets(g.edge_index, g.edge_vec, g.edge_dist, g.num_nodes, 8.0).a.numel()
    assert 0 < few < many


def test_legendre_basis_matches_numpy():
    from tlgnn.models.encoders.m3gnet_lite import legendre

    cos = torch.linspace(-1, 1, 7)
    got = legendre(cos, 4)
    for l in range(4):
        coef = np.zeros(l + 1)
        coef[l] = 1
        assert np.allclose(got[:, l].numpy(), np.polynomial.legendre.legval(cos.numpy(), coef), atol=1e-6)


def test_m3gnet_lite_three_body_term_reaches_the_output():
    enc = small("m3gnet_lite").train()
    batch = Batch.from_data_list(graphs(4))
    out = enc(batch).graph_emb
    out.square().sum().backward()
    for block in enc.blocks:
        assert block.three_body.atom_gate.weight.grad.abs().sum() > 0
        assert block.three_body.value.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for block in enc.blocks:
            block.three_body.value.weight.zero_()
            block.three_body.value.bias.zero_()
        assert (enc(batch).graph_emb - out).abs().max() > 1e-4


def test_registry_errors_name_encoder_and_option():
    with pytest.raises(ValueError, match=r"unknown encoder 'cgcn'.*did you mean 'cgcnn'"):
        build_encoder("cgcn")
    with pytest.raises(ValueError, match=r"encoder 'cgcnn' has no option 'n_convs'.*did you mean 'n_conv'"):
        build_encoder("cgcnn", n_convs=3)
    with pytest.raises(ValueError, match="atom_input"):
        build_encoder("m3gnet_lite", atom_input="onehot")


def test_unknown_element_is_a_clear_error():
    enc = small("cgcnn")
    g = graphs(1)[0].clone()
    g.z = g.z.clone()
    g.z[0] = ATOM_FEATURES.shape[0] + 5
    with pytest.raises(ValueError, match="atomic numbers"):
        enc(Batch.from_data_list([g]))
    with pytest.raises(ValueError, match=rf"atomic numbers \[{ATOM_FEATURES.shape[0] + 5}\]"):
        enc.prepare_batch(Batch.from_data_list([g]))  # the host-side check used before GPU transfer


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_mixed_precision_forward_and_backward(name):
    """bf16 autocast (the GPU pretraining setting) runs forward and backward and stays close to fp32."""
    batch = next(iter(DataLoader(graphs(4), batch_size=4)))
    enc = small(name)
    full = enc(batch).graph_emb
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = enc(batch).graph_emb
    mixed.float().sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in enc.parameters())
    assert torch.allclose(mixed.float(), full, atol=0.1, rtol=0.1)


def test_uniform_degree_dense_sum_equals_the_scatter_sum():
    """k-nearest graphs get ``uniform_degree`` on the host; CGCNN's dense per-atom sum then gives the same output
    and gradients as the scatter over ``edge_index`` (which a radius graph, with varying degrees, keeps using)."""
    from tlgnn.models.encoders.base import uniform_degree

    enc = small("cgcnn").train()
    plain = Batch.from_data_list(graphs(4))
    prepared = enc.prepare_batch(Batch.from_data_list(graphs(4)))
    assert prepared.uniform_degree == 12 and getattr(plain, "uniform_degree", None) is None
    outs, grads = [], []
    for batch in (plain, prepared):
        enc.zero_grad()
        out = enc(batch).graph_emb
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5 * float(grads[0].abs().max()))
    radius = Batch.from_data_list([CrystalGraphBuilder(cutoff=5.0, max_neighbors=None)(s) for s in structures(3)])
    assert uniform_degree(radius.edge_index, radius.num_nodes) is None
    shuffled = plain.edge_index[:, torch.randperm(plain.edge_index.shape[1], generator=torch.Generator().manual_seed(0))]
    assert uniform_degree(shuffled, plain.num_nodes) is None  # same counts, not grouped by centre: no dense sum
