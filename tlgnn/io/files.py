"""File-level reading: compression, format detection, ASE fallback, directory listing."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

from tlgnn.io.errors import StructureReadError
from tlgnn.io.formats import Entry, atoms_entries, parse_entries

COMPRESSION_SUFFIXES = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
FORMAT_BY_SUFFIX = {
    ".cif": "cif", ".mcif": "cif",
    ".vasp": "poscar", ".poscar": "poscar",
    ".xyz": "extxyz", ".extxyz": "extxyz",
    ".json": "json", ".jsonl": "json",
}
ASE_SUFFIXES = {".traj", ".xsf", ".res", ".cell", ".gen", ".cfg", ".pdb", ".cube", ".in"}
"""Other suffixes picked up when listing a directory; they are read through ASE."""

APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"


def split_name(path: str | Path) -> tuple[str, str | None]:
    """``(stem, format)`` of a file name: compression and a known structure suffix are removed from the stem;
    format is ``"cif"|"poscar"|"json"|"extxyz"``, ``"ase"`` for other known suffixes, ``None`` if unknown."""
    name = Path(path).name
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            name, lower = name[: -len(suffix)], lower[: -len(suffix)]
            break
    suffix = Path(lower).suffix
    if suffix in FORMAT_BY_SUFFIX:
        return name[: -len(suffix)], FORMAT_BY_SUFFIX[suffix]
    if suffix in ASE_SUFFIXES:
        return name[: -len(suffix)], "ase"
    if "poscar" in lower or "contcar" in lower:
        return name, "poscar"
    return name, None


def skip_reason(path: Path) -> str | None:
    """Why a file found while listing a directory is not read (``None``: read it)."""
    if path.name.startswith("._"):
        return "hidden file: macOS AppleDouble resource fork ('._' prefix), not a structure"
    if path.name.startswith("."):
        return "hidden file"
    if split_name(path)[1] is None:
        return f"not a structure file: unrecognised name/extension {path.suffix or path.name!r}"
    return None


def read_file(path: str | Path) -> list[Entry]:
    """Read every structure in one file (unchecked). Raises ``StructureReadError`` (``path=None``) when the file
    as a whole is unreadable."""
    path = Path(path)
    _, fmt = split_name(path)
    raw = _read_bytes(path)
    if raw.startswith(APPLEDOUBLE_MAGIC):
        raise StructureReadError(None, "not a structure file: macOS AppleDouble resource fork (binary '._' file)")
    if not raw.strip():
        raise StructureReadError(None, "empty file: no structure")
    if fmt in (None, "ase"):
        fmt = _ase_filetype(path, fmt is None)
        if fmt == "ase":
            return _read_with_ase(path)
    if b"\x00" in raw:
        raise StructureReadError(None, f"not a structure file: binary content in a {fmt} file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return parse_entries(text, fmt)


def _read_bytes(path: Path) -> bytes:
    opener = COMPRESSION_SUFFIXES.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise StructureReadError(None, "unreadable: file not found") from None
    except IsADirectoryError:
        raise StructureReadError(None, "unreadable: is a directory") from None
    except PermissionError:
        raise StructureReadError(None, "unreadable: permission denied") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise StructureReadError(None, f"unreadable: {exc}") from None


def _ase_filetype(path: Path, unknown_suffix: bool) -> str:
    """Map ASE's content-based detection onto our parsers (never let ASE guess POSCAR species)."""
    from ase.io.formats import filetype

    try:
        kind = filetype(str(path), guess=True)
    except Exception:  # noqa: BLE001
        if unknown_suffix:
            raise StructureReadError(None, "unknown format: not a structure file tlgnn or ASE recognises") from None
        return "ase"
    mapping = {"vasp": "poscar", "vasp-out": "ase", "cif": "cif", "extxyz": "extxyz", "xyz": "extxyz"}
    return mapping.get(kind, "ase")


def _read_with_ase(path: Path) -> list[Entry]:
    from ase.io import read

    try:
        frames = read(str(path), index=":")
    except Exception as exc:  # noqa: BLE001
        raise StructureReadError(None, f"unknown format or unreadable file (ASE: {type(exc).__name__}: {exc})") from None
    if not isinstance(frames, list):
        frames = [frames]
    return atoms_entries(frames)
