"""The ``chgnet`` encoder: its embeddings equal the ``chgnet`` package's own crystal features on real crystals,
layer groups and freezing, pooling widths, the in-memory graph cache, input checks.

Real structures: the Materials Project crystals of data/mp_structures_sample.jsonl.gz (data/README.md). The
reference is the package's ``CHGNet.predict_structure`` on the original pymatgen structures; the model is built
as ``CHGNet.load`` builds it, except that the weights file is read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from support.structures import BUILDER, mp_structures
from tlgnn.data import TaskSpec
from tlgnn.models import build_encoder, build_model
from tlgnn.models.encoders.chgnet import checkpoint_path
from tlgnn.models.encoders.chgnet_graphs import GraphLRU, split_structures, structure_key

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_chgnet(version: str):
    """The package's full CHGNet of ``version``, as ``CHGNet.load(model_name=version)`` makes it; isolated atoms
    (one of the first crystals has one at 0.2.0's 5 Å) allowed, as the encoder allows them."""
    from chgnet.model import CHGNet

    state = torch.load(checkpoint_path(version), map_location="cpu", weights_only=True)
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.from_dict(state["model"], mlp_out_bias=version == "0.2.0", version=version).eval()
    model.graph_converter.set_isolated_atom_response("ignore")
    return model


def mp_batch(n: int, start: int = 0) -> Batch:
    return Batch.from_data_list([BUILDER(s) for s in mp_structures(start + n)[start:]])


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("chgnet").eval()


@pytest.mark.parametrize("version, n", [("0.3.0", 24), ("r2scan", 4), ("0.2.0", 4)])
def test_embedding_equals_chgnet_crystal_features(version, n):
    """"sum" is CHGNet's crystal_fea (its pretrained models sum the atom features); "mean" is that over n atoms."""
    structures = mp_structures(n)
    predictions = reference_chgnet(version).predict_structure(list(structures), task="e",
                                                              return_crystal_feas=True)
    crystal_fea = torch.from_numpy(np.stack([p["crystal_fea"] for p in predictions]))
    n_atoms = torch.tensor([len(s) for s in structures], dtype=torch.float32)
    batch = mp_batch(n)  # float32 positions and cells, as every tlgnn graph
    for pooling, expected in (("sum", crystal_fea), ("mean", crystal_fea / n_atoms[:, None])):
        enc = build_encoder("chgnet", version=version, pooling=pooling).eval()
        with torch.no_grad():
            out = enc(batch)
        assert out.graph_emb.shape == (n, 64) and out.node_emb.shape == (int(n_atoms.sum()), 64)
        torch.testing.assert_close(out.graph_emb, expected, atol=1e-4, rtol=1e-5)


def test_blocks_pooling_is_the_per_block_means_and_ends_with_mean(encoder):
    blocks = build_encoder("chgnet", pooling="blocks").eval()
    assert blocks.out_dim == 256 and encoder.out_dim == 64
    batch = mp_batch(6)
    with torch.no_grad():
        wide, mean = blocks(batch).graph_emb, encoder(batch).graph_emb
    assert wide.shape == (6, 256)
    torch.testing.assert_close(wide[:, -64:], mean, atol=1e-6, rtol=0)
    # earlier blocks are other features (not copies of the last)
    assert (wide[:, :64] - mean).abs().max() > 1e-2


def test_layer_groups_cover_every_parameter_once(encoder):
    groups = encoder.layer_groups()
    assert len(groups) == 5  # input embeddings + 4 interaction blocks
    seen = [id(p) for g in groups for p in g.parameters()]
    assert len(seen) == len(set(seen)) and set(seen) == {id(p) for p in encoder.parameters()}
    assert {name for name, _ in groups[0].named_children()} == {
        "atom_embedding", "bond_basis_expansion", "bond_embedding", "bond_weights_ag", "bond_weights_bg",
        "angle_basis_expansion", "angle_embedding"}
    assert all(b.bond_conv is not None and b.angle_update is not None for b in groups[1:3])
    # the angle update of step 3 feeds nothing (the last step has no bond conv): it is not kept
    assert groups[3].bond_conv is not None and groups[3].angle_update is None
    assert groups[4].bond_conv is None and isinstance(groups[4].readout_norm, torch.nn.LayerNorm)
    # the energy MLP and the magnetic-moment head are not kept
    assert not any("mlp." in k or "site_wise" in k for k in encoder.state_dict())


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_freezing_the_first_k_groups(k):
    model = build_model({"name": "chgnet"}, {"name": "single", "task": "gap", "hidden": [8]},
                        [TaskSpec("gap", unit="eV")])
    model.freeze_encoder(k)
    groups = model.encoder.layer_groups()
    model.train()
    model(mp_batch(4))["gap"].sum().backward()
    for i, group in enumerate(groups):
        for name, p in group.named_parameters():
            assert p.requires_grad is (i >= k), (i, name)
            assert (p.grad is None) is (i < k), (i, name)
    assert all(p.grad is not None for p in model.head.parameters())
    model.unfreeze_encoder()
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_graph_cache_returns_equal_graphs_and_is_bounded():
    enc = build_encoder("chgnet", graph_cache_size=3).eval()
    batch = mp_batch(5)
    cache = enc.graphs.cache
    first = enc.graphs.graphs(batch)
    assert len(cache) == 3 and cache.misses == 5 and cache.hits == 0
    fresh = [enc.graphs.convert(*parts) for parts in split_structures(batch)]
    fields = ("atomic_number", "atom_frac_coord", "atom_graph", "neighbor_image", "directed2undirected",
              "undirected2directed", "bond_graph", "lattice")
    for got, want in zip(first, fresh):
        for field in fields:
            assert torch.equal(getattr(got, field), getattr(want, field)), field
        assert not got.atom_frac_coord.requires_grad and not got.lattice.requires_grad
    again = enc.graphs.graphs(mp_batch(2, start=3))  # the two most recent ones are still there: same objects
    assert again[0] is first[3] and again[1] is first[4] and cache.hits == 2
    with torch.no_grad():  # a cached graph gives the same embedding as a freshly converted one
        cached = enc(batch).graph_emb
        enc.graphs.cache.clear()
        torch.testing.assert_close(enc(batch).graph_emb, cached, atol=0, rtol=0)
    keys = {structure_key(*parts) for parts in split_structures(batch)}
    assert len(keys) == 5
    lru = GraphLRU(2)
    for key in (b"a", b"b", b"a", b"c"):  # "b" is the least recently used when "c" arrives
        lru.put(key, key)
    assert b"b" not in lru and b"a" in lru and b"c" in lru
    off = GraphLRU(0)
    off.put(b"a", 1)
    assert len(off) == 0
    with pytest.raises(ValueError, match=">= 0"):
        GraphLRU(-1)


def test_prepare_batch_checks_elements_and_keeps_the_tlgnn_edges(encoder):
    batch = mp_batch(3)
    edges = batch.edge_index.clone()
    assert encoder.prepare_batch(batch) is batch and torch.equal(batch.edge_index, edges)
    bad = mp_batch(2)
    bad.z = bad.z.clone()
    bad.z[0] = 95  # Am: beyond CHGNet's embedding table
    with pytest.raises(ValueError, match=r"atomic numbers \[95\] are not supported by CHGNet \(supported: 1..94\)"):
        encoder.prepare_batch(bad)
    with pytest.raises(ValueError, match="not supported by CHGNet"):
        encoder(bad)


def test_options_are_checked():
    with pytest.raises(ValueError, match="version must be one of"):
        build_encoder("chgnet", version="0.4.0")
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_encoder("chgnet", pooling="max")
    with pytest.raises(ValueError, match="has no option 'cutoff'"):
        build_encoder("chgnet", cutoff=5.0)
    random = build_encoder("chgnet", pretrained=False)
    pretrained = build_encoder("chgnet")
    assert random.state_dict().keys() == pretrained.state_dict().keys()
    assert not torch.equal(random.embed.atom_embedding.embedding.weight,
                           pretrained.embed.atom_embedding.embedding.weight)


def test_graphs_are_kept_only_while_the_encoder_trains():
    """A one-off pass in eval mode (embedding every material once) does not fill the graph cache; training does."""
    enc = build_encoder("chgnet", graph_cache_size=10).eval()
    batch = mp_batch(4)
    with torch.no_grad():
        frozen = enc(enc.prepare_batch(batch)).graph_emb
    assert len(enc.graphs.cache) == 0
    enc.train()
    trained = enc(enc.prepare_batch(batch)).graph_emb
    assert len(enc.graphs.cache) == 4
    torch.testing.assert_close(trained, frozen, atol=1e-6, rtol=0)  # no dropout: same function either way
