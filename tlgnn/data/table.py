"""The aligned material table: one row per material, one column per task, structures and provenance.

Columns: ``material_id`` (str), ``formula`` (reduced), ``n_sites``, ``structure`` (pymatgen JSON string),
``structure_key`` (the graph-cache content key, :func:`tlgnn.graphs.structure_key`),
``structure_source`` (the source the structure came from), ``energy_per_atom`` (eV/atom, NaN if none given),
``ids`` (JSON ``{namespace: [ids]}``), one float64 column per task (NaN = missing; classification = class
index), and ``provenance`` (JSON ``{task: [source, row]}``; ``row`` is a list of rows where duplicates were
merged). Saved as ``aligned.parquet`` with the task list in the parquet metadata (key ``tlgnn.tasks``).

The structures' JSON is most of a table's size (about 5 KB a crystal: gigabytes at a million rows) and is only
needed to build graphs the cache lacks. ``MaterialTable.load(path, structures="lazy")`` leaves it in the file:
:meth:`MaterialTable.structure_texts` then reads it a row group (:data:`ROW_GROUP_ROWS` rows) at a time.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tlgnn.data.tasks import TaskSpec
from tlgnn.utils.files import CorruptFileError, checksum_path, temp_path, verify_checksum, write_checksum

TABLE_FILE = "aligned.parquet"
META_KEY = b"tlgnn.tasks"
BASE_COLUMNS = ["material_id", "formula", "n_sites", "structure", "structure_key", "structure_source", "energy_per_atom", "ids"]
ROW_GROUP_ROWS = 4096  # rows per parquet row group: the unit a lazy table reads structures in


class UnverifiedTableWarning(UserWarning):
    """An aligned table loaded without its checksum file: damage to it cannot be detected."""


class ParquetColumn(Sequence):
    """Strings of one column of a parquet file, read a row group at a time (the last one is kept).

    ``rows``: the file row of each item (a table restricted to some rows keeps its file's rows). ``ids``: the
    ``material_id`` each item must have; checked on every read, so a file rewritten since the table was loaded
    raises instead of handing out another material's structure.
    """

    def __init__(self, path: Path, column: str, rows: np.ndarray, ids: Sequence[str] | None = None):
        import pyarrow.parquet as pq

        self.path, self.column, self.rows = Path(path), column, np.asarray(rows, dtype=np.int64)
        self.ids = ids
        metadata = pq.ParquetFile(self.path).metadata
        sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._group, self._values, self._ids = -1, [], []

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        row = int(self.rows[i])
        group = int(np.searchsorted(self._starts, row, side="right")) - 1
        if group != self._group:
            import pyarrow.parquet as pq

            columns = [self.column] + (["material_id"] if self.ids is not None else [])
            table = pq.ParquetFile(self.path).read_row_group(group, columns=columns)
            self._group, self._values = group, table.column(0).to_pylist()
            self._ids = table.column(1).to_pylist() if self.ids is not None else []
        at = row - int(self._starts[group])
        if self.ids is not None and self._ids[at] != self.ids[i]:
            raise RuntimeError(f"{self.path} changed since the table was loaded: its row {row} is now "
                               f"{self._ids[at]!r}, expected {self.ids[i]!r}; load the table again")
        return self._values[at]


@dataclass
class MaterialTable:
    """An aligned table (``frame``) and its tasks (in column order).

    ``structure_file``/``structure_rows``: set for a table loaded with ``structures="lazy"``: ``frame`` has no
    ``structure`` column; row ``i``'s JSON is row ``structure_rows[i]`` of that parquet file.
    """

    frame: pd.DataFrame
    tasks: list[TaskSpec]
    structure_file: Path | None = None
    structure_rows: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        required = ["material_id", "provenance"] + ([] if self.structure_file else ["structure"])
        missing = [c for c in required + self.task_names if c not in self.frame]
        if self.structure_file and self.structure_rows is None:
            self.structure_rows = np.arange(len(self.frame), dtype=np.int64)
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

    def structure_texts(self) -> Sequence[str]:
        """Every row's structure as pymatgen JSON: the column, or a view that reads it from the file."""
        if self.structure_file is None:
            return self.frame["structure"].tolist()
        return ParquetColumn(self.structure_file, "structure", self.structure_rows,
                             self.frame["material_id"].tolist())

    def structure(self, i: int):
        """Row ``i``'s pymatgen ``Structure``."""
        from pymatgen.core import Structure

        if self.structure_file is None:
            return Structure.from_str(self.frame["structure"].iat[i], fmt="json")
        column = ParquetColumn(self.structure_file, "structure", self.structure_rows[[i]],
                               [self.frame["material_id"].iat[i]])
        return Structure.from_str(column[0], fmt="json")

    def subset(self, rows: Sequence[int] | np.ndarray) -> "MaterialTable":
        """The table restricted to ``rows`` (positions, in that order); a lazy table stays lazy."""
        rows = np.asarray(rows, dtype=np.int64)
        frame = self.frame.iloc[rows].reset_index(drop=True)
        if self.structure_file is None:
            return MaterialTable(frame, self.tasks)
        return MaterialTable(frame, self.tasks, self.structure_file, self.structure_rows[rows])

    def provenance(self, i: int) -> dict:
        return json.loads(self.frame["provenance"].iat[i])

    def save(self, path: str | Path) -> Path:
        """Write ``aligned.parquet`` (``path`` is the file or its folder) atomically, with its checksum in
        ``aligned.parquet.xxh3``; returns the file path."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if path.suffix != ".parquet":
            path.mkdir(parents=True, exist_ok=True)
            path = path / TABLE_FILE
        frame = self.frame
        if self.structure_file is not None:  # a lazy table: bring the JSON back from its file
            frame = frame.copy()
            frame.insert(min(3, len(frame.columns)), "structure", list(self.structure_texts()))
        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[META_KEY] = json.dumps([t.to_dict() for t in self.tasks]).encode()
        table = table.replace_schema_metadata(meta)
        tmp = temp_path(path)
        try:
            pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        write_checksum(path)
        return path

    @classmethod
    def load(cls, path: str | Path, structures: str = "memory") -> "MaterialTable":
        """Read an ``aligned.parquet`` (or the folder holding it).

        ``structures``: ``"memory"`` reads the structures' JSON into ``frame``; ``"lazy"`` leaves it in the
        file (see the module docstring), for tables of many materials whose graphs are mostly cached.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if structures not in ("memory", "lazy"):
            raise ValueError(f"structures must be 'memory' or 'lazy', got {structures!r}")
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / TABLE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"aligned table not found: {path} (write one with `tlgnn align`)")
        if not verify_checksum(path):  # a damaged table must not train silently on wrong labels
            warnings.warn(f"{path}: no checksum file ({checksum_path(path).name}), so the table is unverified: damage "
                          "to it would go unnoticed; write it again with `tlgnn align` to get one",
                          UnverifiedTableWarning, stacklevel=2)
        try:
            schema = pq.read_schema(path)
            meta = (schema.metadata or {}).get(META_KEY)
            if meta is None:
                raise ValueError(f"{path}: no task metadata ({META_KEY.decode()}); not written by tlgnn align")
            tasks = [TaskSpec.from_dict(d) for d in json.loads(meta)]
            if structures == "lazy" and "structure" in schema.names:
                columns = [c for c in schema.names if c != "structure"]
                return cls(pq.read_table(path, columns=columns).to_pandas(), tasks, path)
            return cls(pq.read_table(path).to_pandas(), tasks)
        except (OSError, pa.ArrowException) as err:  # truncated or damaged parquet
            raise CorruptFileError(path, f"unreadable aligned table ({type(err).__name__}: {err})") from None


__all__ = ["BASE_COLUMNS", "MaterialTable", "ParquetColumn", "ROW_GROUP_ROWS", "TABLE_FILE", "UnverifiedTableWarning"]
