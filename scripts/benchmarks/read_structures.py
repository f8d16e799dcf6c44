"""Time tlgnn.io.read_structures on CIFs written from the MP multi-fidelity set (files/s, serial vs pool).

    .venv/bin/python scripts/benchmarks/read_structures.py [--jsonl ../shared/data/mp_multifidelity_bandgap/structures.jsonl.gz]
        [--n 2000] [--jobs 1 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with gzip.open(args.jsonl, "rt") as fh:
            for i, line in enumerate(fh):
                if i >= args.n:
                    break
                row = json.loads(line)
                (Path(tmp) / f"{row['material_id']}.cif").write_text(row["cif"])
        for n_jobs in args.jobs:
            start = time.perf_counter()
            result = read_structures(tmp, on_error="skip", n_jobs=n_jobs, progress=False)
            dt = time.perf_counter() - start
            print(f"n_jobs={n_jobs}: {len(result)} read, {len(result.failures)} failed, {dt:.1f} s, "
                  f"{args.n / dt:.0f} files/s")


if __name__ == "__main__":
    main()
