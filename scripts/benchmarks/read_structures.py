"""Time tlgnn.io.read_structures on CIFs written from the MP multi-fidelity set (files/s, serial vs pool).

    .venv/bin/python scripts/benchmarks/read_structures.py [--jsonl ../shared/data/mp_multifidelity_bandgap/structures.jsonl.gz]
        [--n 2000] [--jobs 1 2] [--repeats 3]

One untimed warm-up read (imports, parser caches, the file pages) comes first, so that no ``--jobs`` value pays for
it; each value is then timed ``--repeats`` times, interleaved, and the median is reported.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path

from tlgnn.io import read_structures

DEFAULT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mp_multifidelity_bandgap" / "structures.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jsonl", type=Path, default=DEFAULT, help="JSON lines with material_id and cif (gzipped)")
    ap.add_argument("--n", type=int, default=2000, help="number of CIFs to write and read")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="n_jobs values to time")
    ap.add_argument("--repeats", type=int, default=3, help="timed reads per n_jobs value; the median is reported")
    args = ap.parse_args()
    if not args.jsonl.is_file():
        raise SystemExit(f"read_structures.py: {args.jsonl}: not found (give --jsonl PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        n_files = 0
        with gzip.open(args.jsonl, "rt") as fh:
            for line in fh:
                if n_files >= args.n:
                    break
                row = json.loads(line)
                (Path(tmp) / f"{row['material_id']}.cif").write_text(row["cif"])
                n_files += 1
        warm = read_structures(tmp, on_error="skip", n_jobs=1, progress=False)  # untimed
        times: dict[int, list[float]] = {n_jobs: [] for n_jobs in args.jobs}
        for _ in range(args.repeats):
            for n_jobs in args.jobs:
                start = time.perf_counter()
                result = read_structures(tmp, on_error="skip", n_jobs=n_jobs, progress=False)
                times[n_jobs].append(time.perf_counter() - start)
                assert len(result) == len(warm)
        print(f"{n_files} CIFs: {len(warm)} read, {len(warm.failures)} failed (warm-up read untimed)")
        for n_jobs, values in times.items():
            dt = statistics.median(values)
            print(f"n_jobs={n_jobs}: median {dt:.2f} s of {len(values)} (min {min(values):.2f}, "
                  f"max {max(values):.2f}), {n_files / dt:.0f} files/s")


if __name__ == "__main__":
    main()
