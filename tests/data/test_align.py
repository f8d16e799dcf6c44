"""Alignment of the shipped multi-fidelity sample: every matcher, policy and conflict, checked against the raw
tables read independently (csv/json + pymatgen Composition)."""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from support.paths import ROOT
from tlgnn.data.alignment import AlignmentError, align_config, write_alignment
from tlgnn.data.table import MaterialTable

SAMPLE = ROOT / "data" / "mp_sample"
CONFIG = ROOT / "configs" / "data" / "mp_sample.yaml"


def _reduced(formula: str) -> str:
    from pymatgen.core import Composition

    return Composition(formula).reduced_formula


@pytest.fixture(scope="module")
def raw():
    a = list(csv.DictReader(gzip.open(SAMPLE / "labels.csv.gz", "rt")))
    cifs = {d["material_id"]: d["cif"] for d in map(json.loads, gzip.open(SAMPLE / "structures.jsonl.gz", "rt"))}
    b = json.load(gzip.open(SAMPLE / "sources/megnet_multifidelity_gaps.json.gz", "rt"))
    c = list(csv.DictReader(open(SAMPLE / "sources/matbench_expt_gap.csv")))
    from pymatgen.core import Structure

    formula = {mid: Structure.from_str(cif, fmt="cif").composition.reduced_formula for mid, cif in cifs.items()}
    return {"a": a, "b": b, "c": c, "formula": formula, "cifs": cifs}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Parsed-structure cache shared by this module's alignments (each CIF is parsed once)."""
    return tmp_path_factory.getbasetemp() / "tlgnn-parse-cache"  # shared with the other data test modules


@pytest.fixture(scope="module")
def aligned(cache):
    return align_config(CONFIG, n_jobs=1, cache_dir=cache)


def _raw_config(**changes) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["root"] = str(SAMPLE)
    cfg.update(changes)
    return cfg


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_every_row_accounted_for(aligned):
    table, report = aligned
    for name, stats in report.sources.items():
        assert sum(stats.counts.values()) + len(stats.dropped) == stats.rows, name
    assert report.sources["mp"].rows == 500 and report.sources["mp"].counts["new"] == 500
    assert len(table) == 500 and table.frame["material_id"].is_unique


def test_id_matching_and_labels_match_raw(aligned, raw):
    table, report = aligned
    a_ids = {r["material_id"] for r in raw["a"]}
    b_ids = set().union(*[set(v) for v in raw["b"].values()])
    assert report.sources["megnet_mf"].counts["id"] == len(b_ids & a_ids)
    dropped = {d["id"] for d in report.sources["megnet_mf"].dropped}
    assert dropped == b_ids - a_ids  # MP ids without structure and every ICSD id: reported, not lost
    assert all(d["code"] == "unmatched" for d in report.sources["megnet_mf"].dropped)
    frame = table.frame.set_index("material_id")
    for fid, task in (("hse", "gap_hse"), ("pbe", "gap_pbe_mf"), ("scan", "gap_scan")):
        expected = {k: v for k, v in raw["b"][fid].items() if k in a_ids}
        got = frame[task].dropna()
        assert set(got.index) == set(expected)
        np.testing.assert_allclose(got.loc[list(expected)].to_numpy(), list(expected.values()))
    # missing stays NaN; provenance points to the source row holding the value
    assert frame["gap_exp_icsd"].isna().all()
    row = table.frame.index[table.frame["gap_hse"].notna()][0]
    src, b_row = table.provenance(row)["gap_hse"]
    assert src == "megnet_mf" and report.sources["megnet_mf"].rows > b_row >= 0


def test_pbe_disagreements_listed(aligned, raw):
    _, report = aligned
    a = {r["material_id"]: float(r["band_gap_pbe"]) for r in raw["a"]}
    expected = {k for k, v in raw["b"]["pbe"].items() if k in a and abs(v - a[k]) > 0.1}
    cmp = next(c for c in report.comparisons if c["tasks"] == ["gap_pbe_mp", "gap_pbe_mf"])
    assert {r["material_id"] for r in cmp["rows"]} == expected and len(expected) > 10
    assert cmp["both"] == len(set(raw["b"]["pbe"]) & set(a))


def test_composition_lowest_energy_policy(aligned, raw):
    table, report = aligned
    energy = {r["material_id"]: float(r["formation_energy_per_atom"]) for r in raw["a"]}
    by_formula = defaultdict(list)
    for mid, f in raw["formula"].items():
        by_formula[f].append(mid)
    frame = table.frame.set_index("material_id")
    expected: dict[str, list[float]] = defaultdict(list)
    for row in raw["c"]:
        f = _reduced(row["formula"])
        if f in by_formula:
            expected[min(by_formula[f], key=energy.__getitem__)].append(float(row["target"]))
    got = frame["gap_exp"].dropna()
    assert set(got.index) == set(expected)
    for mid, vals in expected.items():
        assert got[mid] == pytest.approx(np.mean(vals))
    n_ambiguous = len({_reduced(r["formula"]) for r in raw["c"]} & {f for f, v in by_formula.items() if len(v) > 1})
    assert report.sources["expt_gap"].ambiguous_formulas == n_ambiguous > 5
    # every ambiguous formula names the polymorph it went to and by how much energy it won
    choices = {c["formula"]: c for c in report.sources["expt_gap"].polymorph_choices}
    assert len(choices) == n_ambiguous
    for f, c in choices.items():
        ranked = sorted(energy[m] for m in by_formula[f])
        assert c["chosen"] == [min(by_formula[f], key=energy.__getitem__)] and c["polymorphs"] == len(ranked)
        assert c["margin_ev_per_atom"] == pytest.approx(ranked[1] - ranked[0])
    md = report.to_markdown()
    closest = min(choices.values(), key=lambda c: c["margin_ev_per_atom"])
    assert "## Polymorph choices" in md and f"{closest['formula']} ({closest['polymorphs']} polymorphs)" in md
    unmatched = [r for r in raw["c"] if _reduced(r["formula"]) not in by_formula]
    assert len(report.sources["expt_gap"].dropped) == len(unmatched)
    # classification labels are class indices of classes [0, 1]
    assert set(frame["is_metal_exp"].dropna().unique()) <= {0.0, 1.0}


def test_polymorph_policies_skip_and_all(tmp_path, aligned, raw, cache):
    _, report = aligned
    skip_table, skip = align_config(_write(tmp_path, _raw_config(polymorph_policy="skip")), n_jobs=1, cache_dir=cache)
    n_amb = report.sources["expt_gap"].ambiguous_formulas
    codes = [d["code"] for d in skip.sources["expt_gap"].dropped]
    assert codes.count("ambiguous_formula") == n_amb
    assert skip.sources["expt_gap"].counts["composition"] == report.sources["expt_gap"].counts["composition"] - n_amb
    all_table, every = align_config(_write(tmp_path, _raw_config(polymorph_policy="all")), n_jobs=1, cache_dir=cache)
    counts = all_table.frame.groupby("formula")["gap_exp"].apply(lambda s: (s.notna().sum(), len(s)))
    multi = [f for f, (labelled, n) in counts.items() if labelled and n > 1]
    assert multi and all(counts[f][0] == counts[f][1] for f in multi)  # every polymorph got the label
    assert every.sources["expt_gap"].counts["composition"] == report.sources["expt_gap"].counts["composition"]
    assert all_table.frame["gap_exp"].notna().sum() > skip_table.frame["gap_exp"].notna().sum()


def _structure_source(tmp_path: Path, raw, n_a: int = 400) -> dict:
    """Source A cut to its first ``n_a`` rows, plus a second structure source: supercells of 12 A materials
    (must match by structure), 8 materials absent from the cut A (new), and a polymorph of a kept formula."""
    from pymatgen.core import Structure

    rows = raw["a"][:n_a]
    with (tmp_path / "a.csv").open("w", newline="") as h:
        w = csv.DictWriter(h, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    kept = [r["material_id"] for r in rows]
    formula_of = raw["formula"]
    records = []
    for mid in kept[:12]:
        s = Structure.from_str(raw["cifs"][mid], fmt="cif")
        s.make_supercell([2, 1, 1])
        records.append({"id": f"x-{mid}", "gap": 1.0, "structure": s.as_dict()})
    for r in raw["a"][n_a:n_a + 8]:
        records.append({"id": f"x-{r['material_id']}", "gap": 2.0,
                        "structure": Structure.from_str(raw["cifs"][r["material_id"]], fmt="cif").as_dict()})
    kept_formulas = {formula_of[m]: m for m in kept}
    poly = next(r["material_id"] for r in raw["a"][n_a:] if formula_of[r["material_id"]] in kept_formulas
                and r["material_id"] not in {x["id"][2:] for x in records})
    records.append({"id": f"x-{poly}", "gap": 3.0,
                    "structure": Structure.from_str(raw["cifs"][poly], fmt="cif").as_dict()})
    (tmp_path / "x.json").write_text(json.dumps(records))
    return {"name": "other", "path": str(tmp_path / "x.json"), "id_column": "id", "namespace": "other",
            "structure": {"kind": "inline", "column": "structure", "format": "json"},
            "labels": {"gap": {"task": "gap_other", "unit": "eV"}}}


def test_structure_matcher(tmp_path, raw, cache):
    cfg = _raw_config()
    cfg["sources"][0]["path"] = str(tmp_path / "a.csv")
    cfg["sources"] = [cfg["sources"][0], _structure_source(tmp_path, raw)]
    table, report = align_config(_write(tmp_path, cfg), n_jobs=1, cache_dir=cache)
    stats = report.sources["other"]
    assert stats.counts["structure"] == 12 and stats.counts["new"] == 9 and not stats.dropped
    frame = table.frame.set_index("material_id")
    assert (frame.loc[[r["material_id"] for r in raw["a"][:12]], "gap_other"] == 1.0).all()
    assert len(table) == 409 and frame.loc[frame["gap_other"] == 3.0].index[0].startswith("x-mp-")


def test_links_duplicates_and_conflicts(tmp_path, raw, cache):
    """An experimental table keyed by its own ids with an `mp_id` link column; the same material twice."""
    a = raw["a"]
    rows = [
        {"exp_id": "e1", "mp_id": a[0]["material_id"], "gap": "1.00"},
        {"exp_id": "e2", "mp_id": a[0]["material_id"], "gap": "1.04"},  # duplicate within tolerance
        {"exp_id": "e3", "mp_id": a[1]["material_id"], "gap": "1.0"},
        {"exp_id": "e4", "mp_id": a[1]["material_id"], "gap": "2.0"},  # conflicting duplicate
        {"exp_id": "e5", "mp_id": "mp-does-not-exist", "gap": "3.0"},
        {"exp_id": "e6", "mp_id": "", "gap": ""},  # no link and no label
    ]
    with (tmp_path / "e.csv").open("w", newline="") as h:
        w = csv.DictWriter(h, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    src = {"name": "exp", "path": str(tmp_path / "e.csv"), "id_column": "exp_id", "links": {"mp_id": "mp"},
           "tolerance": 0.1, "labels": {"gap": {"task": "gap_link", "unit": "eV"}}}
    cfg = _raw_config()
    cfg["sources"] = cfg["sources"][:1] + [src]
    table, report = align_config(_write(tmp_path, cfg), n_jobs=1, cache_dir=cache)
    frame = table.frame.set_index("material_id")
    assert frame.loc[a[0]["material_id"], "gap_link"] == pytest.approx(1.02)
    assert frame.loc[a[1]["material_id"], "gap_link"] == pytest.approx(1.5)
    assert report.sources["exp"].counts["id"] == 4
    assert {d["row"] for d in report.sources["exp"].dropped} == {4, 5}
    conflicts = report.conflicts
    assert len(report.duplicates) == 2 and len(conflicts) == 1 and conflicts[0]["rows"] == [2, 3]
    assert json.loads(frame.loc[a[1]["material_id"], "provenance"])["gap_link"] == ["exp", [2, 3]]
    src["duplicates"] = "first"
    table, _ = align_config(_write(tmp_path, cfg), n_jobs=1, cache_dir=cache)
    assert table.frame.set_index("material_id").loc[a[1]["material_id"], "gap_link"] == 1.0
    src["duplicates"] = "error"
    with pytest.raises(AlignmentError, match=r"source 'exp', task 'gap_link': material mp-\S+ is given by rows"):
        align_config(_write(tmp_path, cfg), n_jobs=1, cache_dir=cache)


def test_write_and_reload(tmp_path, aligned):
    table, report = aligned
    path = write_alignment(table, report, tmp_path / "out")
    again = MaterialTable.load(tmp_path / "out")
    assert again.task_names == table.task_names and again.tasks[-1].classes == [0, 1]
    np.testing.assert_array_equal(np.isnan(again.labels()), np.isnan(table.labels()))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Task overlap" in md and "gap_pbe_mp vs gap_pbe_mf" in md
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    hse = data["overlap"]["tasks"].index("gap_hse")
    assert data["overlap"]["matrix"][hse][hse] == int(table.frame["gap_hse"].notna().sum())
    assert path.name == "aligned.parquet" and math.isclose(
        data["label_stats"]["gap_hse"]["mean"], float(table.frame["gap_hse"].mean()))


def test_lazy_table_reads_structures_from_the_file_by_row_group(tmp_path, aligned, monkeypatch):
    import tlgnn.data.table as table_module
    from tlgnn.data.graphs import LazyStructures

    monkeypatch.setattr(table_module, "ROW_GROUP_ROWS", 7)  # several row groups in a small table
    table, report = aligned
    write_alignment(table, report, tmp_path / "out")
    eager = MaterialTable.load(tmp_path / "out")
    lazy = MaterialTable.load(tmp_path / "out", structures="lazy")
    assert "structure" not in lazy.frame and lazy.structure_file == tmp_path / "out" / "aligned.parquet"
    texts = eager.frame["structure"].tolist()
    assert len(texts) > 21 and list(lazy.structure_texts()) == texts
    # a subset (rows in any order) keeps pointing at the right file rows, and saves the JSON back
    rows = np.array([len(texts) - 1, 3, 15, 0, 8])
    part = lazy.subset(rows)
    assert part.structure_file is not None and "structure" not in part.frame
    assert [part.structure_texts()[i] for i in (4, 0, 2)] == [texts[8], texts[-1], texts[15]]
    assert part.structure(1) == eager.structure(3) and LazyStructures(part.structure_texts())[2] == eager.structure(15)
    part.save(tmp_path / "part")
    again = MaterialTable.load(tmp_path / "part")
    assert again.frame["structure"].tolist() == [texts[i] for i in rows]
    assert again.frame["material_id"].tolist() == eager.frame["material_id"].iloc[rows].tolist()
    with pytest.raises(ValueError, match="structures must be"):
        MaterialTable.load(tmp_path / "out", structures="disk")
    # the file rewritten under a loaded table (other rows): an error, never another material's structure
    eager.subset(np.arange(len(texts))[::-1]).save(tmp_path / "out")
    with pytest.raises(RuntimeError, match="changed since the table was loaded"):
        lazy.structure(0)


def test_cli_align(tmp_path, capsys, cache):
    from tlgnn.cli.main import main

    out = tmp_path / "out"
    rc = main(["align", "--config", str(CONFIG), "--out", str(out), "--workers", "1", "--cache-dir", str(cache)])
    assert rc == 0 and (out / "aligned.parquet").is_file() and (out / "report.json").is_file()
    assert "500 materials" in capsys.readouterr().out
    rc = main(["align", "--config", str(CONFIG), "--out", str(out), "--set", "sources.mp.path=missing.csv"])
    assert rc == 2 and "source 'mp', field 'path': file not found" in capsys.readouterr().err


def test_package_names_are_the_documented_functions_whatever_was_imported_first():
    import tlgnn.data
    import tlgnn.data.alignment  # noqa: F401 - importing the submodule must not shadow the function
    from tlgnn.data import align, align_config

    assert callable(align) and align.__name__ == "align" and tlgnn.data.align is align
    assert align_config is tlgnn.data.alignment.align_config
