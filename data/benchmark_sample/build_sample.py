"""Rebuild data/benchmark_sample/labels.csv.gz from the shared multi-fidelity band-gap set.

    .venv/bin/python data/benchmark_sample/build_sample.py [--shared ../shared/data/mp_multifidelity_bandgap]

240 rows with an HSE06 gap and 160 PBE-only rows, drawn with numpy seed 20240611 from the rows of
labels.csv.gz (sorted by material_id); columns as in the source file (a subset).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["material_id", "formula_sum", "band_gap_pbe", "gap_pbe_mf", "gap_hse", "gap_gllbsc", "gap_scan"]


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(here.parents[2] / "shared" / "data" / "mp_multifidelity_bandgap"))
    args = parser.parse_args()
    frame = pd.read_csv(Path(args.shared) / "labels.csv.gz", usecols=COLUMNS).sort_values("material_id")
    rng = np.random.default_rng(20240611)
    hse = frame[frame.gap_hse.notna()]
    rest = frame[frame.gap_hse.isna()]
    sample = pd.concat([hse.iloc[rng.choice(len(hse), 240, replace=False)], rest.iloc[rng.choice(len(rest), 160, replace=False)]])
    sample = sample.sort_values("material_id")[COLUMNS]
    sample.to_csv(here / "labels.csv.gz", index=False, float_format="%.6g")
    print(f"wrote {len(sample)} rows")


if __name__ == "__main__":
    main()
