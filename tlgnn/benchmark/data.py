"""Load an experiment's table: the raw shared data (``labels.csv.gz`` + formula-matched files) or an aligned table.

Both give one pandas frame, one row per material, with the label columns, a formula column and a ``group``
column (the cross-validation group). The data version (file name, size, SHA-256, rows) is returned with it so
every result records which data it came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tlgnn.benchmark.config import BenchmarkData

#: Extra files of the raw multi-fidelity folder merged on ``material_id`` (their label columns only).
FORMULA_MATCHED = {
    "expt_gap_formula_matched.csv.gz": ["expt_gap"],
    "expt_is_metal_formula_matched.csv.gz": ["expt_is_metal"],
}


@dataclass
class BenchmarkTable:
    """An experiment's table.

    Attributes:
        frame: one row per material (index 0..n-1); columns include ``id``, ``formula`` and ``group``.
        files: data version of every file read: ``{name: {"sha256", "bytes", "rows"}}``.
        path: what was read.
    """

    frame: pd.DataFrame
    files: dict[str, dict]
    path: str


def file_version(path: Path, rows: int | None = None) -> dict:
    """``{"sha256", "bytes", "rows"}`` of a file (hashing reads it once)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size, "rows": rows}


def _reduced_formula(formulas: pd.Series) -> pd.Series:
    import warnings

    from pymatgen.core import Composition

    cache: dict[str, str] = {}

    def one(text: str) -> str:
        if text not in cache:
            try:
                with warnings.catch_warnings():  # "no electronegativity for He": irrelevant for the formula
                    warnings.simplefilter("ignore")
                    cache[text] = Composition(text).reduced_formula
            except Exception as err:
                raise ValueError(f"formula {text!r}: cannot be parsed ({err})") from err
        return cache[text]

    return formulas.astype(str).map(one)


def _formula_from_structure(text: str) -> str:
    """Cell formula from a pymatgen Structure JSON string without building the Structure (fast)."""
    data = json.loads(text)
    counts: dict[str, float] = {}
    for site in data["sites"]:
        for species in site["species"]:
            counts[species["element"]] = counts.get(species["element"], 0.0) + float(species.get("occu", 1.0))
    return " ".join(f"{el}{amount:g}" for el, amount in sorted(counts.items()))


def _read_raw(folder: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    labels = folder / "labels.csv.gz"
    frame = pd.read_csv(labels)
    files = {labels.name: file_version(labels, len(frame))}
    if "material_id" in frame.columns:
        for name, columns in FORMULA_MATCHED.items():
            extra_path = folder / name
            if not extra_path.is_file():
                continue
            extra = pd.read_csv(extra_path, usecols=["material_id", *columns])
            if extra["material_id"].duplicated().any():
                raise ValueError(f"{extra_path}: material_id is not unique")
            unknown = set(extra["material_id"]) - set(frame["material_id"])
            if unknown:
                raise ValueError(f"{extra_path}: {len(unknown)} material_id values are not in {labels.name}")
            frame = frame.merge(extra, on="material_id", how="left")
            files[name] = file_version(extra_path, len(extra))
    return frame, files


def _read_aligned(path: Path) -> tuple[pd.DataFrame, dict[str, dict]]:
    frame = pd.read_parquet(path)
    return frame, {path.name: file_version(path, len(frame))}


def load_table(spec: BenchmarkData, path: str | Path | None = None, repo_root: str | Path | None = None) -> BenchmarkTable:
    """Read the experiment table named by ``spec`` (or by ``path``, the ``--data`` override).

    ``path`` may be a raw dataset folder (``labels.csv.gz`` inside), an ``aligned.parquet`` or its folder.
    Relative paths are resolved against ``repo_root`` (default: the current directory).
    Raises ``FileNotFoundError``/``ValueError`` naming the path and the missing piece.
    """
    root = Path(repo_root) if repo_root is not None else Path.cwd()
    where = Path(path if path is not None else spec.path).expanduser()
    if not where.is_absolute():
        where = (root / where).resolve()
    if where.is_dir() and (where / "aligned.parquet").is_file():
        where = where / "aligned.parquet"
    if where.is_file() and where.suffix == ".parquet":
        frame, files = _read_aligned(where)
        missing = [task for task in spec.aligned_columns.values() if task not in frame.columns]
        if missing:
            raise ValueError(f"{where}: aligned task column(s) {missing} not found (columns: {', '.join(frame.columns)})")
        frame = frame.rename(columns={task: name for name, task in spec.aligned_columns.items()})
    elif where.is_dir() and (where / "labels.csv.gz").is_file():
        frame, files = _read_raw(where)
    else:
        raise FileNotFoundError(
            f"{where}: expected a dataset folder with labels.csv.gz, an aligned.parquet or a folder holding one"
        )
    if spec.id_column not in frame.columns:
        raise ValueError(f"{where}: id column {spec.id_column!r} missing (columns: {', '.join(frame.columns)})")
    if frame[spec.id_column].duplicated().any():
        raise ValueError(f"{where}: id column {spec.id_column!r} has duplicate values")
    if spec.formula_column in frame.columns:
        formula = frame[spec.formula_column].astype(str)
    elif "structure" in frame.columns:
        formula = frame["structure"].map(_formula_from_structure)
    else:
        raise ValueError(f"{where}: no formula column {spec.formula_column!r} and no 'structure' column to derive it")
    frame = frame.drop(columns=[c for c in ("structure",) if c in frame.columns])
    ids = frame[spec.id_column].astype(str)
    frame = frame.drop(columns=[c for c in ("id",) if c in frame.columns])
    frame.insert(0, "id", ids.values)
    frame["formula"] = formula.values
    if spec.group_by == "reduced_formula":
        frame["group"] = _reduced_formula(frame["formula"]).values
    elif spec.group_by in frame.columns:
        frame["group"] = frame[spec.group_by].astype(str).values
    else:
        raise ValueError(f"{where}: group_by column {spec.group_by!r} missing")
    return BenchmarkTable(frame.reset_index(drop=True), files, str(where))


def require_columns(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    """Raise ``ValueError`` naming the missing label columns and the available ones."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} not in the table (columns: {', '.join(frame.columns)})")


def labelled(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Boolean mask of rows whose ``column`` label is present."""
    return frame[column].notna().to_numpy()


__all__ = ["BenchmarkTable", "FORMULA_MATCHED", "file_version", "labelled", "load_table", "require_columns"]
