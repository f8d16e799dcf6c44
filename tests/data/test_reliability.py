"""No silent data loss (issue 19, items 2, 3, 5, 6, 7), on real rows of data/mp_sample: a semicolon CSV with
decimal commas, a source that loses every row or most of them, physically impossible labels, two `tlgnn align`
processes writing into one folder, conflicting duplicates on the console of `fit`, a table without its checksum."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from support.paths import ROOT
from tlgnn.data.alignment import align_config, output_lock
from tlgnn.data.sources import SourceError
from tlgnn.data.table import MaterialTable, UnverifiedTableWarning
from tlgnn.utils.config import ConfigError

SAMPLE = ROOT / "data" / "mp_sample"


def _rows(n: int, start: int = 0) -> list[dict]:
    rows = list(csv.DictReader(gzip.open(SAMPLE / "labels.csv.gz", "rt")))
    return rows[start:start + n]


def _cifs() -> dict[str, str]:
    return {d["material_id"]: d["cif"] for d in map(json.loads, gzip.open(SAMPLE / "structures.jsonl.gz", "rt"))}


def _mp_source(n: int, folder: Path, **changes) -> dict:
    """The first ``n`` sample materials with their structures (a CSV with a header, structures by id)."""
    path = folder / "mp.csv"
    rows = _rows(n)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["material_id", "band_gap_pbe", "formation_energy_per_atom"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return {"name": "mp", "path": str(path), "id_column": "material_id", "namespace": "mp",
            "structure": {"kind": "table", "path": str(SAMPLE / "structures.jsonl.gz"), "id_column": "material_id",
                          "column": "cif"},
            "labels": {"band_gap_pbe": {"task": "gap_pbe", "unit": "eV", "fidelity": "pbe"},
                       "formation_energy_per_atom": {"task": "e_form", "unit": "eV/atom"}}, **changes}


def _config(folder: Path, sources: list[dict], **extra) -> Path:
    path = folder / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": sources, **extra}, sort_keys=False))
    return path


def _later_source(folder: Path, ids: list[str], values: list[str], **changes) -> dict:
    """A label-only source keyed by MP id (no structures): it aligns to ``mp`` by id."""
    path = folder / "later.csv"
    path.write_text("material_id,gap\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, values)))
    return {"name": "later", "path": str(path), "id_column": "material_id", "namespace": "mp",
            "labels": {"gap": {"task": "gap_later", "unit": "eV", "fidelity": "hse"}}, **changes}


# ------------------------------------------------------------------------------- item 2: delimiters, lost rows
def test_semicolon_csv_with_decimal_commas_is_read_not_lost(tmp_path):
    """`mp-10182;0,758` rows (CGCNN layout, no header): every row aligns with its value, and the report says how
    the file was read. Before: ids read as `mp-10182;0`, every row dropped as a bad structure, exit 0."""
    rows, cifs = _rows(12), _cifs()
    for r in rows:
        (tmp_path / f"{r['material_id']}.cif").write_text(cifs[r["material_id"]])
    lines = [f"{r['material_id']};{float(r['band_gap_pbe']):.3f}".replace(".", ",") for r in rows]
    (tmp_path / "id_prop.csv").write_text("\n".join(lines) + "\n")
    src = {"name": "cgcnn", "path": "id_prop.csv", "header": False, "columns": ["material_id", "target"],
           "id_column": "material_id", "structure": {"kind": "files", "column": "material_id"},
           "labels": {"target": {"task": "gap", "unit": "eV"}}}
    table, report = align_config(_config(tmp_path, [src], root="."), n_jobs=1)
    assert table.frame["material_id"].tolist() == [r["material_id"] for r in rows]
    np.testing.assert_allclose(table.frame["gap"], [round(float(r["band_gap_pbe"]), 3) for r in rows])
    assert not report.dropped
    notes = report.sources["cgcnn"].notes
    assert "id_prop.csv read as semicolon-separated with decimal commas (0,758 = 0.758)" in notes
    # with a header row too; ids with commas in a comma-separated file are left alone
    (tmp_path / "labels.csv").write_text("material_id;target\n" + "\n".join(lines) + "\n")
    table2, _ = align_config(_config(tmp_path, [{**src, "path": "labels.csv", "header": True, "columns": None}],
                                     root="."), n_jobs=1)
    np.testing.assert_array_equal(table2.frame["gap"], table.frame["gap"])


def test_a_source_that_loses_every_row_is_an_error_naming_the_top_reason(tmp_path):
    """Ten real MP ids that are not among the structures aligned: every row is unmatched -> an error naming the
    source, the count and the reason; `allow_all_dropped: true` accepts it (the report lists the rows)."""
    ids = [r["material_id"] for r in _rows(10, start=20)]
    sources = [_mp_source(20, tmp_path), _later_source(tmp_path, ids, ["1.5"] * 10)]
    with pytest.raises(SourceError, match=r"source 'later': all 10 rows were dropped, 10 as unmatched, e\.g\. row 0 "
                                          rf"\(id '{ids[0]}'\): no structure; id mp:{ids[0]} matches no material"):
        align_config(_config(tmp_path, sources), n_jobs=1)
    sources[1]["allow_all_dropped"] = True
    table, report = align_config(_config(tmp_path, sources), n_jobs=1)
    assert len(table) == 20 and len(report.sources["later"].dropped) == 10
    assert table.frame["gap_later"].isna().all()


def test_a_source_losing_most_rows_to_one_reason_says_so_on_the_console(tmp_path, capsys):
    """3 of 10 ids match: the summary `tlgnn align` prints names the 7 rows and the reason; 3 of 10 lost is
    quiet."""
    ids = [r["material_id"] for r in _rows(3)] + [r["material_id"] for r in _rows(7, start=20)]
    sources = [_mp_source(20, tmp_path), _later_source(tmp_path, ids, ["1.5"] * 10)]
    _, report = align_config(_config(tmp_path, sources), n_jobs=1)
    want = f"warning: source 'later': 7 of 10 rows dropped as unmatched, e.g. row 3 (id {ids[3]})"
    assert any(line.startswith(want) for line in report.warnings()), report.warnings()
    assert want in report.summary()
    from tlgnn.cli.main import main

    assert main(["align", "--config", str(_config(tmp_path, sources)), "--out", str(tmp_path / "out"),
                 "--workers", "1", "--no-cache"]) == 0
    assert want in capsys.readouterr().out
    ids = [r["material_id"] for r in _rows(7)] + [r["material_id"] for r in _rows(3, start=20)]
    sources[1] = _later_source(tmp_path, ids, ["1.5"] * 10)
    assert align_config(_config(tmp_path, sources), n_jobs=1)[1].warnings() == []


# --------------------------------------------------------------------------- item 3: physically impossible labels
def test_negative_band_gap_is_dropped_and_reported_by_source_row_and_id(tmp_path):
    """A band gap of -1.5 eV (unit eV, a fidelity: >= 0 by default) is left out of the table, named in the
    report and on the console; negative formation energies are physical and kept."""
    rows = _rows(12)
    ids = [r["material_id"] for r in rows]
    values = [r["band_gap_pbe"] for r in rows]
    values[4] = "-1.5"
    sources = [_mp_source(12, tmp_path), _later_source(tmp_path, ids, values)]
    table, report = align_config(_config(tmp_path, sources), n_jobs=1)
    frame = table.frame.set_index("material_id")
    assert np.isnan(frame.loc[ids[4], "gap_later"]) and frame["gap_later"].notna().sum() == 11
    assert (frame["e_form"] < 0).sum() > 0  # formation energies: no default range
    assert report.sources["later"].out_of_range == [
        {"task": "gap_later", "row": 4, "id": ids[4], "value": -1.5, "valid": ">= 0 eV"}]
    want = (f"warning: source 'later': 1 labels outside their valid range left out, e.g. gap_later = -1.5 at row 4 "
            f"(id {ids[4]}; valid >= 0 eV)")
    assert want in report.warnings()
    assert f"- later row 4 (id `{ids[4]}`): gap_later = -1.5, valid >= 0 eV" in report.to_markdown()
    # policy error: refused, naming the source, the field, the row and the id
    with pytest.raises(SourceError, match=rf"source 'later', field 'labels.gap', row 4 \(id '{ids[4]}'\): -1.5 is "
                                          r"outside the valid range of task 'gap_later' \(>= 0 eV; 1 such values\)"):
        align_config(_config(tmp_path, [sources[0], {**sources[1], "out_of_range": "error"}]), n_jobs=1)
    # an explicit range replaces the default; [null, null] turns the check off
    open_range = {**sources[1], "labels": {"gap": {"task": "gap_later", "unit": "eV", "fidelity": "hse",
                                                   "valid_range": [None, None]}}}
    table, report = align_config(_config(tmp_path, [sources[0], open_range]), n_jobs=1)
    assert table.frame.set_index("material_id").loc[ids[4], "gap_later"] == -1.5 and not report.warnings()
    capped = {**sources[1], "labels": {"gap": {"task": "gap_later", "unit": "eV", "valid_range": [-2, 1.0]}}}
    _, report = align_config(_config(tmp_path, [sources[0], capped]), n_jobs=1)
    assert {d["row"] for d in report.sources["later"].out_of_range} == \
        {i for i, v in enumerate(values) if float(v) > 1.0}
    assert table.tasks[-1].to_dict()["valid_range"] == [None, None]  # travels with the table's tasks


def test_valid_range_and_out_of_range_are_validated_naming_the_key(tmp_path):
    sources = [_mp_source(5, tmp_path), _later_source(tmp_path, ["mp-1"], ["1"])]
    bad = {**sources[1], "labels": {"gap": {"task": "g", "unit": "eV", "valid_range": [3, 1]}}}
    with pytest.raises(SourceError, match=r"field 'labels.gap.valid_range'.*low 3.0 is above high 1.0"):
        align_config(_config(tmp_path, [sources[0], bad]), n_jobs=1)
    with pytest.raises(ConfigError, match=r"out_of_range.*'drop'"):
        align_config(_config(tmp_path, [sources[0], {**sources[1], "out_of_range": "ignore"}]), n_jobs=1)
    with pytest.raises(ConfigError, match=r"valid_range"):
        align_config(_config(tmp_path, [sources[0], {**sources[1], "labels": {"gap": {"valid_range": "positive"}}}]),
                     n_jobs=1)


# ------------------------------------------------------------------- item 5: two align processes, one folder
def _align_cmd(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tlgnn.cli.main", "align", "--config", str(config), "--out", str(out),
            "--workers", "1", "--cache-dir", str(out.parent / "cache")]


def test_two_align_processes_into_one_folder_write_one_after_the_other(tmp_path):
    """A real second process holds the folder's write lock (as a run writing its outputs does) and leaves a
    half-written report; `tlgnn align` started meanwhile says another align is writing, waits, and the folder
    ends with its own table and report. Then two real `tlgnn align` runs of different data race into one folder:
    the table and the report always come from the same run."""
    out = tmp_path / "out"
    small = _config(tmp_path, [_mp_source(6, tmp_path)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(  # holds the lock until told to go (or 5 minutes), like a slow writer
        [sys.executable, "-c", "import sys, time; from pathlib import Path\n"
         "from tlgnn.data.alignment import output_lock\n"
         "out = Path(sys.argv[1])\n"
         "with output_lock(out):\n"
         "    (out / 'report.md').write_text('half-written by another run')\n"
         "    print('locked', flush=True)\n"
         "    for _ in range(3000):\n"
         "        if (out / 'go').exists(): break\n"
         "        time.sleep(0.1)\n"
         "    (out / 'released').write_text(str(time.time()))\n", str(out)],
        stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "locked"
    run = subprocess.Popen(_align_cmd(small, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    said = []
    for line in run.stderr:  # until it says it waits, or ends
        if "another tlgnn align is writing" in line:
            said.append(line)
            break
    (out / "go").touch()
    assert run.wait(timeout=120) == 0 and holder.wait(timeout=60) == 0
    done = time.time()
    assert said == [f"another tlgnn align is writing into {out}; waiting for it to finish\n"]
    assert done >= float((out / "released").read_text())
    assert "half-written" not in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["n_materials"] == len(MaterialTable.load(out)) == 6

    tmp_path.joinpath("b").mkdir()
    big = _config(tmp_path / "b", [_mp_source(14, tmp_path / "b")])
    procs = [subprocess.Popen(_align_cmd(cfg, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env) for cfg in (small, big)]
    assert all(p.wait(timeout=120) == 0 for p in procs), [p.stderr.read() for p in procs]
    report = json.loads((out / "report.json").read_text())
    table = MaterialTable.load(out)
    assert report["n_materials"] == len(table) and f"Materials: **{len(table)}**" in (out / "report.md").read_text()


# --------------------------------------------------------------------- item 6: conflicts on the console of fit
def test_fit_says_which_conflicting_duplicates_were_merged_and_how(tmp_path, cache_dir, capsys):
    """One source gives mp material X twice (2.303 and 4.303 eV): the table holds their mean, 3.303, and `fit`
    says so on stderr with the policy, as `align` does."""
    rows = _rows(24)
    ids = [r["material_id"] for r in rows] + [rows[0]["material_id"]]
    values = ["2.303"] + [r["band_gap_pbe"] for r in rows[1:]] + ["4.303"]
    sources = [_mp_source(24, tmp_path), _later_source(tmp_path, ids, values)]
    data = _config(tmp_path, sources)
    run = {
        "data": {"sources": str(data), "tasks": ["gap_later"], "cache_dir": str(cache_dir), "batch_size": 8,
                 "split": {"kind": "random", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 1}},
        "model": {"encoder": {"name": "cgcnn", "atom_fea_len": 8, "n_conv": 1, "h_fea_len": 8},
                  "head": {"name": "single", "task": "gap_later"}},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "num_sanity_val_steps": 0, "enable_progress_bar": False},
        "output_dir": "run",
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    from tlgnn.cli.main import main

    assert main(["fit", "--config", str(tmp_path / "run.yaml"), "--no-test"]) == 0
    err = capsys.readouterr().err
    assert (f"data: warning: source 'later': 1 materials given more than once with conflicting labels, merged by "
            f"duplicates: mean; e.g. gap_later of {ids[0]}: rows [0, 24] values [2.303, 4.303] -> 3.303") in err


# ------------------------------------------------------------------------- item 7: a table without its checksum
def test_a_table_whose_checksum_was_deleted_loads_with_a_warning_that_it_is_unverified(tmp_path):
    sources = [_mp_source(6, tmp_path)]
    table, report = align_config(_config(tmp_path, sources), n_jobs=1)
    path = table.save(tmp_path / "al")
    frame = pd.read_parquet(path)
    frame.loc[0, "gap_pbe"] = 99.0  # damage a label (as a careless edit would) and delete the digest
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(pq.read_schema(path).metadata)
    pq.write_table(arrow, path)
    Path(f"{path}.xxh3").unlink()
    with pytest.warns(UnverifiedTableWarning, match=r"aligned.parquet: no checksum file \(aligned.parquet.xxh3\), so "
                                                    r"the table is unverified"):
        loaded = MaterialTable.load(path, structures="lazy")
    assert loaded.frame["gap_pbe"].iloc[0] == 99.0  # it loads (old tables have no digest), but not silently
