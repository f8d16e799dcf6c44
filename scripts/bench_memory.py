"""Peak memory while iterating one epoch over N graphs: on-disk (memory-mapped) vs in-memory graph packs.

Real graphs (MP structures, or a ``bench_train.py --save-graphs`` file) are replicated to N graphs and written
once as tlgnn graph-cache packs (``tlgnn.graphs.packs.write_pack``, 50,000 graphs per pack, as ``GraphCache``
writes them) in a work folder. For each mode and N a fresh Python process opens the packs as a
``GraphStore`` (``mmap=True``: on-disk; ``mmap=False``: read into RAM), iterates one shuffled epoch of batches
(``--loader batched``, the default: tlgnn's data path, ``tlgnn.data.loader.graph_loader`` gathering whole batches
from the packs; ``--loader pyg``: PyG's ``DataLoader``, one ``Data`` per graph then ``Collater``) and reports its peak RSS (``VmHWM``), the largest
anonymous (``RssAnon``: heap, private to the process) and file-backed (``RssFile``: page cache mapped into
the process, which the kernel drops under memory pressure) parts, and graphs/s.

Example::

    .venv/bin/python scripts/bench_memory.py --sizes 10000,100000,1000000 --workdir /tmp/tlgnn-mem
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PACK_SIZE = 50_000


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``, ``RssAnon``, ``RssFile``) in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure_in_child(script: str, args: list[str]) -> dict:
    """Run ``script --measure ...`` in a fresh Python process (so that its peak RSS is its own) and return the
    JSON record it prints last."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"{Path(script).name}: the measuring process ({' '.join(args)}) failed with status "
                         f"{proc.returncode}:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def scratch_folder(path: Path, keep: bool) -> Iterator[Path]:
    """``path`` for this run's files. Afterwards, unless ``keep``, only what this run wrote is removed: the whole
    folder if the run created it, else the entries that were not there before; nothing of the user's is deleted.
    """
    existed = path.exists()
    if existed and not path.is_dir():
        raise SystemExit(f"--workdir {path}: exists and is not a folder")
    before = set(os.listdir(path)) if existed else set()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        if not keep:
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
            else:
                for name in set(os.listdir(path)) - before:
                    shutil.rmtree(path / name, ignore_errors=True)


def fresh_subfolder(path: Path) -> Path:
    """``path``, which must not exist yet (an earlier run kept with --keep, or the user's own folder)."""
    if path.exists():
        raise SystemExit(f"{path} already exists (an earlier --keep run?): remove it or choose another --workdir")
    return path


# --------------------------------------------------------------------------------------------- measurement
def measure(packs: Path, mode: str, batch_size: int, seed: int, loader_kind: str = "batched") -> dict:
    """Open every pack under ``packs`` in ``mode`` and iterate one shuffled epoch; memory in MiB."""
    import torch
    from torch_geometric.loader import DataLoader

    from tlgnn.data.loader import graph_loader
    from tlgnn.graphs import GraphStore

    torch.set_num_threads(1)
    base = _status_mib("VmRSS")
    t0 = time.perf_counter()
    store = GraphStore.open(sorted(packs.glob("pack-*")), mmap=(mode == "mmap"))
    open_s = time.perf_counter() - t0
    after_open = _status_mib("VmRSS")
    generator = torch.Generator().manual_seed(seed)
    if loader_kind == "batched":
        loader = graph_loader(store, batch_size, shuffle=True, generator=generator)
    else:
        loader = DataLoader(store, batch_size=batch_size, shuffle=True, generator=generator)
    anon = file = 0.0
    n_graphs = n_atoms = 0
    t0 = time.perf_counter()
    for step, batch in enumerate(loader):
        n_graphs += batch.num_graphs
        n_atoms += int(batch.z.shape[0])
        if step % 50 == 0:
            anon, file = max(anon, _status_mib("RssAnon")), max(file, _status_mib("RssFile"))
    epoch_s = time.perf_counter() - t0
    anon, file = max(anon, _status_mib("RssAnon")), max(file, _status_mib("RssFile"))
    if n_graphs != len(store):
        raise RuntimeError(f"epoch saw {n_graphs} graphs, store has {len(store)}")
    return {"mode": mode, "loader": loader_kind, "graphs": len(store), "atoms": n_atoms, "rss_after_imports_mib": base,
            "rss_after_open_mib": after_open, "peak_rss_mib": _status_mib("VmHWM"), "peak_anon_mib": anon,
            "peak_file_mib": file, "open_s": open_s, "epoch_s": epoch_s, "graphs_per_s": n_graphs / epoch_s}


# ------------------------------------------------------------------------------------------------- packs
def base_graphs(args: argparse.Namespace) -> list:
    """Real graphs as ``GraphArrays`` (contract dtypes) from ``--graphs`` or built from ``--data``."""
    import bench_data

    if args.graphs is not None:
        packed = bench_data.load_packed(args.graphs)
    else:
        from tlgnn.graphs import CrystalGraphBuilder

        ids, structures, targets = bench_data.load_mp_structures(args.data, args.limit, args.seed)
        graphs, stats = bench_data.build_graphs(structures, progress=True)
        print(f"built {stats.n} graphs in {stats.build_s:.1f} s on {stats.n_jobs} processes "
              f"({stats.structures_per_s:.0f} structures/s)")
        packed = bench_data.pack(graphs, ids, targets, CrystalGraphBuilder().settings)
    print(f"base graphs: {bench_data.describe(packed)}")
    return bench_data.graph_arrays(bench_data.unpack(packed))


def write_replicated(directory: Path, base: list, n: int) -> float:
    """Write ``n`` graphs (``base`` repeated, distinct keys) as packs of ``PACK_SIZE`` into ``directory``; GiB."""
    from tlgnn.graphs.packs import write_pack

    directory.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, PACK_SIZE):
        stop = min(n, start + PACK_SIZE)
        keys = [hashlib.sha256(f"replica-{i}".encode()).hexdigest() for i in range(start, stop)]
        write_pack(directory, keys, [base[i % len(base)] for i in range(start, stop)])
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 2**30


# -------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    import bench_data

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=bench_data.DEFAULT_DATA, help="structures.jsonl.gz (MP)")
    p.add_argument("--limit", type=int, default=2000, help="real structures to replicate (default 2000)")
    p.add_argument("--graphs", type=Path, help="a bench_train.py --save-graphs file instead of --data")
    p.add_argument("--sizes", default="10000,100000,1000000", help="dataset sizes N (graphs), comma-separated")
    p.add_argument("--memory-max", type=int, default=100_000,
                   help="largest N also run in in-memory mode (default 100000; 1M graphs would not fit in RAM here)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tlgnn-bench-memory"),
                   help="where the replicated packs are written (several GB for 1M graphs)")
    p.add_argument("--keep", action="store_true", help="keep the packs (default: delete them at the end)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--loader", choices=("batched", "pyg"), default="batched",
                   help="batched: tlgnn's pack loader (the data module's path); pyg: PyG DataLoader (per graph)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: child process
    p.add_argument("--mode", choices=("mmap", "memory"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.mode, args.batch_size, args.seed, args.loader)))
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    base = base_graphs(args)
    results = []
    with scratch_folder(args.workdir, args.keep):
        free = shutil.disk_usage(args.workdir).free / 2**30
        print(f"work folder {args.workdir}: {free:.0f} GiB free")
        for n in sizes:
            directory = fresh_subfolder(args.workdir / f"n{n}")
            t0 = time.perf_counter()
            size = write_replicated(directory, base, n)
            print(f"N={n}: wrote {size:.2f} GiB of packs in {time.perf_counter() - t0:.0f} s")
            for mode in ("mmap", "memory"):
                if mode == "memory" and n > args.memory_max:
                    print(f"N={n}: in-memory mode skipped (> --memory-max {args.memory_max})")
                    continue
                r = measure_in_child(__file__, ["--measure", str(directory), "--mode", mode, "--batch-size",
                                                str(args.batch_size), "--seed", str(args.seed), "--loader", args.loader])
                r["disk_gib"] = size
                results.append(r)
                print(f"N={n:>8} mode={mode:<6} loader={args.loader} peak_rss_mib={r['peak_rss_mib']:8.0f} (imports "
                      f"{r['rss_after_imports_mib']:.0f}, after open {r['rss_after_open_mib']:.0f}) "
                      f"peak_anon_mib={r['peak_anon_mib']:8.0f} peak_file_mib={r['peak_file_mib']:8.0f} "
                      f"open_s={r['open_s']:6.1f} epoch_s={r['epoch_s']:7.1f} graphs/s={r['graphs_per_s']:8.0f}")
            if not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
