"""The source table: one loaded, validated label source (rows, ids, converted labels, formulas, energies,
links and what to parse for its structures). Built by :func:`tlgnn.data.sources.load_source`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlgnn.data.source_config import SourceSpec
from tlgnn.data.tasks import TaskSpec


@dataclass
class SourceTable:
    """A loaded, validated source: one entry per row, labels converted, structures not yet parsed.

    Attributes:
        spec: the declaration.
        tasks: its tasks.
        ids: record id per row (the row number as text when the source has no id column).
        labels: ``{task: float64 array}`` (NaN = missing; classification = class index).
        formulas: reduced formula per row (``None`` where unknown until the structure is parsed).
        energies: energy per atom (eV/atom) per row, NaN where missing / not declared.
        links: ``[(namespace, id), ...]`` per row from ``links`` columns.
        structure_inputs: per row, what to parse (``(text, fmt)``, a file path, or a ready ``Structure``) or
            ``None`` when the row has no structure.
        base_dir: folder the source's relative paths were resolved against.
        notes: sentences for the report (how the file was read, rows without a structure...).
        out_of_range: labels left out for lying outside their task's valid range: ``{task, row, id, value,
            valid}`` each.
    """

    spec: SourceSpec
    tasks: list[TaskSpec]
    ids: list[str]
    labels: dict[str, np.ndarray]
    formulas: list[str | None]
    energies: np.ndarray
    links: list[list[tuple[str, str]]]
    structure_inputs: list[Any] | None
    base_dir: Path
    notes: list[str] = field(default_factory=list)
    out_of_range: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_structures(self) -> bool:
        return self.structure_inputs is not None


__all__ = ["SourceTable"]
