"""Structures of a source: collect what to parse per row, then parse in a process pool (with an on-disk cache).

Parsed structures are stored in the aligned table as pymatgen JSON strings (``Structure.to_json()``): lossless
(lattice, species, fractional coordinates, site properties), independent of any CIF dialect, and read back with
``Structure.from_str(text, fmt="json")``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tlgnn.data.errors import SourceError
from tlgnn.data.readers import id_text, is_missing, read_table
from tlgnn.data.source_config import SourceSpec
from tlgnn.utils.config import resolve_path
from tlgnn.utils.files import remove_stale_temps, temp_path, verify_checksum, write_checksum

SERIAL_BELOW = 64
CACHE_VERSION = 3  # 3: truncated CIF/POSCAR files are refused (tlgnn.io); NaN-safe read-back


@dataclass
class ParsedStructure:
    """Result of parsing one row's structure: ``structure`` (pymatgen JSON), ``formula`` (reduced),
    ``n_sites``, ``key`` (:func:`tlgnn.graphs.structure_key`, the graph-cache key); or ``error`` (the reason it
    could not be read)."""

    structure: str | None
    formula: str | None
    n_sites: int
    error: str | None
    key: str | None = None


def structure_folder(spec: SourceSpec, base: Path) -> Path:
    """The folder of a ``files`` source's structure files: ``structure.dir`` (relative to ``base``, the source
    config's root) or, by default, the label table's folder."""
    st = spec.structure
    assert st is not None
    if st.dir:
        return resolve_path(st.dir, base, normalize=False)
    return resolve_path(spec.path, base, normalize=False).parent


def structure_inputs(spec: SourceSpec, frame: pd.DataFrame, ids: list[str],
                     base: Path) -> tuple[list[Any], list[str]]:
    """Per row of ``frame``: ``("text", text, fmt)``, ``("file", path)``, ``("dict", dict)``, ``("missing",
    reason)`` (a named structure file that does not exist: the row is dropped with the reason) or ``None``.

    Returns the inputs and notes for the report (e.g. rows without a structure in a structure table).
    """
    st = spec.structure
    assert st is not None
    notes: list[str] = []
    if st.kind == "inline":
        return [_text_input(v, st.format) for v in frame[st.column].tolist()], notes
    if st.kind == "files":
        folder = structure_folder(spec, base)
        if not folder.is_dir():
            raise SourceError(spec.name, "structure.dir", f"folder not found: {folder}")
        files = _structure_files(folder)
        from tlgnn.io.files import case_hint, names_by_case

        by_case: dict[str, list[str]] | None = None  # listed at the first missing file, to name case differences
        out: list[Any] = []
        used: set[str] = set()
        for value in frame[st.column].tolist():
            if is_missing(value):
                out.append(None)
                continue
            path = _find_structure_file(folder, str(value).strip(), files)
            if path is None:
                by_case = names_by_case(folder) if by_case is None else by_case
                out.append(("missing", f"{folder / str(value).strip()}: structure file not found (nor a structure "
                                       f"file named {str(value).strip()!r} plus an extension such as .cif)"
                                       f"{case_hint(folder / str(value).strip(), by_case)}"))
                continue
            used.add(path.name)
            out.append(("file", str(path)))
        unused = sorted(set(files.values()) - used - {""})
        if unused:
            notes.append(f"{len(unused)} structure files in {folder} have no row in the label table (ignored), "
                         f"e.g. {', '.join(unused[:3])}")
        return out, notes
    path = Path(st.path).expanduser()  # type: ignore[arg-type]
    if not path.is_absolute():
        path = base / path
    key = st.id_column or spec.id_column or "id"
    if st.kind == "table":
        table = read_table(path, None, spec.name, "structure.path", columns=[key, st.column])  # type: ignore[list-item]
        by_id: dict[str, Any] = {}
        for j, (ident, value) in enumerate(zip(table[key].tolist(), table[st.column].tolist())):
            ident = id_text(ident)
            if ident is None:
                raise SourceError(spec.name, "structure.id_column", f"empty id in {path.name}", row=j)
            if ident in by_id:
                raise SourceError(spec.name, "structure.id_column", f"id {ident!r} appears twice in {path.name}", row=j)
            by_id[ident] = value
    else:  # frames
        by_id = _read_frames(spec, path, key)
    out = []
    missing = 0
    for ident in ids:
        value = by_id.get(ident)
        if value is None:
            missing += 1
            out.append(None)
        elif isinstance(value, tuple):
            out.append(value)
        else:
            out.append(_text_input(value, st.format))
    if missing:
        notes.append(f"{missing} of {len(ids)} rows have no structure in {path.name}")
    unused = len(set(by_id) - set(ids))
    if unused:
        notes.append(f"{unused} structures in {path.name} have no row in the label table (ignored)")
    return out, notes


def _structure_files(folder: Path) -> dict[str, str]:
    """The structure files directly in ``folder`` by stem (``{"mp-1": "mp-1.cif"}``); a stem that two files
    share (``x.cif`` and ``x.vasp``) maps to ``""``, so it is never guessed."""
    from tlgnn.io.files import skip_reason, split_name

    by_stem: dict[str, str] = {}
    for entry in os.scandir(folder):
        if entry.is_file() and skip_reason(Path(entry.name)) is None:
            stem = split_name(entry.name)[0]
            by_stem[stem] = "" if stem in by_stem else entry.name
    return by_stem


def _find_structure_file(folder: Path, name: str, files: dict[str, str]) -> Path | None:
    """``folder/name`` if it is a file, else the one structure file whose stem is ``name`` (ids given without
    their extension, as in CGCNN's ``id_prop.csv``), else ``None``."""
    path = folder / name
    if path.is_file():
        return path
    found = files.get(name)
    return folder / found if found else None


def _text_input(value: Any, fmt: str) -> Any:
    if is_missing(value):
        return None
    if isinstance(value, dict):
        return ("dict", value)
    return ("text", str(value), fmt)


def _read_frames(spec: SourceSpec, path: Path, key: str) -> dict[str, Any]:
    """Frames of a multi-frame file (extxyz or anything ASE reads) keyed by ``info[key]``, filtered by select."""
    from ase.io import read

    if not path.is_file():
        raise SourceError(spec.name, "structure.path", f"file not found: {path}")
    try:
        frames = read(str(path), index=":")
    except Exception as err:  # noqa: BLE001
        raise SourceError(spec.name, "structure.path", f"cannot read {path}: {type(err).__name__}: {err}") from None
    select = spec.structure.select or {}  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    for j, atoms in enumerate(frames):
        if any(str(atoms.info.get(k)) != str(v) for k, v in select.items()):
            continue
        if key not in atoms.info:
            raise SourceError(spec.name, "structure.id_column", f"frame has no info key {key!r}", row=f"frame {j}")
        ident = id_text(atoms.info[key])
        if ident in out:
            raise SourceError(spec.name, "structure.id_column",
                              f"id {ident!r} appears in two selected frames (add 'select')", row=f"frame {j}")
        out[ident] = ("atoms", atoms)  # type: ignore[index]
    if not out:
        raise SourceError(spec.name, "structure.select", f"no frame of {path.name} matches {select}")
    return out


def _parse_one(item: Any, name: str, disordered: str) -> ParsedStructure:
    from tlgnn.io import StructureReadError, check_structure, parse_structure_text

    try:
        kind = item[0]
        if kind == "missing":
            return ParsedStructure(None, None, 0, item[1])
        if kind == "text":
            structure = parse_structure_text(item[1], item[2], name=name, disordered=disordered)
        elif kind == "dict":
            structure = parse_structure_text(json.dumps(item[1]), "json", name=name, disordered=disordered)
        elif kind == "atoms":
            from tlgnn.io import atoms_to_structure

            structure = check_structure(atoms_to_structure(item[1]), name, disordered)
        else:  # file
            from tlgnn.io.reader import read_structures

            result = read_structures(item[1], on_error="raise", disordered=disordered, n_jobs=1, progress=False)
            if len(result) != 1:
                raise StructureReadError(item[1], f"holds {len(result)} structures; expected exactly one")
            structure = result[0].structure
    except StructureReadError as err:
        return ParsedStructure(None, None, 0, str(err))
    except Exception as err:  # noqa: BLE001 - unexpected parser failure: keep the row, report it
        return ParsedStructure(None, None, 0, f"{name}: {type(err).__name__}: {err}")
    from tlgnn.graphs.cache import structure_key

    return ParsedStructure(structure.to_json(), structure.composition.reduced_formula, len(structure), None,
                           structure_key(structure))


def _parse_chunk(args: tuple[list[Any], list[str], str]) -> list[ParsedStructure]:
    items, names, disordered = args
    return [_parse_one(item, name, disordered) for item, name in zip(items, names)]


def _cache_key(items: list[Any], disordered: str) -> str | None:
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{disordered}".encode())
    for item in items:
        if item is None:
            digest.update(b"\0none")
        elif item[0] == "text":
            digest.update(f"\0{item[2]}\0".encode() + item[1].encode())
        elif item[0] == "dict":
            digest.update(b"\0dict" + json.dumps(item[1], sort_keys=True).encode())
        elif item[0] == "missing":
            digest.update(b"\0missing\0" + item[1].encode())
        elif item[0] == "file":
            stat = os.stat(item[1])
            digest.update(f"\0file\0{item[1]}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        else:
            return None  # ASE frames: cheap to parse, not cached
    return digest.hexdigest()[:32]


def _text(value: Any) -> str | None:
    """A string cell read back from the cache; a missing one is ``None`` (pandas may give NaN for it)."""
    return value if isinstance(value, str) else None


def parse_structures(items: list[Any], names: list[str], disordered: str = "error", n_jobs: int | None = None,
                     cache_dir: str | Path | None = None) -> list[ParsedStructure | None]:
    """Parse every non-``None`` item (in a process pool for many items); results keep the order.

    With ``cache_dir``, results are cached in ``<cache_dir>/structures/<hash of the inputs>.parquet``.
    """
    todo = [i for i, item in enumerate(items) if item is not None]
    results: list[ParsedStructure | None] = [None] * len(items)
    cache_path = None
    if cache_dir is not None and todo:
        key = _cache_key([items[i] for i in todo], disordered)
        if key is not None:
            cache_path = Path(cache_dir).expanduser() / "structures" / f"{key}.parquet"
            remove_stale_temps(cache_path.parent)  # files a killed process was writing
            if cache_path.is_file():
                try:
                    verify_checksum(cache_path)
                    cached = pd.read_parquet(cache_path)
                    if len(cached) == len(todo):
                        for i, row in zip(todo, cached.itertuples(index=False)):
                            results[i] = ParsedStructure(_text(row.structure), _text(row.formula),
                                                         int(row.n_sites), _text(row.error), _text(row.key))
                        return results
                except Exception as err:  # noqa: BLE001 - a damaged cache file is reparsed, and said so
                    warnings.warn(f"parsed-structure cache {cache_path} is damaged ({err}); parsing again",
                                  stacklevel=2)
    work = [items[i] for i in todo]
    work_names = [names[i] for i in todo]
    n_jobs = n_jobs or os.cpu_count() or 1
    if len(work) < SERIAL_BELOW or n_jobs == 1:
        parsed = _parse_chunk((work, work_names, disordered))
    else:
        size = max(16, min(512, len(work) // (n_jobs * 8) or 1))
        chunks = [(work[k:k + size], work_names[k:k + size], disordered) for k in range(0, len(work), size)]
        parsed = []
        with ProcessPoolExecutor(max_workers=n_jobs) as pool:
            for part in pool.map(_parse_chunk, chunks):
                parsed.extend(part)
    for i, result in zip(todo, parsed):
        results[i] = result
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(cache_path)
        pd.DataFrame({
            "structure": [p.structure for p in parsed], "formula": [p.formula for p in parsed],
            "n_sites": [p.n_sites for p in parsed], "error": [p.error for p in parsed],
            "key": [p.key for p in parsed],
        }).to_parquet(tmp)
        os.replace(tmp, cache_path)
        write_checksum(cache_path)
    return results


__all__ = ["ParsedStructure", "parse_structures", "structure_folder", "structure_inputs"]
