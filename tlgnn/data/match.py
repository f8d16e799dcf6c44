"""Matchers that find, for a source row, the material(s) it describes.

- :class:`IdIndex`: ``(namespace, id) -> material`` lookups (own ids and cross-source link columns).
- :class:`StructureIndex`: pymatgen ``StructureMatcher`` restricted to candidates with the same reduced formula
  and space group (space groups computed lazily, only for formulas present on both sides), so matching stays fast
  for 100k rows.
- :class:`FormulaIndex`: reduced formula -> materials, with the polymorph policy applied by :func:`pick_polymorph`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from tlgnn.data.sources import StructureMatcherConfig


class IdIndex:
    """``(namespace, id)`` -> set of material indices."""

    def __init__(self) -> None:
        self._index: dict[tuple[str, str], set[int]] = defaultdict(set)

    def add(self, key: tuple[str, str], material: int) -> None:
        self._index[key].add(material)

    def lookup(self, keys: list[tuple[str, str]]) -> set[int]:
        """Materials any of ``keys`` points to."""
        found: set[int] = set()
        for key in keys:
            found |= self._index.get(key, set())
        return found

    def ids_of(self, material: int) -> list[tuple[str, str]]:
        return [k for k, v in self._index.items() if material in v]


class FormulaIndex:
    """Reduced formula -> material indices (in creation order)."""

    def __init__(self) -> None:
        self._index: dict[str, list[int]] = defaultdict(list)

    def add(self, formula: str, material: int) -> None:
        self._index[formula].append(material)

    def get(self, formula: str | None) -> list[int]:
        return list(self._index.get(formula, [])) if formula else []


@dataclass
class PolymorphChoice:
    """Outcome of a composition match: the chosen materials, or why none was chosen."""

    materials: list[int]
    ambiguous: bool
    reason: str | None = None


def pick_polymorph(candidates: list[int], energies: list[float], policy: str) -> PolymorphChoice:
    """Apply the polymorph policy to the materials sharing a reduced formula.

    ``lowest_energy`` picks the candidate with the lowest energy per atom (ties: the first created); candidates
    without an energy are ignored, and if none has one the row is not matched. ``skip`` matches only a formula with
    a single material. ``all`` returns every candidate.
    """
    if len(candidates) == 1:
        return PolymorphChoice(candidates, False)
    if policy == "all":
        return PolymorphChoice(candidates, True)
    if policy == "skip":
        return PolymorphChoice([], True, f"ambiguous formula: {len(candidates)} polymorphs (polymorph_policy skip)")
    known = [(e, m) for m, e in zip(candidates, energies) if e is not None and not math.isnan(e)]
    if not known:
        return PolymorphChoice([], True, f"ambiguous formula: {len(candidates)} polymorphs and none has an energy "
                                         "(polymorph_policy lowest_energy)")
    return PolymorphChoice([min(known, key=lambda t: t[0])[1]], True)


def energy_margin(energies: list[float]) -> float | None:
    """How far (eV/atom) the lowest known energy lies below the next one; ``None`` with fewer than two known."""
    known = sorted(e for e in energies if e is not None and not math.isnan(e))
    return float(known[1] - known[0]) if len(known) >= 2 else None


class StructureIndex:
    """Structure matching bucketed by reduced formula, then space group number."""

    def __init__(self, config: StructureMatcherConfig, symprec: float = 0.1) -> None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.matcher = StructureMatcher(
            ltol=config.ltol, stol=config.stol, angle_tol=config.angle_tol, primitive_cell=config.primitive_cell,
            scale=config.scale, attempt_supercell=config.attempt_supercell,
        )
        self.symprec = symprec
        self._spacegroups: dict[int, int] = {}
        self._structures: dict[int, object] = {}
        self.comparisons = 0
        self._next_probe = -1

    def spacegroup(self, key: int, structure_json: str) -> int:
        """Space group number of material ``key`` (cached; 0 when spglib fails)."""
        if key not in self._spacegroups:
            from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

            try:
                sg = SpacegroupAnalyzer(self.structure(key, structure_json), symprec=self.symprec)
                self._spacegroups[key] = int(sg.get_space_group_number())
            except Exception:  # noqa: BLE001 - spglib failure: bucket 0, still compared within it
                self._spacegroups[key] = 0
        return self._spacegroups[key]

    def structure(self, key: int, structure_json: str):
        if key not in self._structures:
            from pymatgen.core import Structure

            self._structures[key] = Structure.from_str(structure_json, fmt="json")
        return self._structures[key]

    def find(self, structure_json: str, candidates: list[int], candidate_json: list[str]) -> int | None:
        """The first candidate (same formula assumed) matching ``structure_json``, or ``None``."""
        if not candidates:
            return None
        probe_key = self._next_probe  # negative keys: probes, never materials
        self._next_probe -= 1
        probe = self.structure(probe_key, structure_json)
        probe_sg = self.spacegroup(probe_key, structure_json)
        found = None
        for cand, text in zip(candidates, candidate_json):
            if self.spacegroup(cand, text) != probe_sg:
                continue
            self.comparisons += 1
            if self.matcher.fit(probe, self.structure(cand, text)):
                found = cand
                break
        self._structures.pop(probe_key, None)
        self._spacegroups.pop(probe_key, None)
        return found

    def forget(self) -> None:
        """Drop the parsed structures kept for reuse (space groups stay cached)."""
        self._structures.clear()


__all__ = ["FormulaIndex", "IdIndex", "PolymorphChoice", "StructureIndex", "pick_polymorph"]
