"""Batch reading: ``read_structures`` over files, folders, globs and in-memory objects, with a process pool."""

from __future__ import annotations

import glob as globlib
import itertools
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pymatgen.core import Structure

from tlgnn.io.errors import DisorderedStructureDropped, StructureReadError
from tlgnn.io.files import read_file, skip_reason, split_name
from tlgnn.io.formats import atoms_to_structure
from tlgnn.io.validate import DISORDER_POLICIES, DisorderPolicy, check_structure

SERIAL_BELOW = 64
"""Fewer files than this are read in the calling process (a pool's start-up would cost more than it saves)."""
PROGRESS_ABOVE = 200
"""With ``progress=None`` a bar is shown for more files than this, when stderr is a terminal."""
_GLOB_CHARS = set("*?[")


@dataclass
class StructureRecord:
    """One validated structure. ``id``: the file's path below the folder or glob root it was found from, without
    extension (``x`` for ``cifs/x.cif`` read as ``cifs/`` or ``cifs/*.cif``, ``a/CONTCAR`` for ``*/CONTCAR``; the
    stem for a file named directly), ``<that>/<block|frame|item>`` for files holding several,
    ``structure_<i>`` (or the object's own id/name) for in-memory input. ``path``: source file or ``None``."""

    id: str
    structure: Structure
    path: str | None


@dataclass
class ReadResult:
    """What ``read_structures`` found: ``records`` (input order), ``failures`` and ``skipped`` (location, reason)."""

    records: list[StructureRecord] = field(default_factory=list)
    failures: list[StructureReadError] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __iter__(self) -> Iterator[StructureRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> StructureRecord:
        return self.records[index]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def structures(self) -> list[Structure]:
        return [r.structure for r in self.records]

    def report(self) -> str:
        """Human-readable summary: counts, then every failure and skipped entry with its reason."""
        lines = [f"read {len(self.records)} structures; {len(self.failures)} failed; {len(self.skipped)} skipped"]
        if self.failures:
            lines.append("failures:")
            lines += [f"  {err}" for err in self.failures]
        if self.skipped:
            lines.append("skipped:")
            lines += [f"  {where}: {why}" for where, why in self.skipped]
        return "\n".join(lines)


@dataclass
class _FileTask:
    path: str
    base_id: str


@dataclass
class _Outcome:
    records: list[StructureRecord] = field(default_factory=list)
    failures: list[StructureReadError] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_structures(
    source: Any,
    on_error: Literal["raise", "skip"] = "raise",
    disordered: DisorderPolicy = "error",
    n_jobs: int | None = None,
    progress: bool | None = None,
    recursive: bool = False,
) -> ReadResult:
    """Read and validate crystal structures.

    Args:
        source: a file, a directory (its structure files; hidden files such as macOS ``._*`` junk and files with
            unrecognised extensions are listed under ``skipped``), a glob string, a pymatgen ``Structure``, an ASE
            ``Atoms``, an earlier ``ReadResult``/``StructureRecord``, or a list mixing any of these. Formats: CIF (all data blocks), POSCAR/CONTCAR/``*.vasp``,
            extxyz (all frames), pymatgen JSON (dict, list, JSON Lines), their ``.gz``/``.bz2``/``.xz`` variants,
            and anything else ASE reads.
        on_error: ``"raise"`` raises the first ``StructureReadError`` (input order); ``"skip"`` collects failures in
            ``ReadResult.failures`` and returns everything that could be read.
        disordered: partial-occupancy policy (``"error"``, ``"order"``, ``"drop"``), see ``check_structure``.
            Dropped structures are listed under ``skipped``.
        n_jobs: worker processes for files (``None``: all cores). Fewer than 64 files are read serially.
        progress: show a tqdm bar; ``None``: when stderr is a terminal and there are more than 200 files.
        recursive: also list sub-directories of directory sources (ids then carry the relative folder).

    Returns:
        ``ReadResult``; records keep input order (directory and glob contents sorted by path).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if disordered not in DISORDER_POLICIES:
        raise ValueError(f"disordered must be one of {DISORDER_POLICIES}, got {disordered!r}")
    result = ReadResult()
    items: list[_FileTask | _Outcome] = []
    _expand(source, items, result.skipped, recursive, None, disordered)
    tasks = [t for t in items if isinstance(t, _FileTask)]
    outcomes = iter(_read_tasks(tasks, disordered, n_jobs, progress, stop_on_error=on_error == "raise"))
    seen: dict[str, str] = {}
    for item in items:
        outcome = item if isinstance(item, _Outcome) else next(outcomes)
        if on_error == "raise" and outcome.failures:
            raise outcome.failures[0]
        for rec in outcome.records:
            if rec.id in seen:
                err = StructureReadError(rec.path, f"duplicate id {rec.id!r} (already read from {seen[rec.id]})")
                if on_error == "raise":
                    raise err
                result.failures.append(err)
                continue
            seen[rec.id] = rec.path or rec.id
            result.records.append(rec)
        result.failures += outcome.failures
        result.skipped += outcome.skipped
    return result


# --------------------------------------------------------------------------------------------------- expansion
def _expand(source: Any, items: list, skipped: list, recursive: bool, index: int | None,
            disordered: DisorderPolicy) -> None:
    if isinstance(source, ReadResult):
        source = source.records
    if isinstance(source, (list, tuple)):
        for i, item in enumerate(source):
            _expand(item, items, skipped, recursive, i, disordered)
        return
    if isinstance(source, StructureRecord):  # already read and validated: keep its id and path
        items.append(_Outcome(records=[source]))
        return
    if isinstance(source, (str, os.PathLike)):
        _expand_path(str(source), items, skipped, recursive)
        return
    items.append(_read_object(source, index, disordered))


def _expand_path(text: str, items: list, skipped: list, recursive: bool) -> None:
    path = Path(text)
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        for child in sorted(path.glob(pattern)):
            rel = child.relative_to(path)
            if any(part.startswith(".") for part in rel.parts[:-1]):
                continue  # inside a hidden folder (.git, .ipynb_checkpoints)
            if child.is_dir():
                if not recursive and not child.name.startswith("."):
                    skipped.append((str(child), "sub-folder not read: pass recursive=True (tlgnn predict "
                                                "--recursive) to read sub-folders"))
                continue
            reason = skip_reason(child)
            if reason:
                skipped.append((str(child), reason))
                continue
            items.append(_FileTask(str(child), _relative_id(rel)))
        return
    if path.exists() or not (_GLOB_CHARS & set(text)):
        items.append(_FileTask(text, split_name(path)[0]))  # missing files fail in read_file
        return
    matches = sorted(globlib.glob(text, recursive=True))
    if not matches:
        items.append(_Outcome(failures=[StructureReadError(text, "unreadable: no files match this glob pattern")]))
    root = _glob_root(text)
    for match in matches:
        child = Path(match)
        if child.is_dir():
            _expand_path(match, items, skipped, recursive)
        elif child.name.startswith("."):
            skipped.append((match, skip_reason(child) or "hidden file"))
        else:
            try:
                rel = child.relative_to(root)
            except ValueError:  # a pattern glob could not split; the file name alone is the id
                rel = Path(child.name)
            items.append(_FileTask(match, _relative_id(rel)))


def _relative_id(rel: Path) -> str:
    """Id of a file found under a folder or glob root: its relative path without the extension(s), so that
    ``a/CONTCAR`` and ``b/CONTCAR`` stay apart and ``x.cif`` at the root is just ``x``."""
    stem = split_name(rel)[0]
    return stem if rel.parent == Path(".") else (rel.parent / stem).as_posix()


def _glob_root(pattern: str) -> Path:
    """The folder a glob pattern starts from: its leading path components without wildcards."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not (_GLOB_CHARS & set(part)), parts[:-1]))
    return Path(*fixed) if fixed else Path(".")


def _read_object(obj: Any, index: int | None, disordered: DisorderPolicy) -> _Outcome:
    """An in-memory Structure / Atoms / Molecule, validated here."""
    from ase import Atoms
    from pymatgen.core import Molecule

    name = _object_id(obj, index)
    try:
        if isinstance(obj, Structure):
            structure = obj
        elif isinstance(obj, Atoms):  # subclasses too (pymatgen's MSONAtoms)
            structure = atoms_to_structure(obj)
        elif isinstance(obj, Molecule):
            structure = obj  # check_structure names it as not periodic
        else:
            raise StructureReadError(None, f"unsupported source type {type(obj).__name__}: give a path, glob, "
                                     "pymatgen Structure, ASE Atoms or a list of them")
        return _Outcome(records=[StructureRecord(name, check_structure(structure, None, disordered), None)])
    except DisorderedStructureDropped as exc:
        return _Outcome(skipped=[(name, exc.reason)])
    except StructureReadError as exc:
        return _Outcome(failures=[exc.at(None, name)])


def _object_id(obj: Any, index: int | None) -> str:
    meta = getattr(obj, "info", None) if hasattr(obj, "cell") else getattr(obj, "properties", None)
    if isinstance(meta, dict):
        for key in ("id", "material_id", "name"):
            if isinstance(meta.get(key), (str, int)):
                return str(meta[key])
    return f"structure_{index or 0}"


# ------------------------------------------------------------------------------------------------- file reading
def _read_one(task: _FileTask, disordered: DisorderPolicy) -> _Outcome:
    """Read, validate and label every structure of one file (runs in worker processes)."""
    out = _Outcome()
    try:
        entries = read_file(task.path)
    except StructureReadError as exc:
        out.failures.append(exc.at(task.path))
        return out
    for entry in entries:
        where = task.path if entry.key is None else f"{task.path}[{entry.key}]"
        rec_id = task.base_id if entry.key is None else f"{task.base_id}/{entry.key}"
        if entry.skip_reason is not None:
            out.skipped.append((where, entry.skip_reason))
            continue
        if entry.error is not None:
            out.failures.append(entry.error.at(task.path, entry.key))
            continue
        try:
            out.records.append(StructureRecord(rec_id, check_structure(entry.structure, None, disordered), task.path))
        except DisorderedStructureDropped as exc:
            out.skipped.append((where, exc.reason))
        except StructureReadError as exc:
            out.failures.append(exc.at(task.path, entry.key))
    return out


def _read_chunk(tasks: list[_FileTask], disordered: DisorderPolicy) -> list[_Outcome]:
    return [_read_one(t, disordered) for t in tasks]


def _read_tasks(tasks: list[_FileTask], disordered: DisorderPolicy, n_jobs: int | None, progress: bool | None,
                stop_on_error: bool) -> Iterator[_Outcome]:
    from tqdm.auto import tqdm

    n_jobs = (os.cpu_count() or 1) if n_jobs is None or n_jobs < 1 else n_jobs
    show = (sys.stderr.isatty() and len(tasks) > PROGRESS_ABOVE) if progress is None else bool(progress)
    bar = tqdm(total=len(tasks), unit="file", desc="reading structures", disable=not show, file=sys.stderr)
    try:
        if n_jobs == 1 or len(tasks) < SERIAL_BELOW:
            for task in tasks:
                outcome = _read_one(task, disordered)
                bar.update(1)
                yield outcome
                if stop_on_error and outcome.failures:
                    return
            return
        size = max(1, min(64, -(-len(tasks) // (n_jobs * 4))))
        chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        results: list[list[_Outcome] | None] = [None] * len(chunks)
        with ProcessPoolExecutor(max_workers=min(n_jobs, len(chunks))) as pool:
            futures = {pool.submit(_read_chunk, chunk, disordered): i for i, chunk in enumerate(chunks)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(len(chunks[futures[future]]))
        for chunk_outcomes in results:
            yield from chunk_outcomes
    finally:
        bar.close()
