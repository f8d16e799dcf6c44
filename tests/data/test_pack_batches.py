"""Whole batches gathered from graph packs equal PyG's collation of the per-graph items, in RAM and on disk,
across pack boundaries, and the data module's loaders serve them with every sampler and loader option."""

from __future__ import annotations

import gzip
import json
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from torch.utils.data import DistributedSampler
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader as PyGDataLoader

from support.memory import rss_file_mib
from support.paths import ROOT
from tlgnn.data import DataConfig, TransferDataModule
from tlgnn.data.dataset import MaterialDataset
from tlgnn.data.graphs import LazyStructures
from tlgnn.data.loader import BatchedFetch, graph_loader, pass_batch
from tlgnn.graphs import CrystalGraphBuilder, GraphCache, GraphStore
from tlgnn.graphs.batching import GRAPH_FIELDS
from tlgnn.graphs.packs import write_pack
from tlgnn.utils.config import from_dict

SAMPLE = ROOT / "data" / "mp_structures_sample.jsonl.gz"
TASKS = ["gap_pbe_mf", "gap_hse", "is_metal_exp"]


def assert_same_batch(got: Batch, ref: Batch) -> None:
    """Same class, fields in the same order, dtypes, values, and the bookkeeping ``to_data_list`` relies on."""
    assert type(got) is type(ref)
    assert list(got._store._mapping) == list(ref._store._mapping)
    for key, want in ref._store._mapping.items():
        have = got[key]
        if isinstance(want, torch.Tensor):
            assert have.dtype == want.dtype and have.shape == want.shape and torch.equal(have, want), key
        else:
            assert have == want, key
    assert got.num_graphs == ref.num_graphs and got._store._num_nodes == ref._store._num_nodes
    assert list(got._slice_dict) == list(ref._slice_dict)
    for key in ref._slice_dict:
        assert torch.equal(got._slice_dict[key], ref._slice_dict[key]), key
        if ref._inc_dict[key] is None:
            assert got._inc_dict[key] is None, key
        else:
            assert torch.equal(got._inc_dict[key], ref._inc_dict[key]), key
    for a, b in zip(got.to_data_list(), ref.to_data_list()):  # split back into the very same graphs
        assert list(a.keys()) == list(b.keys())
        for key in b.keys():
            assert torch.equal(a[key], b[key]) if isinstance(b[key], torch.Tensor) else a[key] == b[key], key


@pytest.fixture(scope="module")
def pack_paths(tmp_path_factory) -> list[Path]:
    """150 real MP graphs in four packs (40 + 40 + 40 + 30)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(json.loads(line)["cif"], fmt="cif") for line in gzip.open(SAMPLE, "rt")]
    cache = GraphCache(tmp_path_factory.mktemp("packs"), CrystalGraphBuilder(), pack_size=40)
    cache.get_many(structures, n_jobs=1)
    paths = sorted(cache.directory.glob("pack-*"))
    assert len(paths) == 4
    return paths


SELECTIONS = {
    "all in order": list(range(150)),
    "shuffled over all packs": random.Random(0).sample(range(150), 64),
    "run across a pack boundary": list(range(30, 50)),
    "repeats and negative": [3, 3, -1, 45, 0, 149, 40, 39],
    "one graph": [77],
}


@pytest.mark.parametrize("mmap", [False, True], ids=["in RAM", "mmap"])
@pytest.mark.parametrize("name", list(SELECTIONS))
def test_store_batch_equals_pyg_collation(pack_paths, mmap, name):
    store = GraphStore.open(pack_paths, mmap=mmap)
    indices = SELECTIONS[name]
    items = [store[i] for i in indices]
    assert_same_batch(store.batch(indices), Batch.from_data_list(items))
    # extra per-graph fields are batched like the same fields on the items
    y = torch.randn(len(indices), 2)
    names = [f"m-{i}" for i in indices]
    for k, item in enumerate(items):
        item.y, item.material_id = y[k : k + 1], names[k]
    assert_same_batch(store.batch(np.array(indices), y=y, material_id=names), Batch.from_data_list(items))


def test_store_batch_rejects_bad_requests(pack_paths):
    store = GraphStore.open(pack_paths, mmap=True)
    with pytest.raises(IndexError, match="index 150 out of range for 150 graphs"):
        store.batch([0, 150])
    with pytest.raises(ValueError, match="no indices"):
        store.batch([])
    with pytest.raises(ValueError, match="extra field 'y' has shape \\(3, 1\\); expected \\[2, ...\\]"):
        store.batch([0, 1], y=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="extra field 'atom_index' clashes"):
        store.batch([0, 1], atom_index=torch.zeros(2, 1))


class _SharedProbe(BatchedFetch):
    """Also says, from inside the worker, whether the graph tensors were built in shared memory."""

    def __getitems__(self, indices):
        batch = super().__getitems__(indices)
        return batch, all(batch[key].is_shared() for key in GRAPH_FIELDS)


def test_store_batch_in_a_worker_is_built_in_shared_memory(pack_paths):
    store = GraphStore.open(pack_paths, mmap=True)
    context = "fork" if sys.platform.startswith("linux") else None
    loader = torch.utils.data.DataLoader(_SharedProbe(store), batch_size=16, num_workers=1, collate_fn=pass_batch,
                                         multiprocessing_context=context)
    results = list(loader)
    assert all(shared for _, shared in results)  # no extra copy into shared memory when sent to the main process
    assert sum(b.num_graphs for b, _ in results) == 150
    assert_same_batch(results[2][0], Batch.from_data_list([store[i] for i in range(32, 48)]))
    assert not any(store.batch([0, 1])[key].is_shared() for key in GRAPH_FIELDS)  # main process: plain memory


# ------------------------------------------------------------------------------------------ dataset and loaders
@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    base = tmp_path_factory.mktemp("dm")
    raw = {"sources": "configs/data/mp_sample.yaml", "tasks": TASKS, "batch_size": 32,
           "split": {"kind": "random", "seed": 0}, "cache_dir": str(base / "cache")}
    module = TransferDataModule(from_dict(DataConfig, raw).resolve_paths(ROOT))
    module.setup("fit")
    return module


@pytest.fixture(scope="module")
def multi_pack_dataset(dm, tmp_path_factory):
    """The data module's rows with their graphs spread over packs of 64 (in RAM and on disk)."""
    table = dm.table
    cache = GraphCache(tmp_path_factory.mktemp("small-packs"), CrystalGraphBuilder(), pack_size=64)
    cache.get_many(LazyStructures(table.structure_texts()), keys=table.frame["structure_key"].tolist(),
                   n_jobs=1)
    out = {}
    for mmap in (False, True):
        store = GraphCache(cache.root, CrystalGraphBuilder(), mmap=mmap).get_many(
            LazyStructures(table.structure_texts()), keys=table.frame["structure_key"].tolist())
        assert len(store.packs) > 4
        out[mmap] = MaterialDataset(table, store, TASKS)
    return out


@pytest.mark.parametrize("mmap", [False, True], ids=["in RAM", "mmap"])
def test_dataset_batch_equals_collated_items(multi_pack_dataset, dm, mmap):
    dataset = multi_pack_dataset[mmap].subset(dm.split.train)
    positions = random.Random(1).sample(range(len(dataset)), 48)
    batch = dataset.batch(positions)
    assert_same_batch(batch, Batch.from_data_list([dataset[i] for i in positions]))
    rows = np.asarray(dm.split.train)[positions]
    assert batch.idx.tolist() == rows.tolist()
    assert batch.material_id == dm.table.frame["material_id"].to_numpy()[rows].tolist()
    values = dm.table.labels(TASKS)[rows]
    np.testing.assert_array_equal(batch.y_mask.numpy(), ~np.isnan(values))
    assert (~batch.y_mask).any() and batch.y_mask.any()
    # graphs that are not packs (a plain list of Data) fall back to item-by-item collation, same result
    plain = MaterialDataset(dm.table, [multi_pack_dataset[mmap].graphs[i] for i in range(len(dm.table))], TASKS)
    assert_same_batch(plain.subset(dm.split.train).batch(positions), batch)


def _pairs(new_loader, old_loader):
    new, old = list(new_loader), list(old_loader)
    assert len(new) == len(old) > 1
    return zip(new, old)


def test_loader_batches_equal_pyg_loader_with_shuffle_drop_last_and_samplers(multi_pack_dataset, dm):
    dataset = multi_pack_dataset[True].subset(dm.split.train)
    kwargs = dict(batch_size=20, shuffle=True, drop_last=True)
    new = graph_loader(dataset, generator=torch.Generator().manual_seed(5), **kwargs)
    assert isinstance(new.dataset, BatchedFetch)
    old = PyGDataLoader(dataset, generator=torch.Generator().manual_seed(5), **kwargs)
    seen = 0
    for a, b in _pairs(new, old):
        assert_same_batch(a, b)
        assert a.num_graphs == 20
        seen += a.num_graphs
    assert seen == len(dataset) // 20 * 20
    # DDP's sampler: rank 1 of 2 gets its own shard, batched the same way
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=3)
    shard = [a.idx for a in graph_loader(dataset, batch_size=16, sampler=sampler)]
    sampler.set_epoch(0)
    ref = [b.idx for b in PyGDataLoader(dataset, batch_size=16, sampler=sampler)]
    assert len(shard) == len(ref) and all(torch.equal(a, b) for a, b in zip(shard, ref))
    assert sum(len(s) for s in shard) == (len(dataset) + 1) // 2


def test_data_module_loaders_serve_pack_batches_in_workers(dm):
    loader = dm.train_dataloader()
    assert isinstance(loader.dataset, BatchedFetch) and loader.collate_fn is pass_batch
    # a predict dataset is not backed by packs: PyG's per-item loader
    records = [(m, dm.table.structure(i)) for i, m in enumerate(dm.table.frame["material_id"][:3])]
    predict = dm.predict_dataloader_for(records)
    assert not isinstance(predict.dataset, BatchedFetch) and next(iter(predict)).num_graphs == 3
    # workers (forked), persistent, pin_memory requested: the same batches as the in-process loader
    dm.config.num_workers = 2
    try:
        workers = dm.val_dataloader()
        assert workers.persistent_workers and workers.num_workers == 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pin_memory without an accelerator only warns
            got = list(graph_loader(dm.val_set, batch_size=32, num_workers=2, pin_memory=True,
                                    multiprocessing_context="fork" if sys.platform.startswith("linux") else None))
    finally:
        dm.config.num_workers = 0
    ref = list(PyGDataLoader(dm.val_set, batch_size=32))
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert_same_batch(a, b)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read RSS")
def test_on_disk_batches_keep_resident_memory_flat(pack_paths, tmp_path):
    """Shuffled batches over ~35 MB of on-disk packs leave no mapped pages behind (positioned reads)."""
    source = GraphStore.open(pack_paths, mmap=False)
    graphs = [source.packs[p].arrays_at(i) for p, i in zip(source._pack_of, source._index)]
    n = 10_000  # the 150 real graphs repeated
    for start, stop in ((0, n // 2), (n // 2, n)):
        keys = [f"key-{i:08d}" for i in range(start, stop)]
        write_pack(tmp_path, keys, [graphs[i % 150] for i in range(start, stop)])
    paths = sorted(tmp_path.glob("pack-*"))
    size_mib = sum(f.stat().st_size for d in paths for f in d.iterdir()) / 2**20
    assert size_mib > 25
    store = GraphStore.open(paths, mmap=True)
    store.batch(range(64))  # warm up lazily loaded code paths
    before = rss_file_mib()
    order = np.random.default_rng(2).permutation(n)
    atoms = sum(store.batch(order[k : k + 256]).num_nodes for k in range(0, n, 256))
    grown = rss_file_mib() - before
    assert atoms == sum(graphs[i % 150].z.shape[0] for i in range(n))
    assert grown < 0.15 * size_mib, f"file-backed RSS grew by {grown:.1f} MiB reading a {size_mib:.0f} MiB pack"
