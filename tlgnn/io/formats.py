"""Per-format parsing of structure text into unchecked pymatgen ``Structure`` entries.

Every parser returns a list of ``Entry`` (one per CIF data block, extxyz frame or JSON list item). Validation
(``check_structure``) is applied afterwards, in one place, by ``parse_structure_text`` and the batch reader.
Errors are raised / stored as ``StructureReadError`` with ``path=None``; callers attach the location.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from tlgnn.io.errors import StructureReadError
from tlgnn.io.validate import DisorderPolicy, check_structure

TextFormat = Literal["cif", "poscar", "json", "extxyz"]
TEXT_FORMATS = ("cif", "poscar", "json", "extxyz")

CIF_OCCUPANCY_TOLERANCE = 1.05
"""CIF sites whose occupancies sum to at most this are scaled down to 1 (refined values such as 1.02 are common)."""


@dataclass
class Entry:
    """One structure (or its failure) inside a text/file. ``key`` is the block/frame/item name, ``None`` when the
    source holds a single structure. Exactly one of ``structure``, ``error``, ``skip_reason`` is set."""

    key: str | None
    structure: Structure | None = None
    error: StructureReadError | None = None
    skip_reason: str | None = None


def _err(reason: str) -> StructureReadError:
    return StructureReadError(None, reason)


# ----------------------------------------------------------------------------------------------------------- CIF
_DATA_BLOCK = re.compile(r"^[ \t]*data_(\S*)", re.MULTILINE | re.IGNORECASE)


def parse_cif(text: str) -> list[Entry]:
    """CIF text (symmetry expanded by pymatgen, conventional cell, one entry per data block)."""
    from pymatgen.io.cif import CifFile

    n_blocks = len(_DATA_BLOCK.findall(text))
    if n_blocks == 0:
        raise _err("not a CIF file: no 'data_' block found")
    if n_blocks == 1:
        return [Entry(None, structure=_cif_structure(text))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cif = CifFile.from_str(text)
        except Exception as exc:  # noqa: BLE001 - any parser failure is an unreadable file
            raise _err(_unreadable_cif(exc)) from exc
    entries = []
    for name, block in cif.data.items():
        keys = {k.lower() for k in block.data}
        if not ({"_atom_site_fract_x", "_atom_site_cartn_x"} & keys):
            entries.append(Entry(name, skip_reason="CIF data block holds no atom sites (metadata block)"))
            continue
        try:
            entries.append(Entry(name, structure=_cif_structure(str(block))))
        except StructureReadError as exc:
            entries.append(Entry(name, error=exc))
    return entries


def _cif_structure(text: str) -> Structure:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parser = CifParser.from_str(text, occupancy_tolerance=CIF_OCCUPANCY_TOLERANCE)
        except Exception as exc:  # noqa: BLE001
            raise _err(_unreadable_cif(exc)) from exc
        try:
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except Exception as exc:  # noqa: BLE001
            raise _err(_cif_reason(exc)) from exc
    missing = _elements_missing_from(structures[0], parser.as_dict())
    if missing:
        raise _err(missing)
    return structures[0]


def _elements_missing_from(structure: Structure, cif: dict) -> str | None:
    """Why the structure lacks an element that the block's ``_chemical_formula_sum`` lists (a truncated or
    damaged atom-site loop), or ``None``. Hydrogen is exempt: X-ray structures often list it without sites."""
    from pymatgen.core import Composition

    block = next(iter(cif.values()), {})
    formula = block.get("_chemical_formula_sum")
    if not isinstance(formula, str) or not formula.strip("?. '\""):
        return None
    try:
        listed = {el.symbol for el in Composition(formula.strip("'\"")).remove_charges().elements}
    except Exception:  # noqa: BLE001 - an unparsable formula is not this check's business
        return None
    present = {el.symbol for el in structure.composition.remove_charges().elements}
    missing = sorted(listed - present - {"H", "D"})
    if not missing:
        return None
    return (f"atom sites lack {', '.join(missing)}, which _chemical_formula_sum {formula.strip()!r} lists "
            f"(the sites give {structure.composition.reduced_formula}): truncated or damaged atom-site loop?")


def _unreadable_cif(exc: Exception) -> str:
    """Why pymatgen's CIF tokenizer gave up, in words: a ``loop_`` without columns or with a cut-off row is
    what a truncated file looks like."""
    if isinstance(exc, (ZeroDivisionError, IndexError)):
        return (f"unreadable CIF: a loop_ has no column names or its rows do not fill its columns (truncated "
                f"file?) (pymatgen: {type(exc).__name__}: {exc})")
    return f"unreadable CIF: {exc}"


_OCCUPANCY_EXCEEDED = re.compile(r"Occupancy ([0-9.]+) exceeded tolerance")


def _cif_reason(exc: Exception) -> str:
    """pymatgen's reason for not building a structure from a parsed CIF, in tlgnn's words."""
    cause = exc.__cause__ or exc
    detail = str(cause).strip().replace("\n", " ")
    if "Invalid CIF file with no structures" in detail:
        return "no structure in CIF: the data block holds no usable atom sites and cell"
    if "thickness" in detail or "below threshold" in detail:
        return "zero/degenerate cell volume: the CIF cell is flat (a cell thickness below 0.01 Å)"
    if "Singular matrix" in detail:  # numpy could not invert the lattice pymatgen built from the cell parameters
        return ("zero/degenerate cell volume: the CIF's _cell_length_* and _cell_angle_* give no 3D cell (a zero "
                "length, or angles that make the lattice vectors coplanar)")
    occupancy = _OCCUPANCY_EXCEEDED.search(detail)
    if occupancy:  # pymatgen merges sites at the same position and sums their occupancies
        return (f"overlapping atoms: atom sites lie exactly on top of each other once the symmetry operations are "
                f"applied (their occupancies add up to {float(occupancy.group(1)):g}); duplicated atom-site rows "
                "or wrong coordinates")
    if isinstance(cause, KeyError):
        return f"no structure in CIF: required item {detail} is missing"
    return f"no structure could be built from the CIF (pymatgen: {detail[:300]})"


# -------------------------------------------------------------------------------------------------------- POSCAR
_SITE_LABEL = re.compile(r"^([A-Z][a-z]?)(?:[^a-z].*)?$")


def parse_poscar(text: str) -> Structure:
    """POSCAR/CONTCAR text. VASP-4 files (no species line) take species from per-site labels (``# Na1``) or, failing
    that, from a title line made only of element symbols (one per species group); otherwise they are refused.
    Symbols are never guessed (unlike pymatgen's H, He, Li… fallback or ASE's reading of title words)."""
    from pymatgen.io.vasp import Poscar

    lines = text.strip("\n").splitlines()
    if len(lines) < 8:
        raise _err(f"not a POSCAR file: {len(lines)} lines, a POSCAR needs at least 8")
    try:
        float(lines[1].split()[0])
        np.array([[float(x) for x in line.split()[:3]] for line in lines[2:5]], dtype=float).reshape(3, 3)
    except (ValueError, IndexError) as exc:
        raise _err("not a POSCAR file: lines 2-5 must hold the scale factor and three lattice vectors") from exc
    counts = _int_tokens(lines[5])
    counts_line = 5 if counts is not None else 6
    atom_counts = counts if counts is not None else _int_tokens(lines[6])
    if atom_counts is None:
        raise _err("not a POSCAR file: line 6 or 7 must hold the number of atoms of each species")
    _check_site_lines(lines, counts_line, atom_counts)
    names = None
    if counts is not None:  # VASP 4: no species line
        names = _species_from_sites(lines, counts) or _species_from_title(lines[0], len(counts))
        if names is None:
            raise _err(
                "no element symbols in POSCAR: VASP-4 style file without a species line, without per-site element "
                "labels (e.g. '0.0 0.0 0.0 # Na1') and without a title of element symbols; add the species line "
                "(e.g. 'Na Cl') above the counts line"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            poscar = Poscar.from_str(text, default_names=names, read_velocities=False)
        except Exception as exc:  # noqa: BLE001
            raise _err(f"unreadable POSCAR: {exc}") from exc
    bad = sorted({s for s in poscar.site_symbols if not Element.is_valid_symbol(s)})
    if bad:
        raise _err(f"unknown element symbol(s) {bad} in the POSCAR species line")
    return poscar.structure


def _check_site_lines(lines: list[str], counts_line: int, counts: list[int]) -> None:
    """Refuse a POSCAR with fewer coordinate lines (three numbers each) than its counts line promises."""
    start = counts_line + 1
    if start < len(lines) and lines[start].strip()[:1] in ("s", "S"):  # selective dynamics
        start += 1
    start += 1  # the Direct/Cartesian line
    site_lines = lines[start : start + sum(counts)]
    n_sites = next((i for i, line in enumerate(site_lines) if not _has_three_numbers(line)), len(site_lines))
    if n_sites < sum(counts):
        raise _err(f"POSCAR counts line {lines[counts_line].strip()!r} promises {sum(counts)} atoms but "
                   f"{n_sites} coordinate lines follow (truncated file?)")


def _has_three_numbers(line: str) -> bool:
    tokens = line.split()[:3]
    try:
        return len([float(t) for t in tokens]) == 3
    except ValueError:
        return False


def _int_tokens(line: str) -> list[int] | None:
    try:
        values = [int(t) for t in line.split("#")[0].split()]
    except ValueError:
        return None
    return values or None


def _species_from_sites(lines: list[str], counts: list[int]) -> list[str] | None:
    """Element of each species group from per-site labels after the coordinates; None if absent/inconsistent."""
    start = 6
    if lines[start].strip()[:1] in "sS":  # selective dynamics
        start += 1
    start += 1  # the Direct/Cartesian line
    site_lines = lines[start : start + sum(counts)]
    if len(site_lines) < sum(counts):
        return None
    symbols = []
    for line in site_lines:
        tokens = [t for t in line.replace("#", " ").split() if t not in ("T", "F")][3:]
        match = _SITE_LABEL.match(tokens[0]) if tokens else None
        if match is None or not Element.is_valid_symbol(match.group(1)):
            return None
        symbols.append(match.group(1))
    names, i = [], 0
    for n in counts:
        group = set(symbols[i : i + n])
        if len(group) != 1:
            return None
        names.append(group.pop())
        i += n
    return names


def _species_from_title(title: str, n_groups: int) -> list[str] | None:
    tokens = title.split()
    if len(tokens) == n_groups and all(Element.is_valid_symbol(t) for t in tokens):
        return tokens
    return None


# ---------------------------------------------------------------------------------------------------------- JSON
_ID_KEYS = ("material_id", "id", "name")


def parse_json(text: str) -> list[Entry]:
    """pymatgen ``Structure.as_dict()`` JSON: one dict, a list of dicts, or wrappers ``{"structure": {...}}`` /
    ``{"cif": "..."}`` with an optional ``material_id``/``id``/``name`` (used as the entry key in lists).
    JSON Lines (one object per line) is accepted too."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise _err(f"unreadable JSON: {exc}") from exc
    if isinstance(data, dict):
        return [_json_entry(None, data)]
    if isinstance(data, list):
        entries = []
        for i, item in enumerate(data):
            key = _json_id(item)
            entries.append(_json_entry(key if key is not None else str(i), item))
        return entries
    raise _err("not a structure file: JSON holds neither a pymatgen Structure dict nor a list of them")


def _json_id(item: Any) -> str | None:
    if isinstance(item, dict):
        for k in _ID_KEYS:
            if isinstance(item.get(k), (str, int)):
                return str(item[k])
    return None


def _json_entry(key: str | None, obj: Any) -> Entry:
    try:
        return Entry(key, structure=structure_from_dict(obj))
    except StructureReadError as exc:
        return Entry(key, error=exc)


def structure_from_dict(obj: Any) -> Structure:
    """A ``Structure`` from a pymatgen dict or a ``{"structure": dict}`` / ``{"cif": str}`` wrapper."""
    if not isinstance(obj, dict):
        raise _err(f"not a structure: JSON item is a {type(obj).__name__}, expected a pymatgen Structure dict")
    if isinstance(obj.get("structure"), dict):
        obj = obj["structure"]
    elif isinstance(obj.get("cif"), str):
        entries = [e for e in parse_cif(obj["cif"]) if e.skip_reason is None]
        if len(entries) != 1:
            raise _err(f"CIF text holds {len(entries)} structures; expected one")
        if entries[0].error is not None:
            raise entries[0].error
        return entries[0].structure
    if "sites" in obj and "lattice" not in obj:
        raise _err("not periodic: a pymatgen Molecule (no lattice); tlgnn needs a crystal with a 3D cell")
    if "sites" not in obj or "lattice" not in obj:
        raise _err("not a structure: JSON dict has no 'lattice' and 'sites' (not a pymatgen Structure dict)")
    try:
        return Structure.from_dict(obj)
    except Exception as exc:  # noqa: BLE001
        raise _err(f"invalid pymatgen Structure dict: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------- extxyz / ASE Atoms
def parse_extxyz(text: str) -> list[Entry]:
    """Extended XYZ text, one entry per frame (see ``atoms_entries`` for keys and the periodicity rule)."""
    from ase.io import read

    try:
        frames = read(io.StringIO(text), index=":", format="extxyz")
    except Exception as exc:  # noqa: BLE001
        raise _err(f"unreadable extxyz: {type(exc).__name__}: {exc}") from exc
    return atoms_entries(frames)


def atoms_entries(frames: list) -> list[Entry]:
    """Entries from ASE frames. A single frame has key ``None``; several frames are keyed by ``info["id"]`` when
    every frame has one and they are unique, else by the frame index."""
    if not frames:
        raise _err("empty structure file: no frames")
    ids = [f.info.get("id") for f in frames]
    use_ids = all(i is not None for i in ids) and len({str(i) for i in ids}) == len(ids)
    entries = []
    for i, atoms in enumerate(frames):
        key = None if len(frames) == 1 else (str(ids[i]) if use_ids else str(i))
        try:
            entries.append(Entry(key, structure=atoms_to_structure(atoms)))
        except StructureReadError as exc:
            entries.append(Entry(key, error=exc))
    return entries


def atoms_to_structure(atoms) -> Structure:
    """An ASE ``Atoms`` as a pymatgen ``Structure`` (Cartesian positions, Å).

    Periodicity rule: the lattice decides, not the ``pbc`` flags. Atoms with a full-rank 3D cell are a periodic
    crystal -- a slab with ``pbc = T T F`` is a crystal with vacuum along c and is accepted, and the structure is
    treated as periodic in all three directions (as its CIF would be). Atoms with no cell or a cell of rank < 3 are
    a molecule/cluster and are refused as not periodic.
    """
    if len(atoms) == 0:
        raise _err("empty structure: no atoms")
    rank = int(atoms.cell.rank)
    if rank < 3:
        pbc = "".join("T" if p else "F" for p in atoms.pbc)
        raise _err(
            f"not periodic: no 3D lattice (cell rank {rank}, pbc {pbc}) -- a molecule or cluster; give a full cell "
            "(a box with vacuum) to treat it as a crystal"
        )
    try:
        return Structure(Lattice(atoms.cell.array), atoms.get_chemical_symbols(), atoms.positions,
                         coords_are_cartesian=True)
    except Exception as exc:  # noqa: BLE001
        raise _err(f"invalid atoms: {type(exc).__name__}: {exc}") from exc


# -------------------------------------------------------------------------------------------------- inline text
_PARSERS = {
    "cif": parse_cif,
    "poscar": lambda text: [Entry(None, structure=parse_poscar(text))],
    "json": parse_json,
    "extxyz": parse_extxyz,
}


def parse_entries(text: str, fmt: TextFormat) -> list[Entry]:
    """Unchecked entries of ``text`` in format ``fmt``."""
    if fmt not in _PARSERS:
        raise ValueError(f"fmt must be one of {TEXT_FORMATS}, got {fmt!r}")
    return _PARSERS[fmt](text)


def parse_structure_text(
    text: str, fmt: TextFormat = "cif", name: str | None = None, disordered: DisorderPolicy = "error"
) -> Structure:
    """Parse one inline structure (a CIF string in a table, a pymatgen dict as JSON, POSCAR or extxyz text) and
    validate it with ``check_structure``.

    Args:
        text: the structure text.
        fmt: ``"cif"``, ``"poscar"``, ``"json"`` or ``"extxyz"``.
        name: label for error messages (becomes ``StructureReadError.path``), e.g. the material id.
        disordered: partial-occupancy policy, see ``check_structure``.

    Raises:
        StructureReadError: if the text is unreadable, holds not exactly one structure, or fails validation.
    """
    if not isinstance(text, str) or not text.strip():
        raise StructureReadError(name, f"empty {fmt} text: no structure given")
    try:
        entries = [e for e in parse_entries(text, fmt) if e.skip_reason is None]
    except StructureReadError as exc:
        raise exc.at(name) from None
    if len(entries) != 1:
        raise StructureReadError(name, f"{fmt} text holds {len(entries)} structures; expected exactly one")
    if entries[0].error is not None:
        raise entries[0].error.at(name)
    try:
        return check_structure(entries[0].structure, name, disordered)
    except StructureReadError as exc:
        raise exc.at(name) from None
