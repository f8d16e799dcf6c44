"""Rebuild this sample (first 100 systems) from ../shared/data/tinnet_oh_adsorption (see README.md).

    python data/tinnet_sample/build_sample.py [--src ../shared/data/tinnet_oh_adsorption] [--n 100]
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

from ase.io import read, write


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", default=str(here.parents[2] / "shared/data/tinnet_oh_adsorption"))
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    src = Path(args.src)
    rows = list(csv.DictReader(gzip.open(src / "labels.csv.gz", "rt")))[: args.n]
    keep = {r["id"] for r in rows}
    with gzip.open(here / "labels.csv.gz", "wt", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    frames = [a for a in read(str(src / "structures.extxyz.gz"), index=":") if a.info.get("id") in keep]
    with gzip.open(here / "structures.extxyz.gz", "wt") as handle:
        write(handle, frames, format="extxyz")
    print(f"{len(rows)} rows, {len(frames)} frames")


if __name__ == "__main__":
    main()
