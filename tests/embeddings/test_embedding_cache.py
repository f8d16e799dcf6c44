"""The embedding cache: identity, checksummed shards, staleness, and embeddings equal to a direct encoder pass."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from tlgnn.embeddings import EmbeddingCache, EmbeddingCacheWarning, cached_embeddings, embed_loader, encoder_identity
from tlgnn.graphs import structure_key
from tlgnn.models import build_encoder

from support.structures import graphs, structures

SPEC = {"name": "cgcnn", "hidden_channels": 16, "num_layers": 1, "out_channels": 16}
GRAPH = {"cutoff": 8.0, "max_neighbors": 12}


def _encoder(seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder("cgcnn", hidden_channels=16, num_layers=1, out_channels=16).eval()


def test_identity_names_weights_options_and_graph_settings():
    enc = _encoder()
    base = encoder_identity(enc, SPEC, GRAPH)
    assert base == encoder_identity(_encoder(), SPEC, GRAPH)  # same weights, same identity
    assert base != encoder_identity(_encoder(seed=1), SPEC, GRAPH)
    assert base != encoder_identity(enc, {**SPEC, "pooling": "sum"}, GRAPH)
    assert base != encoder_identity(enc, SPEC, {**GRAPH, "cutoff": 6.0})
    with torch.no_grad():
        next(enc.parameters()).view(-1)[0] += 1e-6  # one weight changed a little: another identity
    assert base != encoder_identity(enc, SPEC, GRAPH)


def test_shards_round_trip_and_repeated_keys(tmp_path):
    cache = EmbeddingCache(tmp_path, "ab" * 32, {"encoder": SPEC})
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    counts = np.zeros((3, 119), np.float32)
    counts[:, 8] = [1, 2, 3]
    cache.add(["k0", "k1", "k2"], emb, counts)
    got, got_counts, found = cache.lookup(["k2", "x", "k0", "k2"])
    assert found.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(got[[0, 2, 3]], emb[[2, 0, 2]])
    np.testing.assert_array_equal(got_counts[[0, 3], 8], [3, 3])
    assert (cache.folder / "encoder.json").is_file()


@pytest.mark.parametrize("damage", ["flip", "no_digest", "pickled"])
def test_a_damaged_shard_is_moved_aside_and_recomputed(tmp_path, damage):
    cache = EmbeddingCache(tmp_path, "cd" * 32)
    shard = cache.add(["k0"], np.ones((1, 4), np.float32), np.zeros((1, 119), np.float32))
    digest = shard.with_name(shard.name + ".xxh3")
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-40] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "no_digest":
        digest.unlink()
    else:  # an object array needs pickle: refused even with a matching digest
        with open(shard, "wb") as handle:
            np.savez(handle, keys=np.asarray(["k0"], dtype=object), embeddings=np.ones((1, 4), np.float32),
                     element_counts=np.zeros((1, 119), np.float32))
        from tlgnn.utils.files import write_checksum

        write_checksum(shard)
    with pytest.warns(EmbeddingCacheWarning, match="moved to"):
        _, _, found = cache.lookup(["k0"])
    assert not found.any()
    assert not shard.exists() and (cache.folder / "corrupt" / shard.name).exists()


def test_cached_embeddings_equal_a_direct_pass_and_compute_each_structure_once(tmp_path):
    enc = _encoder()
    items = graphs(6)
    keys = [structure_key(s) for s in structures(6)]
    keys_twice = keys + keys[:2]  # a structure listed twice is computed once
    calls = []

    def loader_for(rows):
        calls.append(list(rows))
        return DataLoader([items[i % 6] for i in rows], batch_size=4)

    with warnings.catch_warnings():
        warnings.simplefilter("error", EmbeddingCacheWarning)
        emb, counts = cached_embeddings(enc, SPEC, GRAPH, keys_twice, loader_for, tmp_path, verbose=False)
        again, _ = cached_embeddings(enc, SPEC, GRAPH, keys_twice, loader_for, tmp_path, verbose=False)
    assert calls == [list(range(6))]  # the second call read everything from the cache
    direct, direct_counts = embed_loader(enc, DataLoader(items, batch_size=6))
    np.testing.assert_allclose(emb[:6], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(emb[6:], emb[:2])
    np.testing.assert_array_equal(again, emb)
    for i, s in enumerate(structures(6)):  # element counts are the cell's composition
        expected = np.zeros(119, np.float32)
        for el, amount in s.composition.items():
            expected[el.Z] = amount
        np.testing.assert_array_equal(counts[i], expected)
    np.testing.assert_array_equal(direct_counts, counts[:6])
