"""A structure file whose name differs from its id only in letter case (``MP-14694.cif`` for ``mp-14694``) is
not read (ids match file names exactly), but the reason says that such a file exists."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import yaml

from support.paths import ROOT
from tlgnn.data.alignment import align_config
from tlgnn.io import read_structures

SAMPLE = ROOT / "data" / "mp_sample"


def _write_cifs(folder: Path, n: int) -> list[str]:
    """The first ``n`` structures of the shipped sample as ``<id>.cif``; returns the ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    with gzip.open(SAMPLE / "structures.jsonl.gz", "rt") as handle:
        for line in handle:
            item = json.loads(line)
            (folder / f"{item['material_id']}.cif").write_text(item["cif"])
            ids.append(item["material_id"])
            if len(ids) == n:
                return ids
    return ids


def test_reading_a_path_whose_file_differs_in_case_names_the_file(tmp_path):
    (first,) = _write_cifs(tmp_path, 1)
    (tmp_path / f"{first}.cif").rename(tmp_path / f"{first.upper()}.cif")
    (err,) = read_structures(tmp_path / f"{first}.cif", on_error="skip").failures
    assert err.reason == f"unreadable: file not found; a file differing only in case exists: {first.upper()}.cif"
    (err,) = read_structures(tmp_path / "mp-0.cif", on_error="skip").failures
    assert err.reason == "unreadable: file not found"  # no such file in any case: nothing more to say


def test_an_id_whose_structure_file_differs_in_case_is_dropped_with_that_reason(tmp_path):
    ids = _write_cifs(tmp_path / "cifs", 4)
    (tmp_path / "cifs" / f"{ids[1]}.cif").rename(tmp_path / "cifs" / f"{ids[1].upper()}.cif")
    (tmp_path / "labels.csv").write_text("id,gap\n" + "".join(f"{i},1.5\n" for i in ids))
    source = {"name": "s", "path": "labels.csv", "id_column": "id",
              "structure": {"kind": "files", "column": "id", "dir": "cifs"},
              "labels": {"gap": {"task": "gap", "unit": "eV"}}}
    config = tmp_path / "sources.yaml"
    config.write_text(yaml.safe_dump({"sources": [source]}))
    table, report = align_config(config, n_jobs=1)
    assert sorted(table.frame["material_id"]) == sorted(ids[:1] + ids[2:])
    (dropped,) = report.dropped
    assert dropped["id"] == ids[1] and "structure file not found" in dropped["reason"]
    assert f"structure file not found (nor a structure file named {ids[1]!r} plus an extension such as .cif); " \
        f"a file differing only in case exists: {ids[1].upper()}.cif" in dropped["reason"]
