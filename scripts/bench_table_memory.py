"""Peak memory of loading an aligned table of N materials: structures' JSON in RAM vs left in the file.

The data module loads its table with ``MaterialTable.load(path, structures="lazy")``: the ``structure`` column
(pymatgen JSON, about 5 KB a crystal) stays in ``aligned.parquet`` and is read a row group at a time only to
build graphs the cache lacks. This script shows what that saves. Real MP structures (``--limit`` of them) are
replicated to N rows with distinct ids and written once, in chunks, as a tlgnn ``aligned.parquet`` (row groups
of ``tlgnn.data.table.ROW_GROUP_ROWS``). For each mode and N a fresh Python process loads the table, takes what
the data module takes from it (labels, ids, an 80 % subset) and reports its peak RSS (``VmHWM``) and load time.
The baseline is the same load with ``structures="memory"`` (every row's JSON in the DataFrame).

Example::

    .venv/bin/python scripts/bench_table_memory.py --sizes 10000,100000,1000000 --workdir /tmp/tlgnn-table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_memory import (_status_mib, fresh_subfolder, measure_in_child,  # noqa: E402  (shared with the
                          scratch_folder)                                   # graph-pack benchmark)


def measure(path: Path, mode: str) -> dict:
    """Load ``path`` with ``structures=mode`` and do what the data module does with the table; MiB and s."""
    import numpy as np

    from tlgnn.data.dataset import label_arrays
    from tlgnn.data.table import MaterialTable

    base = _status_mib("VmRSS")
    t0 = time.perf_counter()
    table = MaterialTable.load(path, structures=mode)
    y, mask = label_arrays(table, table.task_names)
    ids = table.frame["material_id"].tolist()
    part = table.subset(np.flatnonzero(np.arange(len(table)) % 5 != 0))  # 80 % of the rows, as a training split
    load_s = time.perf_counter() - t0
    first = table.structure(len(table) - 1)  # one structure read back, from wherever it lives
    return {"mode": mode, "rows": len(table), "ids": len(ids), "subset": len(part), "labelled": int(mask.sum()),
            "sites_last": len(first), "rss_after_imports_mib": base, "peak_rss_mib": _status_mib("VmHWM"),
            "load_s": load_s}


def write_table(path: Path, texts: list[str], formulas: list[str], keys: list[str], gaps: list[float], n: int) -> float:
    """Write an ``aligned.parquet`` of ``n`` rows (the base rows repeated, distinct ids) in chunks; GiB."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tlgnn.data.table import META_KEY, ROW_GROUP_ROWS
    from tlgnn.data.tasks import TaskSpec

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps([TaskSpec(name="band_gap_pbe", kind="regression", unit="eV").to_dict()]).encode()
    writer = None
    chunk = ROW_GROUP_ROWS * 16
    m = len(texts)
    for start in range(0, n, chunk):
        rows = range(start, min(n, start + chunk))
        frame = pd.DataFrame({
            "material_id": [f"replica-{i}" for i in rows],
            "formula": [formulas[i % m] for i in rows],
            "structure": [texts[i % m] for i in rows],
            "structure_key": [f"{keys[i % m]}-{i // m}" for i in rows],
            "provenance": ["{}"] * len(rows),
            "band_gap_pbe": [gaps[i % m] for i in rows],
        })
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if writer is None:
            schema = table.schema.with_metadata({**(table.schema.metadata or {}), META_KEY: meta})
            writer = pq.ParquetWriter(path, schema, compression="zstd")
        writer.write_table(table.cast(schema), row_group_size=ROW_GROUP_ROWS)
    writer.close()
    return path.stat().st_size / 2**30


def main(argv: list[str] | None = None) -> None:
    import bench_data

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=bench_data.DEFAULT_DATA, help="structures.jsonl.gz (MP)")
    p.add_argument("--limit", type=int, default=2000, help="real structures to replicate (default 2000)")
    p.add_argument("--sizes", default="10000,100000,1000000", help="table sizes N (rows), comma-separated")
    p.add_argument("--memory-max", type=int, default=100_000,
                   help="largest N also loaded with the JSON in RAM (default 100000)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tlgnn-bench-table"))
    p.add_argument("--keep", action="store_true", help="keep the written tables")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: child process
    p.add_argument("--mode", choices=("memory", "lazy"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.mode)))
        return

    from tlgnn.graphs import structure_key

    ids, structures, gaps = bench_data.load_mp_structures(args.data, args.limit, args.seed)
    texts = [s.to_json() for s in structures]
    formulas = [s.composition.reduced_formula for s in structures]
    keys = [structure_key(s) for s in structures]
    print(f"base: {len(texts)} MP structures, {sum(map(len, texts)) / len(texts) / 1024:.1f} KiB of JSON each")
    results = []
    with scratch_folder(args.workdir, args.keep):
        for n in sorted(int(s) for s in args.sizes.split(",")):
            path = fresh_subfolder(args.workdir / f"n{n}") / "aligned.parquet"
            t0 = time.perf_counter()
            gib = write_table(path, texts, formulas, keys, gaps, n)
            print(f"N={n}: wrote {gib:.2f} GiB in {time.perf_counter() - t0:.0f} s", flush=True)
            for mode in ("lazy", "memory") if n <= args.memory_max else ("lazy",):
                row = measure_in_child(__file__, ["--measure", str(path), "--mode", mode])
                results.append(row)
                print(f"rows={n:<9} structures={mode:<7} peak_rss_mib={row['peak_rss_mib']:8.1f} "
                      f"(after imports {row['rss_after_imports_mib']:.0f})  load_s={row['load_s']:6.2f}", flush=True)
    for n in sorted({r["rows"] for r in results}):
        pair = {r["mode"]: r["peak_rss_mib"] for r in results if r["rows"] == n}
        if len(pair) == 2:
            print(f"rows={n}: in-memory / lazy peak RSS = {pair['memory'] / pair['lazy']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
