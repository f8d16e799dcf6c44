"""Structures of a benchmark table's rows for the GNN model kinds, parsed once and cached on disk.

The benchmark reads its labels from a raw dataset folder or an aligned table (:mod:`tlgnn.benchmark.data`);
this module finds the matching structure of every row id, as pymatgen JSON plus its graph-cache key
(:func:`tlgnn.graphs.structure_key`), so that a :class:`tlgnn.data.MaterialTable` can be made for any subset of
rows and its graphs fetched from the shared :class:`tlgnn.graphs.GraphCache` without parsing again:

- ``aligned.parquet``: its ``structure`` and ``structure_key`` columns (keyed by ``material_id``);
- raw folder with ``structures.jsonl.gz`` (``{"material_id", "cif"}`` per line, the MP multi-fidelity set):
  CIFs parsed by :func:`tlgnn.data.structures.parse_structures` (the data layer's process pool);
- raw folder with ``structures.extxyz.gz`` (TinNet): the frames whose ``info["kind"]`` is ``frame_kind``
  (``OH``: slab + adsorbate), keyed by ``info["id"]``.

Parsed raw structures are cached under ``<cache_dir>/benchmark_structures/<file sha256[:16]>/`` as parquet parts
(``id, structure, structure_key``), each written atomically by one process, so parallel runs can share the cache
and only ever parse a structure once.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from pathlib import Path
from typing import Iterable

import pandas as pd

from tlgnn.benchmark.data import file_version

STRUCTURE_FILES = ("structures.jsonl.gz", "structures.extxyz.gz")


def _read_cache(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame({"id": [], "structure": [], "structure_key": []})
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return frame.drop_duplicates("id", keep="first")


def _write_part(folder: Path, frame: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, folder / name)


def _jsonl_structures(path: Path, wanted: set[str], n_jobs: int) -> pd.DataFrame:
    texts: list[tuple[str, str]] = []
    with gzip.open(path, "rt") as handle:
        for line_no, line in enumerate(handle, 1):
            record = json.loads(line)
            ident = str(record.get("material_id"))
            if ident in wanted:
                if "cif" not in record:
                    raise ValueError(f"{path}:{line_no}: record {ident!r} has no 'cif' field")
                texts.append((ident, record["cif"]))
    from tlgnn.data.structures import parse_structures

    names = [ident for ident, _ in texts]
    parsed = parse_structures([("text", cif, "cif") for _, cif in texts], names, n_jobs=n_jobs)
    failed = [p.error for p in parsed if p.error is not None]
    if failed:
        raise ValueError(f"{path}: {len(failed)} structure(s) could not be parsed, e.g. {failed[0]}")
    rows = [(ident, p.structure, p.key) for ident, p in zip(names, parsed)]
    return pd.DataFrame(rows, columns=["id", "structure", "structure_key"])


def _extxyz_structures(path: Path, wanted: set[str], frame_kind: str) -> pd.DataFrame:
    from ase.io import read

    from tlgnn.graphs import structure_key
    from tlgnn.io.formats import atoms_to_structure

    rows = []
    for atoms in read(str(path), index=":"):
        ident = str(atoms.info.get("id"))
        if atoms.info.get("kind") != frame_kind or ident not in wanted:
            continue
        structure = atoms_to_structure(atoms)
        rows.append((ident, structure.to_json(), structure_key(structure)))
    return pd.DataFrame(rows, columns=["id", "structure", "structure_key"])


def load_structures(data_path: str | Path, ids: Iterable[str], cache_dir: str | Path, *, frame_kind: str = "OH",
                    n_jobs: int = 2) -> pd.DataFrame:
    """``id, structure (pymatgen JSON), structure_key`` for every id in ``ids`` (index = id).

    Args:
        data_path: the table the benchmark read (a raw dataset folder or an ``aligned.parquet``).
        ids: row ids (``material_id``; TinNet ``id``).
        cache_dir: root of the on-disk cache of parsed raw structures.
        frame_kind: which extxyz frames hold the structures (``info["kind"]``).
        n_jobs: processes for parsing CIFs.

    Raises ``FileNotFoundError`` when no structure file is found and ``ValueError`` naming the ids that have
    no structure.
    """
    wanted = [str(i) for i in ids]
    where = Path(data_path)
    if where.suffix == ".parquet":
        table = pd.read_parquet(where, columns=["material_id", "structure", "structure_key"])
        found = table.rename(columns={"material_id": "id"}).set_index("id")
    else:
        source = next((where / name for name in STRUCTURE_FILES if (where / name).is_file()), None)
        if source is None:
            raise FileNotFoundError(f"{where}: no structure file ({' or '.join(STRUCTURE_FILES)})")
        version = file_version(source)["sha256"][:16]
        tag = f"{source.name.split('.')[0]}-{version}" + (f"-{frame_kind}" if source.name.endswith("extxyz.gz") else "")
        folder = Path(cache_dir).expanduser() / "benchmark_structures" / tag
        cached = _read_cache(folder)
        missing = set(wanted) - set(cached["id"])
        if missing:
            if source.name.endswith(".jsonl.gz"):
                new = _jsonl_structures(source, missing, n_jobs)
            else:
                new = _extxyz_structures(source, missing, frame_kind)
            if len(new):
                _write_part(folder, new)
                cached = pd.concat([cached, new], ignore_index=True)
        found = cached.set_index("id")
    absent = [i for i in wanted if i not in found.index]
    if absent:
        raise ValueError(f"{where}: {len(absent)} rows have no structure, e.g. {absent[:5]}")
    out = found.loc[wanted, ["structure", "structure_key"]]
    out.index.name = "id"
    return out


__all__ = ["STRUCTURE_FILES", "load_structures"]
