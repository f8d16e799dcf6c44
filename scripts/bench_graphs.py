#!/usr/bin/env python
"""Benchmark tlgnn.graphs on real MP crystals, on one core.

Three ways to get the CGCNN graph (8 Å, 12 nearest) of the same pre-parsed structures:
  (a) tlgnn's CrystalGraphBuilder: one structure per call (from pymatgen Structures and from plain arrays),
      and the batch path the data layer uses (build_many on batches of 256 Structures, then a Data each);
  (b) the CGCNN-style path: pymatgen get_all_neighbors(8.0), sort by distance, take 12, assemble tensors;
  (c) the bare vesin neighbour-list call (pairs, shifts, distances) on the same arrays and cutoff.
Every (a) graph is checked against (b) (same neighbours, distances within 1e-6 Å) and the batch graphs
against the per-structure ones (bit for bit). tlgnn and bare-vesin timings are the median of --repeat runs.
Then the graph cache: cold build + write vs load (open packs + materialise every Data).

    .venv/bin/python scripts/bench_graphs.py [--n 2000] [--data PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import vesin  # noqa: E402

from tlgnn.benchmark.report import shown_path  # noqa: E402  (printed output is pasted into docs)
from tlgnn.graphs import CrystalGraphBuilder, GraphCache, structure_key  # noqa: E402
from tlgnn.graphs.builder import structure_arrays  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "mp_multifidelity_bandgap" / "structures.jsonl.gz"
CUTOFF, K = 8.0, 12
BATCH = 256  # structures per build_many call, as tlgnn.graphs.cache builds them


def cgcnn_style(structure):
    """CGCNN's data.py recipe: all neighbours within the radius, sorted by distance, first K, as tensors."""
    all_nbrs = structure.get_all_neighbors(CUTOFF)
    centres, idx, dist, images = [], [], [], []
    for i, nbrs in enumerate(all_nbrs):
        nbrs = sorted(nbrs, key=lambda n: n.nn_distance)[:K]
        centres.extend([i] * len(nbrs))
        idx.extend(n.index for n in nbrs)
        dist.extend(n.nn_distance for n in nbrs)
        images.extend(n.image for n in nbrs)
    edge_index = torch.tensor(np.array([centres, idx]), dtype=torch.long)
    offsets = np.array(images, dtype=np.float64).reshape(-1, 3)
    cart = structure.cart_coords
    vec = cart[idx] + offsets @ structure.lattice.matrix - cart[centres]
    return {
        "z": torch.tensor(structure.atomic_numbers, dtype=torch.long),
        "pos": torch.tensor(cart, dtype=torch.float32),
        "edge_index": edge_index,
        "edge_dist": torch.tensor(dist, dtype=torch.float32),
        "cell_offset": torch.tensor(offsets.round(), dtype=torch.long),
        "edge_vec": torch.tensor(vec, dtype=torch.float32),
    }


def same_graph(ours, ref) -> bool:
    """Same picked neighbours per atom (up to ties at the K-th distance) with distances within 1e-6 Å."""
    e1 = {(int(i), int(j), tuple(map(int, o))): float(d) for (i, j), o, d in
          zip(ours.edge_index.T.tolist(), ours.cell_offset.tolist(), ours.edge_dist.tolist())}
    e2 = {(int(i), int(j), tuple(map(int, o))): float(d) for (i, j), o, d in
          zip(ref["edge_index"].T.tolist(), ref["cell_offset"].tolist(), ref["edge_dist"].tolist())}
    if len(e1) != len(e2):
        return False
    for i in range(ours.num_nodes):
        a = sorted((d, k) for k, d in e1.items() if k[0] == i)
        b = sorted((d, k) for k, d in e2.items() if k[0] == i)
        if len(a) != len(b) or not np.allclose([x for x, _ in a], [x for x, _ in b], atol=1e-6):
            return False
        last = b[-1][0] if b else 0.0
        if {k for d, k in b if d < last - 1e-6} - {k for _, k in a}:
            return False
    return True


def timed(fn, items) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - t0


def median_time(fn, repeat: int) -> float:
    """Median wall time (s) of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def batched(builder, structures, size: int = BATCH) -> list:
    """The data layer's path: build_many on batches (GraphCache builds in batches of 256), a Data per graph."""
    return [g.to_data() for start in range(0, len(structures), size)
            for g in builder.build_many(structures[start : start + size])]


def read_structures(path: Path, n: int) -> list:
    """The first ``n`` structures of a ``structures.jsonl.gz`` (one JSON per line with a ``cif`` field)."""
    from pymatgen.core import Structure

    if not path.exists():
        raise SystemExit(f"--data {shown_path(path, REPO)}: file not found")
    structures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gzip.open(path, "rt") as fh:
            for line in fh:
                if len(structures) >= n:
                    break
                structures.append(Structure.from_str(json.loads(line)["cif"], fmt="cif"))
    return structures


def time_builders(builder, structures, arrays, repeat: int, line) -> tuple[list, float, float]:
    """Print the (a)-(c) timings; returns the CGCNN-style reference graphs and the (a'') and (a) times."""
    def bare(a):
        nl = vesin.NeighborList(cutoff=CUTOFF, full_list=True, n_threads=1)
        return nl.compute(a[1], a[2], list(a[3]), quantities="ijSd")

    warm = min(50, len(structures))
    for s, a in zip(structures[:warm], arrays[:warm]):
        builder(s), builder.from_arrays(*a), cgcnn_style(s), bare(a)
    batched(builder, structures[:warm])
    t_struct = median_time(lambda: [builder(s) for s in structures], repeat)
    t_arrays = median_time(lambda: [builder.from_arrays(*a) for a in arrays], repeat)
    t_batch = median_time(lambda: batched(builder, structures), repeat)
    t_bare = median_time(lambda: [bare(a) for a in arrays], repeat)
    t0 = time.perf_counter()
    reference = [cgcnn_style(s) for s in structures]
    t_cgcnn = time.perf_counter() - t0
    line("(a) tlgnn builder(Structure), one per call", t_struct)
    line("(a') tlgnn builder.from_arrays, one per call", t_arrays)
    line(f"(a'') tlgnn build_many, batches of {BATCH}", t_batch)
    line("(b) CGCNN-style (pymatgen get_all_neighbors)", t_cgcnn)
    line("(c) bare vesin neighbour list (ijSd)", t_bare)
    print(f"ratio vs bare neighbour list: {t_bare / t_batch:.2f} (build_many), {t_bare / t_arrays:.2f} (from arrays), "
          f"{t_bare / t_struct:.2f} (from Structure)")
    return reference, t_cgcnn / t_batch, t_cgcnn / t_struct


def check_graphs(builder, structures, reference, check: int) -> None:
    """Print how many batch graphs equal the one-by-one ones (bit for bit) and the CGCNN-style ones."""
    graphs = batched(builder, structures[:check])
    fields = ("z", "pos", "cell", "edge_index", "edge_vec", "edge_dist", "cell_offset")
    differ = [k for k in range(check) if not all(torch.equal(graphs[k][f], builder(structures[k])[f]) for f in fields)]
    print(f"build_many graphs bit-identical to builder(Structure): {check - len(differ)}/{check}"
          + (f", differing at {differ[:10]}" if differ else ""))
    mismatched = [k for k in range(check) if not same_graph(graphs[k], reference[k])]
    print(f"identical graphs (a) vs (b): {check - len(mismatched)}/{check}" + (f", mismatches at {mismatched[:10]}"
                                                                              if mismatched else ""))


def time_cache(builder, structures, line) -> None:
    """Print the graph cache's cold build, open and load times against rebuilding from the table's JSON."""
    from pymatgen.core import Structure

    n, warm = len(structures), min(50, len(structures))
    keys = [structure_key(s) for s in structures]  # hashing is shared by both cache paths: outside the timing
    with tempfile.TemporaryDirectory() as tmp:
        GraphCache(Path(tmp) / "warm", builder).get_many(structures[:warm], keys=keys[:warm], n_jobs=1)[0]
        t0 = time.perf_counter()
        GraphCache(tmp, builder).get_many(structures, keys=keys, n_jobs=1)
        t_cold = time.perf_counter() - t0
        loads, opens = {}, {}
        for mmap in (False, True):
            best = best_open = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                store = GraphCache(tmp, builder, mmap=mmap).get_many(structures, keys=keys)
                t_open = time.perf_counter() - t0
                graphs = [store[i] for i in range(len(store))]
                best = min(best, time.perf_counter() - t0)
                best_open = min(best_open, t_open)
            loads[mmap], opens[mmap] = best, best_open
            assert len(graphs) == n
        batched_load = __import__("bench_graph_cache").batched_cache_load(tmp, builder, structures, keys, t_cold, line)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*.npy"))
    # What the data layer does without a cache: the aligned table stores each structure as pymatgen JSON, so a
    # rebuild is Structure.from_dict + build (the cache lets it skip both, keyed by the table's structure_key).
    dicts = [json.dumps(s.as_dict()) for s in structures]
    t0 = time.perf_counter()
    for text in dicts:
        builder(Structure.from_dict(json.loads(text)))
    t_table = time.perf_counter() - t0
    line("rebuild from the table's JSON + build", t_table)
    line("cache cold: build + write", t_cold)
    line("cache open (in RAM): verified, ready to serve", opens[False])
    line("cache load (in RAM): open + materialise", loads[False])
    line("cache load (mmap): open + materialise", loads[True])
    print(f"cache size: {size / 2**20:.1f} MiB ({size / n / 1024:.1f} KiB/graph)")
    print(f"cache open speedup: {t_cold / opens[False]:.1f} (in RAM), {t_cold / opens[True]:.1f} (mmap)")
    print(f"cache load speedup: {t_cold / loads[False]:.1f} (in RAM), {t_cold / loads[True]:.1f} (mmap)")
    print(f"cache load speedup vs rebuilding from the table: {t_table / loads[False]:.1f} (in RAM), "
          f"{t_table / loads[True]:.1f} (mmap); batched: {t_table / batched_load[False]:.1f} (in RAM), "
          f"{t_table / batched_load[True]:.1f} (mmap)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of structures (default 2000)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="structures.jsonl.gz (material_id, cif)")
    parser.add_argument("--check", type=int, default=None,
                        help="structures whose graphs are compared (a) vs (b) (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tlgnn / bare-vesin timing (median)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    structures = read_structures(args.data, args.n)
    n, atoms = len(structures), sum(len(s) for s in structures)
    arrays = [structure_arrays(s) for s in structures]
    print(f"{n} structures, {atoms} atoms from {shown_path(args.data, REPO)}; cutoff {CUTOFF} Å, {K} nearest; 1 thread")
    builder = CrystalGraphBuilder(cutoff=CUTOFF, max_neighbors=K)

    def line(label, t):
        print(f"{label:<44s} {t:8.3f} s  {n / t:9.0f} structures/s  {atoms / t:10.0f} atoms/s")

    reference, speedup_batch, speedup_struct = time_builders(builder, structures, arrays, args.repeat, line)
    check_graphs(builder, structures, reference, n if args.check is None else min(args.check, n))
    time_cache(builder, structures, line)
    print(f"speedup of one-structure-per-call builder(Structure): {speedup_struct:.1f}")
    print(f"speedup: {speedup_batch:.1f}")  # build_many: the path the data layer (GraphCache) uses


if __name__ == "__main__":
    main()
