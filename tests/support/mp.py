"""Materials Project structures shipped in data/: the 150 of ``mp_structures_sample.jsonl.gz`` and the 500 of
``mp_sample`` with their PBE band gaps (origin and licences: data/README.md, data/mp_sample/README.md)."""

from __future__ import annotations

import gzip
import json
import warnings
from functools import lru_cache

import pandas as pd

from support.paths import ROOT

SAMPLE_150 = ROOT / "data" / "mp_structures_sample.jsonl.gz"
MP_SAMPLE = ROOT / "data" / "mp_sample"


def _read(path) -> tuple[tuple[str, ...], tuple]:
    from pymatgen.core import Structure

    with gzip.open(path, "rt") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(r["material_id"] for r in rows), tuple(Structure.from_str(r["cif"], fmt="cif") for r in rows)


@lru_cache(maxsize=None)
def sample_150() -> tuple[tuple[str, ...], tuple]:
    """``(material ids, pymatgen structures)`` of ``data/mp_structures_sample.jsonl.gz``, in file order."""
    return _read(SAMPLE_150)


@lru_cache(maxsize=None)
def pbe_gaps() -> tuple[tuple[str, ...], tuple, tuple[float, ...]]:
    """``(ids, structures, PBE band gaps in eV)`` of the 500 ``data/mp_sample`` materials, in file order."""
    ids, structures = _read(MP_SAMPLE / "structures.jsonl.gz")
    labels = pd.read_csv(MP_SAMPLE / "labels.csv.gz").set_index("material_id")["band_gap_pbe"]
    return ids, structures, tuple(float(labels[i]) for i in ids)
