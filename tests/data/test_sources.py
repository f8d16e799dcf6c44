"""Source loading: every layout loads, every bad input is an error naming source, field and row."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from support.paths import ROOT
from tlgnn.data.alignment import align, align_config
from tlgnn.data.sources import SourceError, load_source_config, load_sources
from tlgnn.utils.config import ConfigError

SAMPLE = ROOT / "data" / "mp_sample"


def _a_rows(n: int | None = None) -> list[dict]:
    rows = list(csv.DictReader(gzip.open(SAMPLE / "labels.csv.gz", "rt")))
    return rows if n is None else rows[:n]


def _cifs() -> dict[str, str]:
    return {d["material_id"]: d["cif"] for d in map(json.loads, gzip.open(SAMPLE / "structures.jsonl.gz", "rt"))}


def _write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> Path:
    fields = fields or list(rows[0])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _config(tmp_path: Path, sources: list[dict], **extra) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": sources, **extra}, sort_keys=False))
    return path


MP_SOURCE = {
    "name": "mp", "path": str(SAMPLE / "labels.csv.gz"), "id_column": "material_id", "namespace": "mp",
    "structure": {"kind": "table", "path": str(SAMPLE / "structures.jsonl.gz"), "id_column": "material_id",
                  "column": "cif"},
    "labels": {"band_gap_pbe": {"task": "gap_pbe", "unit": "eV", "fidelity": "pbe"}},
}


def _errors(tmp_path, sources, **extra):
    config, base = load_source_config(_config(tmp_path, sources, **extra))
    return load_sources(config, base)


# ------------------------------------------------------------------------------------------------- bad inputs
def test_missing_file_names_source_and_field(tmp_path):
    bad = dict(MP_SOURCE, path=str(tmp_path / "nope.csv"))
    with pytest.raises(SourceError, match=r"source 'mp', field 'path': file not found: .*nope.csv"):
        _errors(tmp_path, [bad])


def test_missing_column_suggests_close_match(tmp_path):
    bad = dict(MP_SOURCE, labels={"band_gap_pbf": {"task": "gap"}})
    with pytest.raises(SourceError, match=r"field 'labels.band_gap_pbf': column 'band_gap_pbf' not in labels.csv.gz; "
                                          r"did you mean 'band_gap_pbe'"):
        _errors(tmp_path, [bad])


def test_non_numeric_label_names_row(tmp_path):
    rows = _a_rows(20)
    rows[7]["band_gap_pbe"] = "1.2 eV"
    table = _write_csv(tmp_path / "a.csv", rows)
    with pytest.raises(SourceError) as err:
        _errors(tmp_path, [dict(MP_SOURCE, path=str(table))])
    assert err.value.source == "mp" and err.value.field == "labels.band_gap_pbe"
    assert str(err.value.row).startswith("7") and rows[7]["material_id"] in str(err.value.row)
    assert "non-numeric label '1.2 eV'" in str(err.value)


def test_unknown_class(tmp_path):
    path = _write_csv(tmp_path / "d.csv", [{"formula": "NaCl", "target": "0"}, {"formula": "Cu", "target": "yes"}])
    src = {"name": "d", "path": str(path), "formula_column": "formula",
           "labels": {"target": {"task": "is_metal", "kind": "classification", "classes": [0, 1]}}}
    with pytest.raises(SourceError, match=r"source 'd', field 'labels.target', row 1: unknown class 'yes'"):
        _errors(tmp_path, [MP_SOURCE, src])


def test_typo_in_key_is_named_with_suggestion(tmp_path):
    bad = dict(MP_SOURCE)
    bad["id_colum"] = bad.pop("id_column")
    with pytest.raises(ConfigError, match=r"sources\[0\].id_colum: unknown key; did you mean 'id_column'"):
        _errors(tmp_path, [bad])
    with pytest.raises(ConfigError, match=r"polymorph_policy: must be one of"):
        _errors(tmp_path, [MP_SOURCE], polymorph_policy="lowest")
    # inside an optional section the error still names the inner key, with a suggestion
    typo = {**MP_SOURCE, "structure": {**MP_SOURCE["structure"], "kind": "tabel"}}
    with pytest.raises(ConfigError, match=r"sources\[0\]\.structure\.kind: must be one of .* got 'tabel' "
                                          r"\(did you mean 'table'\?\)"):
        _errors(tmp_path, [typo])


def test_nested_key_typo_and_unparsable_formula(tmp_path):
    nested = {"name": "b", "path": str(SAMPLE / "sources/megnet_multifidelity_gaps.json.gz"), "layout": "nested",
              "namespace": "mp", "labels": {"hse06": {"task": "gap_hse"}}}
    with pytest.raises(SourceError, match=r"source 'b', field 'labels.hse06': key 'hse06' not in .*did you mean 'hse'"):
        _errors(tmp_path, [MP_SOURCE, nested])
    path = _write_csv(tmp_path / "c.csv", [{"formula": "NaCl", "target": "1"}, {"formula": "Xx2O", "target": "2"}])
    src = {"name": "c", "path": str(path), "formula_column": "formula", "labels": {"target": {"task": "g"}}}
    with pytest.raises(SourceError, match=r"source 'c', field 'formula_column', row 1: unparsable formula 'Xx2O'"):
        _errors(tmp_path, [MP_SOURCE, src])


def test_same_task_twice_and_no_structure_source_rejected(tmp_path):
    twice = {"name": "b", "path": str(SAMPLE / "sources/megnet_multifidelity_gaps.json.gz"), "layout": "nested",
             "labels": {"pbe": {"task": "gap_pbe"}}}
    with pytest.raises(ConfigError, match="task 'gap_pbe' is already given by source 'mp'"):
        _errors(tmp_path, [MP_SOURCE, twice])
    no_struct = dict(twice, labels={"pbe": {"task": "gap_b"}})
    with pytest.raises(ConfigError, match="no source has structures"):
        _errors(tmp_path, [no_struct])


def test_errors_come_before_structure_parsing(tmp_path):
    """A bad label in the last source fails before the first source's structures are parsed (no cache written)."""
    path = _write_csv(tmp_path / "c.csv", [{"formula": "NaCl", "target": "abc"}])
    src = {"name": "c", "path": str(path), "formula_column": "formula", "labels": {"target": {"task": "g"}}}
    config, base = load_source_config(_config(tmp_path, [MP_SOURCE, src]))
    cache = tmp_path / "cache"
    with pytest.raises(SourceError, match="non-numeric"):
        align(config, base, cache_dir=cache)
    assert not (cache / "structures").exists()


def test_override_by_source_name_and_unknown_source(tmp_path):
    rows = _a_rows(30)
    other = _write_csv(tmp_path / "a30.csv", rows)
    cfg = _config(tmp_path, [MP_SOURCE])
    config, _ = load_source_config(cfg, [f"sources.mp.path={other}"])
    assert config.sources[0].path == str(other)
    with pytest.raises(ConfigError, match="no source named 'mpp'; did you mean 'mp'"):
        load_source_config(cfg, ["sources.mpp.path=x"])


# ---------------------------------------------------------------------------------------------------- layouts
def test_inline_structures_in_json_records_and_parquet(tmp_path):
    """Flat tables: a JSON list of records with pymatgen dicts, and a parquet file with CIF text."""
    from pymatgen.core import Structure

    rows, cifs = _a_rows(12), _cifs()
    records = [{"id": r["material_id"], "gap": float(r["band_gap_pbe"]),
                "structure": Structure.from_str(cifs[r["material_id"]], fmt="cif").as_dict()} for r in rows]
    (tmp_path / "t.json").write_text(json.dumps(records))
    import pandas as pd

    pd.DataFrame({"id": [r["material_id"] for r in rows], "gap": [r["band_gap_pbe"] for r in rows],
                  "cif": [cifs[r["material_id"]] for r in rows]}).to_parquet(tmp_path / "t.parquet")
    for name, st in (("t.json", {"kind": "inline", "column": "structure", "format": "json"}),
                     ("t.parquet", {"kind": "inline", "column": "cif"})):
        src = {"name": "s", "path": str(tmp_path / name), "id_column": "id", "structure": st,
               "labels": {"gap": {"unit": "eV"}}}
        table, report = align_config(_config(tmp_path, [src]), n_jobs=1)
        assert table.frame["material_id"].tolist() == [r["material_id"] for r in rows]
        np.testing.assert_allclose(table.frame["gap"], [float(r["band_gap_pbe"]) for r in rows])
        assert table.structure(0).composition.reduced_formula == \
            Structure.from_str(cifs[rows[0]["material_id"]], fmt="cif").composition.reduced_formula


def test_structure_files_column(tmp_path):
    rows, cifs = _a_rows(6), _cifs()
    folder = tmp_path / "cifs"
    folder.mkdir()
    for r in rows:
        (folder / f"{r['material_id']}.cif").write_text(cifs[r["material_id"]])
        r["file"] = f"{r['material_id']}.cif"
    path = _write_csv(tmp_path / "t.csv", rows)
    src = {"name": "s", "path": str(path), "id_column": "material_id",
           "structure": {"kind": "files", "column": "file", "dir": "cifs"}, "labels": {"band_gap_pbe": {}}}
    table, _ = align_config(_config(tmp_path, [src]), root=tmp_path, n_jobs=1)
    assert len(table) == 6 and table.frame["n_sites"].min() >= 1
    # a missing file drops its row with the reason (all of them are named, not only the first); a structure file
    # without a row is noted
    rows[2]["file"] = "missing.cif"
    rows[4]["file"] = "gone.cif"
    _write_csv(tmp_path / "t.csv", rows)
    table, report = align_config(_config(tmp_path, [src]), root=tmp_path, n_jobs=1)
    assert len(table) == 4
    dropped = {d["row"]: d["reason"] for d in report.dropped}
    assert sorted(dropped) == [2, 4] and "missing.cif: structure file not found" in dropped[2]
    notes = report.sources["s"].notes
    assert any(n.startswith("2 structure files in") and "no row in the label table" in n for n in notes), notes


def test_cgcnn_layout_headerless_id_prop_csv_with_ids_as_file_stems(tmp_path):
    """CGCNN's own layout: id_prop.csv without a header (id,target) beside <id>.cif files; one CIF is corrupt, one
    id has no CIF, one CIF has no row."""
    rows, cifs = _a_rows(8), _cifs()
    for r in rows:
        (tmp_path / f"{r['material_id']}.cif").write_text(cifs[r["material_id"]])
    (tmp_path / f"{rows[1]['material_id']}.cif").write_text("data_broken\n_cell_length_a 3\n")
    (tmp_path / f"{rows[2]['material_id']}.cif").unlink()
    lines = [f"{r['material_id']},{r['band_gap_pbe']}" for r in rows[:7]]  # rows[7] has a CIF, no label
    (tmp_path / "id_prop.csv").write_text("\r\n".join(lines) + "\r\n")  # Windows line endings
    src = {"name": "cgcnn", "path": "id_prop.csv", "header": False, "columns": ["material_id", "target"],
           "id_column": "material_id", "structure": {"kind": "files", "column": "material_id"},
           "labels": {"target": {"task": "gap", "unit": "eV"}}}
    config = _config(tmp_path, [src], root=".")
    table, report = align_config(config, n_jobs=1)
    assert table.frame["material_id"].tolist() == [r["material_id"] for r in rows[:7] if r not in rows[1:3]]
    np.testing.assert_allclose(table.frame["gap"], [float(r["band_gap_pbe"]) for r in rows[:7] if r not in rows[1:3]])
    dropped = {d["id"]: d["reason"] for d in report.dropped}
    assert set(dropped) == {rows[1]["material_id"], rows[2]["material_id"]}
    assert "structure file not found" in dropped[rows[2]["material_id"]]
    assert any(n.startswith("1 structure files in") for n in report.sources["cgcnn"].notes)
    # the same file read as tab-separated, detected from its first line
    (tmp_path / "id_prop.csv").write_text("\n".join(line.replace(",", "\t") for line in lines) + "\n")
    assert align_config(config, n_jobs=1)[0].frame["material_id"].tolist() == table.frame["material_id"].tolist()
    # header: false needs the column names, and their number must match the file's
    with pytest.raises(ConfigError, match="columns: source 'cgcnn' has header: false"):
        _errors(tmp_path, [{**src, "columns": None}], root=".")
    with pytest.raises(SourceError, match=r"field 'columns'.*has 2 columns per row; 'columns' names 3"):
        _errors(tmp_path, [{**src, "columns": ["material_id", "target", "extra"]}], root=".")


def test_parse_cache_with_one_unreadable_structure_reads_back_the_same(tmp_path):
    rows, cifs = _a_rows(5), _cifs()
    for r in rows:
        (tmp_path / f"{r['material_id']}.cif").write_text(cifs[r["material_id"]])
    (tmp_path / f"{rows[0]['material_id']}.cif").write_text("data_broken\n")
    _write_csv(tmp_path / "t.csv", rows)
    src = {"name": "s", "path": "t.csv", "id_column": "material_id",
           "structure": {"kind": "files", "column": "material_id"}, "labels": {"band_gap_pbe": {}}}
    config = _config(tmp_path, [src], root=".")
    first = align_config(config, n_jobs=1, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "structures").glob("*.parquet"))
    second = align_config(config, n_jobs=1, cache_dir=tmp_path / "cache")  # from the cache
    assert len(first[0]) == len(second[0]) == 4
    assert [d["id"] for d in second[1].dropped] == [rows[0]["material_id"]]
    # a damaged cache file (one flipped byte) is noticed by its checksum and parsed again, never used
    (cache_file,) = (tmp_path / "cache" / "structures").glob("*.parquet")
    data = bytearray(cache_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    cache_file.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="parsed-structure cache .* is damaged .*checksum mismatch"):
        third = align_config(config, n_jobs=1, cache_dir=tmp_path / "cache")
    pd.testing.assert_frame_equal(third[0].frame, first[0].frame)


def test_tinnet_frames_sample():
    table, report = align_config(ROOT / "configs" / "data" / "tinnet_sample.yaml", n_jobs=1)
    labels = list(csv.DictReader(gzip.open(ROOT / "data/tinnet_sample/labels.csv.gz", "rt")))
    assert len(table) == 100 and report.sources["tinnet"].counts["new"] == 100
    by_id = {r["id"]: r for r in labels}
    for row in table.frame.itertuples():
        assert row.ead_OH == pytest.approx(float(by_id[row.material_id]["ead_OH"]))
        assert "O" in row.formula and "H" in row.formula  # the kind=OH frame, not the clean slab
    assert table.frame["n_sites"].eq(18).all()


def test_formulas_with_fractional_amounts_reduce_to_whole_numbers():
    from tlgnn.data.sources import reduced_formula

    assert [reduced_formula(f) for f in ("TbO1.5", "Sr0.5TaO3", "Cu1.8S", "Fe4O6", "Ni0.5N0.5")] == \
        ["Tb2O3", "SrTa2O6", "Cu9S5", "Fe2O3", "NiN"]


def test_a_source_key_overridden_by_name_and_by_index_is_one_key_given_twice():
    """``sources.mp.path=a`` and ``sources.0.path=b`` name the same key: an error, not the last one winning."""
    from tlgnn.data.source_config import apply_source_overrides

    raw = {"sources": [{"name": "mp", "path": "x.csv"}, {"name": "hse", "path": "y.csv"}]}
    with pytest.raises(ConfigError, match=r"sources.mp.path: overridden twice \('a.csv' and 'b.csv'\)"):
        apply_source_overrides(raw, ["sources.mp.path=a.csv", "sources.0.path=b.csv"], "test.yaml")
    assert raw["sources"][0]["path"] == "x.csv"  # nothing applied
    apply_source_overrides(raw, ["sources.mp.path=a.csv", "sources.1.path=b.csv"], "test.yaml")
    assert [s["path"] for s in raw["sources"]] == ["a.csv", "b.csv"]
