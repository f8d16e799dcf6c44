"""File-level reading: compression, format detection, ASE fallback, directory listing."""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import os
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
BYTE_ORDER_MARKS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


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


def names_by_case(folder: str | Path) -> dict[str, list[str]]:
    """The files in ``folder`` indexed by lower-cased name and lower-cased stem (structure extension removed),
    for :func:`case_hint`; empty when the folder cannot be listed."""
    index: dict[str, list[str]] = {}
    try:
        entries = [entry.name for entry in os.scandir(folder) if entry.is_file()]
    except OSError:
        return index
    for name in sorted(entries):
        for key in {name.lower(), split_name(name)[0].lower()}:
            index.setdefault(key, []).append(name)
    return index


def case_hint(path: str | Path, index: dict[str, list[str]] | None = None) -> str:
    """For a missing ``path``: ``"; a file differing only in case exists: MP-1.cif"`` when its folder holds a file
    whose name, or whose stem, equals the name of ``path`` ignoring letter case (ids are matched to file names
    exactly); else ``""``. ``index``: :func:`names_by_case` of the folder, when many paths are looked up."""
    path = Path(path)
    index = names_by_case(path.parent) if index is None else index
    similar = [name for name in index.get(path.name.lower(), []) if name != path.name]
    return f"; a file differing only in case exists: {', '.join(similar[:3])}" if similar else ""


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
    text = decode_text(raw, fmt)
    if not text.strip():
        raise StructureReadError(None, "empty file: no structure")
    return parse_entries(text, fmt)


def decode_text(raw: bytes, fmt: str) -> str:
    """The text of a structure file: UTF-8 (a byte-order mark is dropped), UTF-16/UTF-32 with a byte-order mark,
    UTF-16 without one (a NUL byte beside every character), else Latin-1.

    Raises ``StructureReadError`` (``path=None``) for binary content and for a file that declares an encoding
    (byte-order mark) it does not hold, naming the encoding.
    """
    encoding = _unicode_encoding(raw)
    if encoding is not None:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as exc:
            name = encoding.removesuffix("-sig").upper()
            raise StructureReadError(None, f"unreadable: the file starts like {name} text but is not valid "
                                           f"{name} ({exc.reason} at byte {exc.start})") from None
    if b"\x00" in raw:
        raise StructureReadError(None, f"not a structure file: binary content in a {fmt} file (not UTF-8, "
                                       "UTF-16 or Latin-1 text)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _unicode_encoding(raw: bytes) -> str | None:
    """The encoding a byte-order mark declares, UTF-16 recognised by its NUL bytes, or ``None`` (8-bit text)."""
    for bom, encoding in BYTE_ORDER_MARKS:
        if raw.startswith(bom):
            return encoding
    if len(raw) >= 4 and len(raw) % 2 == 0:  # BOM-less UTF-16 of (mostly) Latin-1 text: every other byte NUL
        even, odd = raw[0::2], raw[1::2]
        if b"\x00" not in even and odd.count(0) >= 0.9 * len(odd):
            return "utf-16-le"
        if b"\x00" not in odd and even.count(0) >= 0.9 * len(even):
            return "utf-16-be"
    return None


def _read_bytes(path: Path) -> bytes:
    opener = COMPRESSION_SUFFIXES.get(path.suffix.lower(), open)
    try:
        with opener(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise StructureReadError(None, f"unreadable: file not found{case_hint(path)}") from None
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
