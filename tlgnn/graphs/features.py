"""CGCNN-style one-hot elemental features (92 dims), built from pymatgen element data.

Categories (Xie & Grossman, PRL 120, 145301 (2018), SI Table S2; bins documented in docs/graphs.md):

=====================  ======================================  ====
category               values / bins                           dims
=====================  ======================================  ====
group                  1..18, plus "f" (f-block, no group)     19
period                 1..7                                    7
electronegativity      Pauling, 0.5..4.0, 10 equal bins        10
covalent radius        pm, 25..250, 10 equal bins              10
valence electrons      1..12                                   12
first ionisation       ln(E / eV), 1.3..3.3, 10 equal bins     10
electron affinity      eV, -3.0..3.7, 10 equal bins            10
block                  s, p, d, f                              4
atomic volume          ln(V / cm^3 mol^-1), 1.5..4.3, 10 bins  10
=====================  ======================================  ====

Values outside a binned range go to the nearest end bin. Missing data -> the whole category is zero for
that element. The table is generated once by ``build_atom_feature_table`` and stored in
``atom_features.json`` next to this module, so importing does not need pymatgen's element data.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

MAX_Z = 100
TABLE_PATH = Path(__file__).with_name("atom_features.json")

# (name, kind, spec): kind "cat" -> spec = list of category labels; "bin" -> spec = (lo, hi, n_bins)
CATEGORIES: list[tuple[str, str, object]] = [
    ("group", "cat", list(range(1, 19)) + ["f"]),
    ("period", "cat", list(range(1, 8))),
    ("electronegativity", "bin", (0.5, 4.0, 10)),
    ("covalent_radius_pm", "bin", (25.0, 250.0, 10)),
    ("valence_electrons", "cat", list(range(1, 13))),
    ("log_first_ionization_eV", "bin", (1.3, 3.3, 10)),
    ("electron_affinity_eV", "bin", (-3.0, 3.7, 10)),
    ("block", "cat", ["s", "p", "d", "f"]),
    ("log_atomic_volume_cm3_mol", "bin", (1.5, 4.3, 10)),
]
NUM_FEATURES = sum(len(spec) if kind == "cat" else spec[2] for _, kind, spec in CATEGORIES)


def _category_width(kind: str, spec) -> int:
    return len(spec) if kind == "cat" else spec[2]


def _bin_index(value: float, lo: float, hi: float, n: int) -> int:
    """Equal-width bin of ``value`` in [lo, hi]; outside values go to the end bins."""
    k = int(math.floor((value - lo) / (hi - lo) * n))
    return min(max(k, 0), n - 1)


def element_properties(z: int) -> dict[str, object]:
    """The raw property values used for element ``z`` (None where pymatgen has no data)."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core.periodic_table import Element

    el = Element.from_Z(z)

    def safe(fn):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = fn()
        except (AttributeError, KeyError, ValueError, TypeError, IndexError):
            return None
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    # He: pymatgen files it under block "p" (column 18); its configuration is 1s2, so it is s-block.
    block = "s" if z == 2 else safe(lambda: el.block)
    group = "f" if block == "f" else safe(lambda: int(el.group))
    row = safe(lambda: int(el.row))
    radius = CovalentRadius.radius.get(el.symbol)
    ie = safe(lambda: float(el.ionization_energies[0]))
    volume = safe(lambda: float(el.molar_volume))
    return {
        "group": group,
        "period": row if row is not None and 1 <= row <= 7 else None,
        "electronegativity": safe(lambda: float(el.X)),
        "covalent_radius_pm": None if radius is None else 100.0 * float(radius),
        "valence_electrons": _valence_electrons(el, block),
        "log_first_ionization_eV": math.log(ie) if ie and ie > 0 else None,
        "electron_affinity_eV": safe(lambda: float(el.electron_affinity)),
        "block": block,
        "log_atomic_volume_cm3_mol": math.log(volume) if volume and volume > 0 else None,
    }


def _valence_electrons(el, block: str | None) -> int | None:
    """s/d-block: group number (1..12); p-block: group - 10 (3..8); He: 2; f-block: outer s + d electrons."""
    if el.Z == 2:
        return 2
    if block in ("s", "d"):
        return int(el.group)
    if block == "p":
        return int(el.group) - 10
    if block == "f":
        shells = el.full_electronic_structure
        n_max = max(n for n, _, _ in shells)
        return sum(occ for n, l, occ in shells if (l == "s" and n == n_max) or (l == "d" and n == n_max - 1))
    return None


def build_atom_feature_table(max_z: int = MAX_Z) -> np.ndarray:
    """Compute the one-hot table [max_z + 1, 92] (float32) from pymatgen data; row 0 is all zero."""
    table = np.zeros((max_z + 1, NUM_FEATURES), dtype=np.float32)
    for z in range(1, max_z + 1):
        props = element_properties(z)
        col = 0
        for name, kind, spec in CATEGORIES:
            value = props[name]
            if value is not None:
                if kind == "cat":
                    if value in spec:
                        table[z, col + spec.index(value)] = 1.0
                else:
                    table[z, col + _bin_index(float(value), *spec)] = 1.0
            col += _category_width(kind, spec)
    return table


def category_slices() -> dict[str, slice]:
    """Column range of each category in the 92-dim vector."""
    out, col = {}, 0
    for name, kind, spec in CATEGORIES:
        width = _category_width(kind, spec)
        out[name] = slice(col, col + width)
        col += width
    return out


def write_atom_feature_table(path: Path = TABLE_PATH) -> None:
    """Regenerate ``atom_features.json`` (run after changing the bins)."""
    table = build_atom_feature_table()
    payload = {
        "description": "CGCNN-style one-hot elemental features, rows = atomic number (row 0 unused)",
        "categories": [
            {"name": n, "kind": k, "spec": s if k == "cat" else list(s), "columns": [sl.start, sl.stop]}
            for (n, k, s), sl in zip(CATEGORIES, category_slices().values())
        ],
        "onehot_index": [np.flatnonzero(row).tolist() for row in table],
    }
    path.write_text(json.dumps(payload, indent=0) + "\n")


def load_atom_feature_table(path: Path = TABLE_PATH) -> np.ndarray:
    """Read the stored table back as float32 [MAX_Z + 1, 92]."""
    payload = json.loads(path.read_text())
    rows = payload["onehot_index"]
    table = np.zeros((len(rows), NUM_FEATURES), dtype=np.float32)
    for z, hot in enumerate(rows):
        table[z, hot] = 1.0
    return table


ATOM_FEATURES: torch.Tensor = torch.from_numpy(load_atom_feature_table())
