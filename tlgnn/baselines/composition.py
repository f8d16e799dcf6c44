"""Composition descriptors for the random-forest baselines (the model class of Hutchinson et al. 2017).

Magpie-like features built here from pymatgen's elemental data: for every elemental property ``p`` and a
composition with atomic fractions ``w_i`` the features are

- ``mean``  = Σ w_i p_i
- ``mad``   = Σ w_i |p_i − mean|   (fraction-weighted mean absolute deviation)
- ``min``, ``max``, ``range`` = max − min over the elements present
- ``mode``  = p of the most abundant element (ties: the lowest Z)

plus stoichiometric features: the number of elements and the Lp norms (p = 2, 3, 5, 7, 10) of the fractions.

Elemental properties (units): Z; periodic-table group and row; Mendeleev number; atomic mass (amu);
atomic radius (Å); Pauling electronegativity X; melting point (K); molar volume (cm³/mol); first ionisation
energy (eV); electron affinity (eV); valence s / p / d / f electron counts and their sum, taken from the full
electronic structure as Magpie does (s and p in the outermost shell ``n``, d in shell ``n − 1``, f in shell
``n − 2``).

Missing elemental data (e.g. X of He/Ne/Ar, atomic radius of noble gases and heavy actinides, the molar
volume of At) is filled by a documented fallback: the mean of that property over the elements of the same
periodic-table group that have it, else over the same row, else the median over all elements. Which values
were filled is reported by :func:`element_table` (``imputed`` mask). Nothing is silently dropped: a formula
with an element symbol pymatgen does not know is a ``ValueError`` naming the formula.

Per-element values are computed once (cached); featurising is vectorised over all formulas (30k formulas in
a few seconds, dominated by parsing unique formulas, which is also cached).
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import numpy as np

#: Elemental properties, in feature order: (name, unit).
ELEMENT_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("Z", ""),
    ("group", ""),
    ("row", ""),
    ("mendeleev_no", ""),
    ("atomic_mass", "amu"),
    ("atomic_radius", "Å"),
    ("X", ""),
    ("melting_point", "K"),
    ("molar_volume", "cm^3/mol"),
    ("ionization_energy", "eV"),
    ("electron_affinity", "eV"),
    ("valence_s", "e"),
    ("valence_p", "e"),
    ("valence_d", "e"),
    ("valence_f", "e"),
    ("valence_total", "e"),
)

#: Statistics computed for every elemental property, in feature order.
STATISTICS: tuple[str, ...] = ("mean", "mad", "min", "max", "range", "mode")

#: Lp norms of the atomic fractions used as stoichiometric features.
NORMS: tuple[int, ...] = (2, 3, 5, 7, 10)

MAX_Z = 103  # lawrencium; pymatgen has data for heavier elements only sparsely


@dataclass(frozen=True)
class ElementTable:
    """Per-element property matrix.

    Attributes:
        symbols: element symbols, index ``Z − 1``.
        values: float64 [n_elements, n_properties] (after the missing-data fallback).
        imputed: bool [n_elements, n_properties], True where the value came from the fallback.
        properties: property names (columns).
    """

    symbols: tuple[str, ...]
    values: np.ndarray
    imputed: np.ndarray
    properties: tuple[str, ...]


def _valence_counts(element) -> tuple[float, float, float, float] | None:
    """Valence s, p, d, f electron counts (Magpie convention) or ``None`` when pymatgen lacks the data."""
    try:
        shells = element.full_electronic_structure
    except (KeyError, ValueError, AttributeError):
        return None
    n_max = max(n for n, _, _ in shells)
    counts = {"s": 0.0, "p": 0.0, "d": 0.0, "f": 0.0}
    wanted = {"s": n_max, "p": n_max, "d": n_max - 1, "f": n_max - 2}
    for n, orbital, count in shells:
        if orbital in wanted and n == wanted[orbital]:
            counts[orbital] += float(count)
    return counts["s"], counts["p"], counts["d"], counts["f"]


def _raw_property(element, name: str) -> float:
    """One raw elemental value as a float (NaN when pymatgen has none)."""
    try:
        value = getattr(element, name)
    except (KeyError, ValueError, AttributeError):
        return float("nan")
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


@functools.lru_cache(maxsize=1)
def element_table() -> ElementTable:
    """The per-element property matrix for Z = 1 … 103 (cached; see module docstring for the fallback)."""
    from pymatgen.core.periodic_table import Element

    names = tuple(name for name, _ in ELEMENT_PROPERTIES)
    symbols = []
    raw = np.full((MAX_Z, len(names)), np.nan)
    groups = np.zeros(MAX_Z, dtype=int)
    rows = np.zeros(MAX_Z, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing data; the fallback handles it
        for z in range(1, MAX_Z + 1):
            element = Element.from_Z(z)
            symbols.append(element.symbol)
            groups[z - 1], rows[z - 1] = element.group, element.row
            for j, name in enumerate(names):
                if not name.startswith("valence_"):
                    raw[z - 1, j] = _raw_property(element, name)
            valence = _valence_counts(element)
            if valence is not None:
                for j, name in enumerate(names):
                    if name.startswith("valence_") and name != "valence_total":
                        raw[z - 1, j] = valence[("s", "p", "d", "f").index(name[-1])]
                raw[z - 1, names.index("valence_total")] = sum(valence)
    imputed = np.isnan(raw)
    values = raw.copy()
    for j in range(len(names)):
        column = raw[:, j]
        known = ~np.isnan(column)
        for i in np.flatnonzero(~known):
            same_group = known & (groups == groups[i])
            same_row = known & (rows == rows[i])
            if same_group.any():
                values[i, j] = column[same_group].mean()
            elif same_row.any():
                values[i, j] = column[same_row].mean()
            else:
                values[i, j] = np.median(column[known])
    return ElementTable(tuple(symbols), values, imputed, names)


def feature_names() -> list[str]:
    """Names of the columns returned by :func:`featurize`, in order."""
    names = [f"{prop}_{stat}" for prop, _ in ELEMENT_PROPERTIES for stat in STATISTICS]
    return ["n_elements", *[f"frac_norm_L{p}" for p in NORMS], *names]


_TOKEN = re.compile(r"\s+")


@functools.lru_cache(maxsize=200_000)
def _parse(formula: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Element indices (Z − 1) and atomic fractions of one formula; cached per formula string."""
    from pymatgen.core import Composition, Element

    try:
        composition = Composition(formula)
    except Exception as err:  # pymatgen raises several types for bad formulas
        raise ValueError(f"formula {formula!r}: cannot be parsed ({err})") from err
    amounts: dict[int, float] = {}
    for element, amount in composition.element_composition.items():
        if not isinstance(element, Element):
            raise ValueError(f"formula {formula!r}: {element} is not a chemical element")
        z = element.Z
        if z > MAX_Z:
            raise ValueError(f"formula {formula!r}: element {element} (Z={z}) has no elemental data (Z > {MAX_Z})")
        if amount < 0:
            raise ValueError(f"formula {formula!r}: negative amount of {element}")
        if amount > 0:
            amounts[z - 1] = amounts.get(z - 1, 0.0) + float(amount)
    total = sum(amounts.values())
    if not amounts or total <= 0:
        raise ValueError(f"formula {formula!r}: contains no atoms")
    order = sorted(amounts)
    return tuple(order), tuple(amounts[i] / total for i in order)


def featurize(formulas: list[str] | tuple[str, ...]) -> np.ndarray:
    """Composition features of ``formulas`` (any pymatgen-parsable formula, e.g. ``"Na1 Cl1"``, ``"NaCl"``).

    Returns float64 [len(formulas), len(feature_names())]; see the module docstring for definitions and units.
    Raises ``ValueError`` naming the formula for unparsable formulas or unknown elements.
    """
    table = element_table()
    n = len(formulas)
    index_of: dict[str, int] = {}
    unique: list[str] = []
    inverse = np.empty(n, dtype=np.int64)
    for i, formula in enumerate(formulas):
        key = _TOKEN.sub(" ", str(formula).strip())
        j = index_of.get(key)
        if j is None:
            j = index_of[key] = len(unique)
            unique.append(key)
        inverse[i] = j
    parsed = [_parse(f) for f in unique]
    counts = np.fromiter((len(p[0]) for p in parsed), dtype=np.int64, count=len(parsed))
    rows = np.repeat(np.arange(len(parsed)), counts)
    cols = np.fromiter((z for p in parsed for z in p[0]), dtype=np.int64, count=int(counts.sum()))
    weights = np.fromiter((w for p in parsed for w in p[1]), dtype=np.float64, count=int(counts.sum()))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    values = table.values[cols]  # [nnz, P]
    weighted = values * weights[:, None]
    mean = np.add.reduceat(weighted, starts, axis=0)
    mad = np.add.reduceat(np.abs(values - mean[rows]) * weights[:, None], starts, axis=0)
    low = np.minimum.reduceat(values, starts, axis=0)
    high = np.maximum.reduceat(values, starts, axis=0)
    # mode: value of the element with the largest fraction (first, i.e. lowest Z, on ties)
    order = np.lexsort((cols, -weights, rows))  # by formula, then fraction descending, then Z
    first = order[starts]
    mode = values[first]
    stats = np.stack([mean, mad, low, high, high - low, mode], axis=2)  # [U, P, S]
    per_property = stats.reshape(len(parsed), -1)

    norms = [np.add.reduceat(weights**p, starts) ** (1.0 / p) for p in NORMS]
    stoich = np.column_stack([counts.astype(np.float64), *norms])
    unique_features = np.hstack([stoich, per_property])
    return unique_features[inverse]


__all__ = ["ELEMENT_PROPERTIES", "NORMS", "STATISTICS", "ElementTable", "element_table", "feature_names", "featurize"]
