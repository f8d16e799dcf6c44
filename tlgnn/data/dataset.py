"""Datasets of graphs with label vectors and masks.

- :class:`MaterialDataset`: rows of an aligned :class:`MaterialTable` -> ``Data`` with ``y`` float32 [1, T]
  (0 where the label is missing), ``y_mask`` bool [1, T] (True = label present), ``idx`` long [1] (table row) and
  ``material_id`` (str). Batching concatenates to ``y`` [B, T], ``y_mask`` [B, T], ``idx`` [B];
  :meth:`MaterialDataset.batch` builds that batch straight from graph packs (see :mod:`tlgnn.data.loader`).
- :class:`StructureDataset`: new structures for prediction, same fields with ``y`` zeros and ``y_mask`` all False.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Batch

from tlgnn.data.table import MaterialTable
from tlgnn.data.tasks import TaskSpec, select_tasks
from tlgnn.graphs.packs import GraphStore


def label_arrays(table: MaterialTable, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y float32 [N, T] with 0 where missing, mask bool [N, T])`` for the named tasks of ``table``."""
    values = table.labels(tasks)
    mask = ~np.isnan(values)
    y = np.where(mask, values, 0.0).astype(np.float32)
    return torch.from_numpy(y), torch.from_numpy(mask)


class MaterialDataset(Dataset):
    """Graphs of an aligned table with their labels.

    Args:
        table: the aligned table.
        graphs: a sequence of ``Data`` aligned with the table rows (e.g. a :class:`tlgnn.graphs.GraphStore`), or a
            :class:`tlgnn.graphs.GraphCache` (graphs of all rows are fetched/built from it).
        tasks: task names (subset and order; default: all tasks of the table).
        rows: table rows this dataset serves (default: all), e.g. one split part.
    """

    def __init__(self, table: MaterialTable, graphs: Any, tasks: list[str] | None = None,
                 rows: Sequence[int] | np.ndarray | None = None):
        self.table = table
        self.tasks: list[TaskSpec] = select_tasks(table.tasks, tasks)
        if hasattr(graphs, "get_many"):
            from tlgnn.data.graphs import LazyStructures

            keys = table.frame["structure_key"].tolist() if "structure_key" in table.frame else None
            graphs = graphs.get_many(LazyStructures(table.structure_texts()), keys=keys)
        if len(graphs) != len(table):
            raise ValueError(f"{len(graphs)} graphs for a table of {len(table)} rows")
        self.graphs = graphs
        self.rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.y, self.y_mask = label_arrays(table, [t.name for t in self.tasks])
        self.material_ids = table.frame["material_id"].tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        data = copy.copy(self.graphs[row])  # never mutate a graph held by the caller
        data.y = self.y[row].unsqueeze(0).clone()
        data.y_mask = self.y_mask[row].unsqueeze(0).clone()
        data.idx = torch.tensor([row], dtype=torch.long)
        data.material_id = self.material_ids[row]
        return data

    def batch(self, positions: Sequence[int] | np.ndarray) -> Batch:
        """Items ``positions`` as one ``Batch``, equal to ``Batch.from_data_list([self[i] for i in positions])``.

        Graphs in packs (a :class:`tlgnn.graphs.GraphStore`) are gathered for the whole batch at once with
        array indexing (no per-graph ``Data``); any other sequence of graphs is collated item by item.
        """
        if not isinstance(self.graphs, GraphStore):
            return Batch.from_data_list([self[int(i)] for i in np.asarray(positions).reshape(-1)])
        rows = self.rows[np.asarray(positions, dtype=np.int64).reshape(-1)]
        index = torch.from_numpy(rows)
        return self.graphs.batch(rows, y=self.y[index], y_mask=self.y_mask[index], idx=index.clone(),
                                 material_id=[self.material_ids[r] for r in rows.tolist()])

    def subset(self, rows: Sequence[int] | np.ndarray) -> "MaterialDataset":
        """The same dataset restricted to table ``rows`` (shares graphs and labels)."""
        other = copy.copy(self)  # a shallow copy: the arrays are shared
        other.rows = np.asarray(rows, dtype=np.int64)
        return other


class StructureDataset(Dataset):
    """Structures without labels, for prediction.

    Args:
        records: ``StructureRecord``s (``.id``, ``.structure``), ``(id, Structure)`` pairs, or ``Structure``s
            (ids ``structure_<i>``).
        builder: a :class:`tlgnn.graphs.CrystalGraphBuilder` (graphs built now) or a ``GraphCache`` (cached).
        tasks: the model's tasks; ``y`` is zeros [1, T] and ``y_mask`` all False with ``T = len(tasks)``.
    """

    def __init__(self, records: Sequence[Any], builder: Any, tasks: Sequence[TaskSpec | str] | None = None):
        self.ids: list[str] = []
        structures = []
        for i, rec in enumerate(records):
            if hasattr(rec, "structure"):
                self.ids.append(str(rec.id))
                structures.append(rec.structure)
            elif isinstance(rec, tuple) and len(rec) == 2:
                self.ids.append(str(rec[0]))
                structures.append(rec[1])
            else:
                self.ids.append(f"structure_{i}")
                structures.append(rec)
        self.n_tasks = len(tasks) if tasks is not None else 0
        if hasattr(builder, "get_many"):
            self.graphs = builder.get_many(structures)
        elif hasattr(builder, "build_many"):  # one batch build; the first failing structure raises, named
            self.graphs = [g.to_data() for g in builder.build_many(structures, names=self.ids)]
        else:
            self.graphs = [builder(s) for s in structures]

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int):
        data = copy.copy(self.graphs[i])
        data.y = torch.zeros((1, self.n_tasks), dtype=torch.float32)
        data.y_mask = torch.zeros((1, self.n_tasks), dtype=torch.bool)
        data.idx = torch.tensor([i], dtype=torch.long)
        data.material_id = self.ids[i]
        data.id = self.ids[i]
        return data


__all__ = ["MaterialDataset", "StructureDataset", "label_arrays"]
