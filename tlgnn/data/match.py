"""Matchers that find, for a group of source rows (one material given once or several times), the material(s)
it describes among those created by earlier sources.

A matcher is an object with ``name`` and ``match(query, materials) -> Match | Drop | None``: a :class:`Match`
(the materials, and how), a :class:`Drop` (a reason code and a sentence: the rows must not be used), or ``None``
(no opinion: the next matcher is asked). :func:`build_matchers` makes them from the config's ``matchers`` list:

- :class:`IdMatcher` (``id``): the group's own ``(namespace, id)`` and link ids; several materials: a drop.
- :class:`StructureMatch` (``structure``): groups with a readable structure only.
- :class:`CompositionMatcher` (``composition``): groups without a readable structure, by reduced formula and
  the polymorph policy.

The indices behind them:

- :class:`IdIndex`: ``(namespace, id) -> material`` lookups (own ids and cross-source link columns).
- :class:`StructureIndex`: pymatgen ``StructureMatcher`` restricted to candidates with the same reduced formula
  and space group (space groups computed lazily, only for formulas present on both sides), so matching stays fast
  for 100k rows.
- :class:`FormulaIndex`: reduced formula -> materials, with the polymorph policy applied by :func:`pick_polymorph`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

from tlgnn.data.source_config import StructureMatcherConfig


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


# ------------------------------------------------------------------------------------------ materials so far
@dataclass
class Materials:
    """The materials created so far (one entry per material, in creation order) and the indices matchers use.

    ``ids``/``formulas`` hold only materials of *earlier* sources: :meth:`register` adds a source's new keys
    after the whole source was matched, so rows of one source never match each other.
    """

    material_id: list[str] = field(default_factory=list)
    structure: list[str] = field(default_factory=list)
    formula: list[str] = field(default_factory=list)
    n_sites: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    id_map: list[dict[str, list[str]]] = field(default_factory=list)  # per material {namespace: [ids]}
    ids: IdIndex = field(default_factory=IdIndex)
    formulas: FormulaIndex = field(default_factory=FormulaIndex)
    seen: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.material_id)

    def add(self, material_id: str, structure: str, formula: str, n_sites: int, source: str, energy: float,
            key: str) -> int:
        """Create a material (structure as pymatgen JSON, energy in eV/atom); returns its index."""
        self.key.append(key)
        self.material_id.append(material_id)
        self.structure.append(structure)
        self.formula.append(formula)
        self.n_sites.append(n_sites)
        self.source.append(source)
        self.energy.append(energy)
        self.id_map.append({})
        self.seen.add(material_id)
        return len(self.material_id) - 1

    def register(self, new_ids: list[tuple[int, tuple[str, str]]], new_formulas: list[tuple[str, int]]) -> None:
        """Make a finished source's ids and new materials' formulas visible to the matchers."""
        for m, (namespace, ident) in new_ids:
            self.ids.add((namespace, ident), m)
            bucket = self.id_map[m].setdefault(namespace, [])
            if ident not in bucket:
                bucket.append(ident)
        for formula, m in new_formulas:
            self.formulas.add(formula, m)


# ------------------------------------------------------------------------------------------------ matchers
@dataclass
class Query:
    """What a group of source rows offers to match on: ``keys`` (its own ``(namespace, id)`` and link ids),
    ``formula`` (reduced; from the parsed structure when there is one) and ``structure`` (pymatgen JSON of a
    readable structure, else ``None``)."""

    keys: list[tuple[str, str]]
    formula: str | None
    structure: str | None


@dataclass
class Match:
    """The group describes ``materials`` (found by matcher ``how``: ``id``, ``structure``, ``composition``, or
    ``new``). ``polymorphs``: for a composition match among several polymorphs, which was chosen and by what
    energy margin (eV/atom)."""

    materials: list[int]
    how: str
    polymorphs: dict[str, Any] | None = None


@dataclass
class Drop:
    """The group's rows are dropped: ``code`` (``ambiguous_id``, ``ambiguous_formula``, ``unmatched``,
    ``bad_structure``) and a sentence saying why."""

    code: str
    reason: str


class Matcher(Protocol):
    """A matcher: ``match`` returns a :class:`Match`, a :class:`Drop`, or ``None`` to ask the next one."""

    name: str

    def match(self, query: Query, materials: Materials) -> Match | Drop | None: ...

    def end_source(self) -> None: ...


class IdMatcher:
    """``id``: the materials the group's ids point to; one is a match, several are a drop (``ambiguous_id``)."""

    name = "id"

    def match(self, query: Query, materials: Materials) -> Match | Drop | None:
        if not query.keys:
            return None
        found = sorted(materials.ids.lookup(query.keys))
        if len(found) == 1:
            return Match(found, "id")
        if len(found) > 1:
            return Drop("ambiguous_id", "ids " + ", ".join(f"{n}:{i}" for n, i in query.keys)
                        + " point to materials " + ", ".join(materials.material_id[m] for m in found))
        return None

    def end_source(self) -> None:
        pass


class StructureMatch:
    """``structure``: a group with a readable structure matches an equivalent structure of the same reduced
    formula and space group (:class:`StructureIndex`)."""

    name = "structure"

    def __init__(self, config: StructureMatcherConfig) -> None:
        self.index = StructureIndex(config)

    def match(self, query: Query, materials: Materials) -> Match | Drop | None:
        if query.structure is None:
            return None
        candidates = materials.formulas.get(query.formula)
        hit = self.index.find(query.structure, candidates, [materials.structure[m] for m in candidates])
        return Match([hit], "structure") if hit is not None else None

    def end_source(self) -> None:
        self.index.forget()


class CompositionMatcher:
    """``composition``: a group without a readable structure matches the materials of its reduced formula, one
    of several polymorphs chosen by the polymorph policy (:func:`pick_polymorph`); no choice is a drop
    (``ambiguous_formula``)."""

    name = "composition"

    def __init__(self, policy: str) -> None:
        self.policy = policy

    def match(self, query: Query, materials: Materials) -> Match | Drop | None:
        if query.structure is not None or not query.formula:
            return None
        candidates = materials.formulas.get(query.formula)
        if not candidates:
            return None
        energies = [materials.energy[m] for m in candidates]
        choice = pick_polymorph(candidates, energies, self.policy)
        if not choice.materials:
            return Drop("ambiguous_formula", f"formula {query.formula}: {choice.reason}")
        polymorphs = None
        if choice.ambiguous:
            polymorphs = {
                "formula": query.formula, "polymorphs": len(candidates),
                "chosen": [materials.material_id[m] for m in choice.materials],
                "margin_ev_per_atom": energy_margin(energies) if len(choice.materials) == 1 else None,
            }
        return Match(choice.materials, "composition", polymorphs)

    def end_source(self) -> None:
        pass


def build_matchers(names: list[str], structure_matcher: StructureMatcherConfig,
                   polymorph_policy: str) -> list[Matcher]:
    """The matchers named in ``names`` (``id``, ``structure``, ``composition``), in that order."""
    makers = {
        "id": IdMatcher,
        "structure": lambda: StructureMatch(structure_matcher),
        "composition": lambda: CompositionMatcher(polymorph_policy),
    }
    return [makers[name]() for name in names]


def first_match(query: Query, matchers: list[Matcher], materials: Materials) -> Match | Drop | None:
    """The first matcher's answer that is not ``None`` (``None`` when every matcher passes)."""
    for matcher in matchers:
        outcome = matcher.match(query, materials)
        if outcome is not None:
            return outcome
    return None


__all__ = [
    "CompositionMatcher", "Drop", "FormulaIndex", "IdIndex", "IdMatcher", "Match", "Matcher", "Materials",
    "PolymorphChoice", "Query", "StructureIndex", "StructureMatch", "build_matchers", "energy_margin", "first_match",
    "pick_polymorph",
]
