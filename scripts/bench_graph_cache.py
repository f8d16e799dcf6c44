#!/usr/bin/env python
"""Batch loading straight from graph packs, on real MP crystals.

Two measurements:

* :func:`batched_cache_load` (called by ``scripts/bench_graphs.py``): open the cache's packs and iterate every
  graph as ready ``Batch`` objects of 64 (``GraphStore.batch``), in RAM and memory-mapped, against the cold build.
* ``main()``: the training data path, old vs new, on the same real graphs and labels: PyG's ``DataLoader`` over a
  ``MaterialDataset`` (one ``Data`` per graph, then ``Collater``) vs ``tlgnn.data.loader.graph_loader`` (one
  vectorised gather per batch), shuffled like a training epoch, ``num_workers=0``; batches/s and graphs/s.

    .venv/bin/python scripts/bench_graph_cache.py [--n 4000] [--batch-sizes 64 256] [--data PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mp_multifidelity_bandgap" / (
    "structures.jsonl.gz"
)
TASKS = ("band_gap_pbe", "gap_pbe_mf", "gap_hse", "gap_scan")  # eV; all but band_gap_pbe are mostly missing


def batched_cache_load(cache_dir: str | Path, builder: Any, structures: Sequence[Any], keys: Sequence[str],
                       t_cold: float, line: Callable[[str, float], None], batch_size: int = 64,
                       repeats: int = 7) -> dict[bool, float]:
    """Best-of-``repeats`` seconds to open the packs in ``cache_dir`` and iterate all graphs as ``Batch``es.

    Prints one ``line`` per mode (in RAM, mmap) and the speedup against ``t_cold`` (the cold build + write);
    returns ``{mmap: seconds}``.
    """
    from tlgnn.graphs import GraphCache

    n = len(structures)
    best: dict[bool, float] = {}
    for mmap in (False, True):
        best[mmap] = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            store = GraphCache(cache_dir, builder, mmap=mmap).get_many(structures, keys=keys)
            graphs = 0
            for start in range(0, n, batch_size):
                graphs += store.batch(range(start, min(start + batch_size, n))).num_graphs
            best[mmap] = min(best[mmap], time.perf_counter() - t0)
            assert graphs == n
    line(f"cache load (batched, in RAM): open + {batch_size}/batch", best[False])
    line(f"cache load (batched, mmap): open + {batch_size}/batch", best[True])
    print(f"cache load speedup (batched, {batch_size}/batch): {t_cold / best[False]:.1f} (in RAM), "
          f"{t_cold / best[True]:.1f} (mmap)")
    return best


# ------------------------------------------------------------------------------------------- loader comparison
def load_table(path: Path, n: int):
    """The first ``n`` parseable structures of ``structures.jsonl.gz`` with their labels (``labels.csv.gz``)."""
    import pandas as pd

    from tlgnn.data.table import MaterialTable
    from tlgnn.data.tasks import TaskSpec
    from tlgnn.io import parse_structure_text

    labels_file = path.parent / "labels.csv.gz"
    if not path.is_file() or not labels_file.is_file():
        raise SystemExit(f"--data {path}: structures.jsonl.gz with labels.csv.gz beside it not found")
    labels = pd.read_csv(labels_file, usecols=["material_id", *TASKS]).set_index("material_id")
    rows, structures = [], []
    with gzip.open(path, "rt") as handle:
        for line in handle:
            if len(rows) >= n:
                break
            record = json.loads(line)
            mid = record["material_id"]
            if mid not in labels.index:
                continue
            structure = parse_structure_text(record["cif"], fmt="cif", name=f"{path.name}[{mid}]")
            values = labels.loc[mid]
            rows.append({"material_id": mid, "structure": structure.to_json(),
                         "provenance": json.dumps({t: [labels_file.name, mid] for t in TASKS if pd.notna(values[t])}),
                         **{t: float(values[t]) for t in TASKS}})
            structures.append(structure)
    frame = pd.DataFrame(rows)
    return MaterialTable(frame, [TaskSpec(t, unit="eV") for t in TASKS]), structures


def epoch_seconds(make_loader: Callable[[], Any], repeats: int) -> tuple[float, int, int]:
    """Median seconds of ``repeats`` full passes over fresh loaders; (seconds, batches, graphs) per pass."""
    times, batches, graphs = [], 0, 0
    for _ in range(repeats):
        loader = make_loader()
        batches = graphs = 0
        t0 = time.perf_counter()
        for batch in loader:
            batches += 1
            graphs += batch.num_graphs
        times.append(time.perf_counter() - t0)
    return statistics.median(times), batches, graphs


def compare_loaders(dataset: Any, batch_size: int, repeats: int, label: str) -> None:
    """Old (PyG DataLoader, per-graph items) vs new (graph_loader) over ``dataset``, shuffled, no workers."""
    from torch_geometric.loader import DataLoader

    from tlgnn.data.loader import graph_loader

    def old():
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))

    def new():
        return graph_loader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))

    a, b = next(iter(old())), next(iter(new()))  # same sampler, same seed: the very same batch
    assert torch.equal(a.idx, b.idx) and torch.equal(a.edge_index, b.edge_index) and torch.equal(a.y, b.y)
    t_old, nb, ng = epoch_seconds(old, repeats)
    t_new, nb2, ng2 = epoch_seconds(new, repeats)
    assert (nb, ng) == (nb2, ng2)
    print(f"{label:<8s} batch {batch_size:>4d}  per-graph DataLoader {nb / t_old:8.1f} batches/s {ng / t_old:9.0f} "
          f"graphs/s | pack-batched {nb / t_new:8.1f} batches/s {ng / t_new:9.0f} graphs/s | x{t_old / t_new:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000, help="number of structures (default 4000)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="structures.jsonl.gz (material_id, cif)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per loader (median quoted)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from tlgnn.data.dataset import MaterialDataset
    from tlgnn.graphs import CrystalGraphBuilder, GraphCache

    t0 = time.perf_counter()
    table, structures = load_table(args.data, args.n)
    print(f"{len(table)} structures from {args.data} parsed in {time.perf_counter() - t0:.1f} s; tasks "
          + ", ".join(f"{t} ({int(table.frame[t].notna().sum())} labels)" for t in TASKS))
    builder = CrystalGraphBuilder(cutoff=8.0, max_neighbors=12)
    with tempfile.TemporaryDirectory(prefix="tlgnn-bench-") as tmp:
        GraphCache(tmp, builder).get_many(structures, progress=False)
        for mmap in (False, True):
            store = GraphCache(tmp, builder, mmap=mmap).get_many(structures)
            dataset = MaterialDataset(table, store)
            atoms = int(np.sum([p.node_counts.sum() for p in store.packs]))
            print(f"{'mmap' if mmap else 'in RAM'}: {len(store)} graphs, {atoms / len(store):.1f} atoms/graph, "
                  f"{sum(int(p.edge_counts.sum()) for p in store.packs) / len(store):.0f} edges/graph")
            for batch_size in args.batch_sizes:
                compare_loaders(dataset, batch_size, args.repeats, "mmap" if mmap else "in RAM")


if __name__ == "__main__":
    main()
