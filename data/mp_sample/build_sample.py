"""Rebuild this sample from the full raw sources (see README.md). Not needed to use the sample.

    python data/mp_sample/build_sample.py [--src ../shared/data/mp_multifidelity_bandgap]

Deterministic (random.Random(7)). Picks ~500 source-A materials: every one with HSE, GLLB-SC or SCAN is a
candidate, topped up with PBE-only rows, PBE disagreements between A and B, and all polymorphs of formulas that
the experimental tables (C, D) contain; then cuts B, C and D down to entries touching those materials plus some
that do not (MP ids without a structure here, ICSD-keyed experimental gaps, unmatched formulas).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
from collections import defaultdict
from pathlib import Path

from pymatgen.core import Composition

A_COLUMNS = ["material_id", "formation_energy_per_atom", "band_gap_pbe", "efermi", "volume", "total_magnetization"]


def reduced(formula: str) -> str | None:
    try:
        return Composition(formula).reduced_formula
    except Exception:  # noqa: BLE001
        return None


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--src", default=str(here.parents[2] / "shared/data/mp_multifidelity_bandgap"))
    args = parser.parse_args()
    src = Path(args.src)
    rng = random.Random(7)
    labels = list(csv.DictReader(gzip.open(src / "labels.csv.gz", "rt")))
    gaps = json.load(gzip.open(src / "sources/megnet_multifidelity_gaps.json.gz", "rt"))
    expt_gap = list(csv.DictReader(open(src / "sources/matbench_expt_gap.csv")))
    expt_metal = list(csv.DictReader(open(src / "sources/matbench_expt_is_metal.csv")))
    by_formula = defaultdict(list)
    for row in labels:
        by_formula[reduced(row["formula_sum"])].append(row["material_id"])
    c_formulas = {reduced(r["formula"]) for r in expt_gap} | {reduced(r["formula"]) for r in expt_metal}

    hse = [r["material_id"] for r in labels if r["gap_hse"]]
    gllb_scan = [r["material_id"] for r in labels if (r["gap_gllbsc"] or r["gap_scan"]) and not r["gap_hse"]]
    disagree = [r["material_id"] for r in labels if r["gap_pbe_mf"]
                and abs(float(r["gap_pbe_mf"]) - float(r["band_gap_pbe"])) > 0.1]
    poly = sorted(f for f in c_formulas if f and len(by_formula.get(f, [])) >= 2 and len(by_formula[f]) <= 4)
    single = sorted(f for f in c_formulas if f and len(by_formula.get(f, [])) == 1)
    chosen: list[str] = []
    for pool, n in ((hse, 170), (gllb_scan, 60), (disagree, 25)):
        chosen += rng.sample(sorted(set(pool) - set(chosen)), n)
    for f in rng.sample(poly, 25):
        chosen += [m for m in by_formula[f] if m not in chosen]
    for f in rng.sample(single, 60):
        chosen += [m for m in by_formula[f] if m not in chosen]
    rest = sorted({r["material_id"] for r in labels} - set(chosen))
    chosen += rng.sample(rest, max(0, 500 - len(chosen)))
    chosen_set = set(chosen)
    rows = [r for r in labels if r["material_id"] in chosen_set]

    with gzip.open(here / "labels.csv.gz", "wt", newline="") as handle:
        writer = csv.DictWriter(handle, A_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with gzip.open(src / "structures.jsonl.gz", "rt") as inp, gzip.open(here / "structures.jsonl.gz", "wt") as out:
        for line in inp:
            if json.loads(line)["material_id"] in chosen_set:
                out.write(line)

    in_a = set(labels_ids := [r["material_id"] for r in labels])
    outside = {f: sorted(set(v) - in_a) for f, v in gaps.items() if not f.endswith("_exp")}
    extra = set(rng.sample(outside["pbe"], 80)) | set(rng.sample(outside["hse"], 30))
    sample_gaps = {}
    for fid, values in gaps.items():
        if fid.endswith("_exp"):
            keep = set(rng.sample(sorted(values), 25))
        else:
            keep = (chosen_set | extra) & set(values)
        sample_gaps[fid] = {k: v for k, v in values.items() if k in keep}
    with gzip.open(here / "sources/megnet_multifidelity_gaps.json.gz", "wt") as handle:
        json.dump(sample_gaps, handle)

    sample_formulas = {reduced(r["formula_sum"]) for r in rows}
    for name, table in (("matbench_expt_gap.csv", expt_gap), ("matbench_expt_is_metal.csv", expt_metal)):
        match = [r for r in table if reduced(r["formula"]) in sample_formulas]
        miss = rng.sample([r for r in table if reduced(r["formula"]) not in sample_formulas], 30)
        keep = {id(r) for r in match + miss}
        with open(here / "sources" / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["formula", "target"])
            writer.writeheader()
            writer.writerows(r for r in table if id(r) in keep)
    print(f"A {len(rows)} rows; B {({k: len(v) for k, v in sample_gaps.items()})}; "
          f"{len(labels_ids)} in full A")


if __name__ == "__main__":
    main()
