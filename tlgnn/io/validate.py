"""The one validation every reader applies: ``check_structure``."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pymatgen.core import DummySpecies, Element, Lattice, Structure

from tlgnn.io.errors import DisorderedStructureDropped, StructureReadError

DisorderPolicy = Literal["error", "order", "drop"]
DISORDER_POLICIES = ("error", "order", "drop")

MIN_DISTANCE = 0.5
"""Two atoms closer than this (Å) are reported as overlapping."""

MIN_VOLUME_PER_ATOM = 1e-3
"""A cell smaller than this (Å^3 per atom, or with a near-zero lattice-vector triple product) is degenerate."""


def check_structure(structure: Structure, name: str | None = None, disordered: DisorderPolicy = "error") -> Structure:
    """Validate a crystal and apply the partial-occupancy policy.

    Checks, in order: it is a pymatgen ``Structure`` (a ``Molecule`` is refused as not periodic); it has atoms;
    the cell has a finite, non-zero volume; every species is a real element; partial occupancy is handled by
    ``disordered``; no two atoms (periodic images included) are closer than ``MIN_DISTANCE`` = 0.5 Å.

    Args:
        structure: the crystal (Å).
        name: label used in error messages (a file path, an id).
        disordered: ``"error"`` refuses structures with partially occupied sites; ``"order"`` keeps the majority
            species on each site (see ``order_by_majority``); ``"drop"`` raises ``DisorderedStructureDropped``,
            which readers record under ``skipped`` instead of ``failures``.

    Returns:
        ``structure`` itself when it was already valid and ordered, else a new ordered ``Structure``.

    Raises:
        StructureReadError: with ``path=name`` and the reason.
    """
    if disordered not in DISORDER_POLICIES:
        raise ValueError(f"disordered must be one of {DISORDER_POLICIES}, got {disordered!r}")

    def fail(reason: str) -> StructureReadError:
        return StructureReadError(name, reason)

    if not isinstance(structure, Structure):
        kind = type(structure).__name__
        if kind == "Molecule":
            raise fail("not periodic: a molecule (pymatgen Molecule, no lattice); tlgnn needs a crystal with a 3D cell")
        raise fail(f"not a pymatgen Structure (got {kind})")
    if len(structure) == 0:
        raise fail("empty structure: the cell holds no atoms")
    _check_lattice(structure.lattice, len(structure), fail)
    _check_elements(structure, fail)
    if not structure.is_ordered:
        n_partial = sum(1 for site in structure if not site.is_ordered)
        if disordered == "error":
            raise fail(
                f"disordered sites: {n_partial} sites with partial occupancy; pass disordered='order' to keep the "
                "majority species on each site, or disordered='drop' to skip disordered structures "
                "(tlgnn predict --disordered order|drop)"
            )
        if disordered == "drop":
            raise DisorderedStructureDropped(
                name, f"dropped (disordered='drop'): {n_partial} sites with partial occupancy"
            )
        structure = order_by_majority(structure)
        if len(structure) == 0:
            raise fail("empty structure after ordering: every site was mostly vacant")
    _check_overlaps(structure, fail)
    return structure


def _check_lattice(lattice: Lattice, n_sites: int, fail) -> None:
    matrix = lattice.matrix
    if not np.all(np.isfinite(matrix)):
        raise fail("degenerate cell: lattice contains NaN or infinite values")
    lengths = np.linalg.norm(matrix, axis=1)
    volume = abs(float(np.linalg.det(matrix)))
    if np.any(lengths < 1e-8):
        raise fail(f"degenerate cell: a lattice vector has zero length (lengths {np.round(lengths, 4).tolist()} Å)")
    # volume relative to the box of the vector lengths: ~0 means coplanar vectors
    if volume < MIN_VOLUME_PER_ATOM * n_sites or volume / float(np.prod(lengths)) < 1e-6:
        raise fail(f"zero/degenerate cell volume: {volume:.3g} Å^3 (lattice vectors are coplanar or too short)")


def _check_elements(structure: Structure, fail) -> None:
    bad = sorted({str(sp) for sp in structure.composition if isinstance(sp, DummySpecies) or not isinstance(getattr(sp, "element", sp), Element)})
    if bad:
        raise fail(f"unknown element symbol(s) {bad}: every site must be a real chemical element")
    if not np.all(np.isfinite(structure.cart_coords)):
        raise fail("atomic coordinates contain NaN or infinite values")


def _check_overlaps(structure: Structure, fail) -> None:
    centers, neighbors, _, distances = structure.get_neighbor_list(MIN_DISTANCE, exclude_self=True)
    if len(distances) == 0:
        return
    k = int(np.argmin(distances))
    i, j, d = int(centers[k]), int(neighbors[k]), float(distances[k])
    if i == j:
        raise fail(
            f"overlapping atoms: site {i} ({structure[i].species_string}) is {d:.3f} Å from its own periodic image "
            f"(minimum {MIN_DISTANCE} Å); the cell is too small"
        )
    i, j = min(i, j), max(i, j)
    raise fail(
        f"overlapping atoms: sites {i} ({structure[i].species_string}) and {j} ({structure[j].species_string}) are "
        f"{d:.3f} Å apart (minimum {MIN_DISTANCE} Å); duplicated atoms or wrong coordinates"
    )


def order_by_majority(structure: Structure) -> Structure:
    """Deterministically turn a disordered structure into an ordered one.

    Each site keeps its majority species (ties: lower atomic number); a site whose vacancy fraction
    (1 - total occupancy) exceeds every species' occupancy is removed. Split positions -- partially occupied sites
    closer than ``MIN_DISTANCE`` that would overlap once both are full -- are merged by keeping the site with the
    larger majority occupancy (ties: lower index). The cell is never enlarged.

    Chosen over pymatgen's ``OrderDisorderedStructureTransformation`` because that enumerates supercell orderings
    ranked by Ewald energy: it needs oxidation states, changes the number of atoms, and is far too slow for batch
    reading. The majority rule is cheap, reproducible and keeps the conventional cell the file describes.
    """
    species, coords, weight, partial = [], [], [], []
    for site in structure:
        items = sorted(site.species.items(), key=lambda kv: (-kv[1], kv[0].Z))
        top, occu = items[0]
        vacancy = 1.0 - sum(site.species.values())
        if vacancy > occu:
            continue
        species.append(top)
        coords.append(site.frac_coords)
        weight.append(occu)
        partial.append(not site.is_ordered)
    ordered = Structure(structure.lattice, species, coords)
    if len(ordered) < 2:
        return ordered
    centers, neighbors, _, _ = ordered.get_neighbor_list(MIN_DISTANCE, exclude_self=True)
    removed: set[int] = set()
    for i, j in sorted({(min(a, b), max(a, b)) for a, b in zip(centers.tolist(), neighbors.tolist()) if a != b}):
        if i in removed or j in removed or not (partial[i] and partial[j]):
            continue
        removed.add(j if weight[i] >= weight[j] else i)
    if removed:
        ordered.remove_sites(sorted(removed))
    return ordered
