"""The aligned material table: one row per material, one column per task, structures and provenance.

Columns: ``material_id`` (str), ``formula`` (reduced), ``n_sites``, ``structure`` (pymatgen JSON string),
``structure_key`` (the graph-cache content key, :func:`tlgnn.graphs.structure_key`),
``structure_source`` (the source the structure came from), ``energy_per_atom`` (eV/atom, NaN if none given),
``ids`` (JSON ``{namespace: [ids]}``), one float64 column per task (NaN = missing; classification = class
index), and ``provenance`` (JSON ``{task: [source, row]}``; ``row`` is a list of rows where duplicates were
merged). Saved as ``aligned.parquet`` with the task list in the parquet metadata (key ``tlgnn.tasks``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tlgnn.data.tasks import TaskSpec

TABLE_FILE = "aligned.parquet"
META_KEY = b"tlgnn.tasks"
BASE_COLUMNS = ["material_id", "formula", "n_sites", "structure", "structure_key", "structure_source", "energy_per_atom", "ids"]


@dataclass
class MaterialTable:
    """An aligned table (``frame``) and its tasks (in column order)."""

    frame: pd.DataFrame
    tasks: list[TaskSpec]

    def __post_init__(self) -> None:
        missing = [c for c in ["material_id", "structure", "provenance"] + self.task_names if c not in self.frame]
        if missing:
            raise ValueError(f"aligned table lacks columns {missing}")
        if self.frame["material_id"].duplicated().any():
            dup = self.frame.loc[self.frame["material_id"].duplicated(), "material_id"].iloc[0]
            raise ValueError(f"aligned table: material_id {dup!r} appears twice")

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def labels(self, tasks: list[str] | None = None) -> np.ndarray:
        """Label matrix [N, T] float64 with NaN for missing labels."""
        names = tasks or self.task_names
        return self.frame[names].to_numpy(dtype=np.float64)

    def structure(self, i: int):
        """Row ``i``'s pymatgen ``Structure``."""
        from pymatgen.core import Structure

        return Structure.from_str(self.frame["structure"].iat[i], fmt="json")

    def provenance(self, i: int) -> dict:
        return json.loads(self.frame["provenance"].iat[i])

    def save(self, path: str | Path) -> Path:
        """Write ``aligned.parquet`` (``path`` is the file or its folder); returns the file path."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if path.suffix != ".parquet":
            path.mkdir(parents=True, exist_ok=True)
            path = path / TABLE_FILE
        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps([t.to_dict() for t in self.tasks]).encode()
        table = table.replace_schema_metadata(meta)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "MaterialTable":
        """Read an ``aligned.parquet`` (or the folder holding it)."""
        import pyarrow.parquet as pq

        path = Path(path).expanduser()
        if path.is_dir():
            path = path / TABLE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"aligned table not found: {path} (write one with `tlgnn align`)")
        table = pq.read_table(path)
        meta = (table.schema.metadata or {}).get(META_KEY)
        if meta is None:
            raise ValueError(f"{path}: no task metadata ({META_KEY.decode()}); not written by tlgnn align")
        tasks = [TaskSpec.from_dict(d) for d in json.loads(meta)]
        return cls(table.to_pandas(), tasks)


__all__ = ["BASE_COLUMNS", "MaterialTable", "TABLE_FILE"]
