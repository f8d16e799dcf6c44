"""On-disk (``mmap=True``) graph packs: same graphs as in RAM, flat resident memory, DataLoader workers, pickling."""

from __future__ import annotations

import gzip
import json
import pickle
import random
import sys
import warnings
from pathlib import Path

import pytest
import torch
from pymatgen.core import Structure
from torch_geometric.loader import DataLoader

from support.memory import rss_file_mib
from support.paths import ROOT
from tlgnn.graphs import CrystalGraphBuilder, GraphStore
from tlgnn.graphs.builder import structure_arrays
from tlgnn.graphs.packs import write_pack

SAMPLE = ROOT / "data" / "mp_sample" / "structures.jsonl.gz"
FIELDS = ("z", "pos", "cell", "edge_index", "edge_vec", "edge_dist", "cell_offset")
N_REPLICAS = 10_000  # ~35 MB of packs: large enough that a page-retaining reader shows in RSS


@pytest.fixture(scope="module")
def base_graphs():
    """Graph arrays of 40 real MP structures (shipped sample)."""
    builder = CrystalGraphBuilder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines = gzip.open(SAMPLE, "rt").read().splitlines()[:40]
        structures = [Structure.from_str(json.loads(line)["cif"], fmt="cif") for line in lines]
    return [builder.arrays_from_arrays(*structure_arrays(s)) for s in structures]


@pytest.fixture(scope="module")
def pack_dirs(tmp_path_factory, base_graphs):
    """Two packs holding N_REPLICAS graphs (the real graphs repeated, distinct keys)."""
    root = tmp_path_factory.mktemp("packs")
    half = N_REPLICAS // 2
    for start, stop in ((0, half), (half, N_REPLICAS)):
        write_pack(root, [f"key-{i:08d}" for i in range(start, stop)],
                   [base_graphs[i % len(base_graphs)] for i in range(start, stop)])
    return sorted(root.glob("pack-*"))


def _same(a, b) -> None:
    for f in FIELDS:
        ta, tb = getattr(a, f), getattr(b, f)
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), f
    assert a.num_nodes == b.num_nodes


def test_on_disk_items_equal_in_memory_items(pack_dirs, base_graphs):
    disk, ram = GraphStore.open(pack_dirs, mmap=True), GraphStore.open(pack_dirs, mmap=False)
    assert len(disk) == len(ram) == N_REPLICAS
    for i in [0, 1, 39, 40, N_REPLICAS // 2 - 1, N_REPLICAS // 2, N_REPLICAS - 1, *random.Random(0).sample(range(N_REPLICAS), 50)]:
        _same(disk[i], ram[i])
        g = base_graphs[i % len(base_graphs)]
        assert torch.equal(disk[i].edge_index, torch.from_numpy(g.edge_index))
        assert torch.equal(disk[i].edge_vec, torch.from_numpy(g.edge_vec))
    item = disk[3]
    item.pos += 1.0  # items are private copies: changing one leaves the store untouched
    _same(disk[3], ram[3])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read RSS")
def test_on_disk_reading_keeps_resident_memory_flat(pack_dirs):
    size_mib = sum(f.stat().st_size for d in pack_dirs for f in d.iterdir()) / 2**20
    assert size_mib > 25
    store = GraphStore.open(pack_dirs, mmap=True)  # verification reads every byte
    for i in range(50):  # warm up lazily loaded code paths
        store[i]
    before = rss_file_mib()
    order = list(range(len(store)))
    random.Random(1).shuffle(order)
    atoms = sum(store[i].num_nodes for i in order)
    grown = rss_file_mib() - before
    assert atoms > 0
    # a mapping-based reader leaves every touched page resident: growth ~ the pack size (> 25 MiB)
    assert grown < 0.15 * size_mib, f"file-backed RSS grew by {grown:.1f} MiB reading a {size_mib:.0f} MiB pack"


def test_on_disk_store_in_dataloader_workers_and_pickled(pack_dirs):
    disk, ram = GraphStore.open(pack_dirs, mmap=True), GraphStore.open(pack_dirs, mmap=False)
    subset = list(range(0, N_REPLICAS, 97))
    context = "fork" if sys.platform.startswith("linux") else None
    loader = DataLoader(torch.utils.data.Subset(disk, subset), batch_size=8, num_workers=2,
                        multiprocessing_context=context)
    reference = DataLoader(torch.utils.data.Subset(ram, subset), batch_size=8)
    n = 0
    for a, b in zip(loader, reference):
        _same(a, b)
        n += a.num_graphs
    assert n == len(subset)
    clone = pickle.loads(pickle.dumps(disk.packs[0]))  # spawn-started workers receive packs pickled
    for i in (0, 7, 1234):
        _same(clone.data(i), ram[i])
