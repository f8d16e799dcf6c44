"""Label sources: a declared source (:class:`SourceSpec`) read and validated into a :class:`SourceTable`.

Everything that can be checked without parsing structures is checked by :func:`load_source` (missing files and
columns, non-numeric labels, unknown classes, unparsable formulas, unknown keys): errors are
:class:`SourceError` naming the source, the field and the row.

Row numbers (``row``) are 0-based positions of data rows in the source table as read (header excluded; for a
JSON-lines file the line number; for a nested mapping the position of an id in order of first appearance).

The YAML schema is :mod:`tlgnn.data.source_config`, table reading :mod:`tlgnn.data.readers`, the table type
:mod:`tlgnn.data.source_table`; their public names are importable from here as before.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlgnn.data.errors import SourceError
from tlgnn.data.readers import MISSING_TEXT, id_text, infer_format, is_missing, read_nested, read_table, require_columns
from tlgnn.data.source_config import (
    AlignmentConfig, CompareSpec, LabelSpec, MatcherName, SourceSpec, StructureKind, StructureMatcherConfig,
    StructureSpec, TableFormat, load_source_config,
)
from tlgnn.data.source_table import SourceTable
from tlgnn.data.structures import structure_inputs
from tlgnn.data.tasks import TaskSpec
from tlgnn.utils.config import resolve_path


def convert_labels(values: pd.Series, task: TaskSpec, source: str, field_name: str,
                   ids: list[str]) -> np.ndarray:
    """Label values as float64 (NaN = missing; classification: the class index). Errors name the row."""
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values.tolist()):
        if is_missing(value):
            continue
        if task.kind == "classification":
            try:
                out[i] = task.class_index(value.strip() if isinstance(value, str) else value)
            except KeyError:
                raise SourceError(source, field_name, f"unknown class {value!r} (classes: {task.classes})",
                                  row=_row_label(i, ids)) from None
            continue
        if isinstance(value, bool):
            raise SourceError(source, field_name, f"non-numeric label {value!r}", row=_row_label(i, ids))
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise SourceError(source, field_name, f"non-numeric label {value!r}", row=_row_label(i, ids)) from None
        if not math.isfinite(number):
            raise SourceError(source, field_name, f"non-finite label {value!r}", row=_row_label(i, ids))
        out[i] = number
    return out


def _row_label(i: int, ids: list[str]) -> str:
    return f"{i} (id {ids[i]!r})" if ids and ids[i] != str(i) else str(i)


def reduced_formula(formula: str) -> str:
    """pymatgen reduced formula of a formula string (``"Ag(AuS)2"`` -> ``"Ag(AuS)2"``; ``"Fe4O6"`` -> ``"Fe2O3"``;
    non-integer amounts as whole numbers: ``"TbO1.5"`` -> ``"Tb2O3"``, ``"Cu1.8S"`` -> ``"Cu9S5"``)."""
    from pymatgen.core import Composition, Element

    comp = Composition(formula)
    if comp.num_atoms <= 0:
        raise ValueError("empty composition")
    unknown = [str(el) for el in comp.elements if not isinstance(el, Element)]
    if unknown:
        raise ValueError(f"unknown element symbol(s) {unknown}")
    if any(abs(amount - round(amount)) > 1e-6 for amount in comp.values()):
        # TbO1.5 is Tb2O3 and Sr0.5TaO3 is SrTa2O6, as the structures' formulas are written
        comp = Composition(comp.get_integer_formula_and_factor(max_denominator=10)[0])
    return comp.reduced_formula


def load_source(spec: SourceSpec, base_dir: str | Path) -> SourceTable:
    """Read and validate one source (no structure is parsed here; see :mod:`tlgnn.data.structures`).

    Labels outside their task's valid range (:meth:`TaskSpec.physical_range`) are dropped and listed in
    ``SourceTable.out_of_range`` or, with ``out_of_range: error``, refused."""
    base = Path(base_dir)
    path = resolve_path(spec.path, base, normalize=False)
    tasks = spec.task_specs()
    notes: list[str] = []
    frame, ids = _read_rows(spec, path, notes)
    labels = {}
    out_of_range: list[dict[str, Any]] = []
    for (key, _), task in zip(spec.labels.items(), tasks):
        labels[task.name] = convert_labels(frame[key], task, spec.name, f"labels.{key}", ids)
        out_of_range += check_range(labels[task.name], task, spec, f"labels.{key}", ids)
    energies = np.full(len(frame), np.nan)
    if spec.energy_column:
        task = TaskSpec(name=spec.energy_column)
        energies = convert_labels(frame[spec.energy_column], task, spec.name, "energy_column", ids)
    links: list[list[tuple[str, str]]] = [[] for _ in range(len(frame))]
    for col, namespace in spec.links.items():
        for i, value in enumerate(frame[col].tolist()):
            ident = id_text(value)
            if ident is not None:
                links[i].append((namespace, ident))
    inputs = None
    if spec.structure is not None:
        inputs, more = structure_inputs(spec, frame, ids, base)
        notes += more
    return SourceTable(spec, tasks, ids, labels, _formulas(spec, frame, ids), energies, links, inputs, base, notes,
                       out_of_range)


def _read_rows(spec: SourceSpec, path: Path, notes: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The source's table (every needed column checked) and the id of each row."""
    if spec.layout == "nested":
        frame, _ = read_nested(path, list(spec.labels), spec.name)
        ids = frame["id"].tolist()
    else:
        frame = read_table(path, spec.format, spec.name, columns=spec.columns, header=spec.header, notes=notes)
        needed = [c for c in (spec.id_column, spec.formula_column, spec.energy_column, *spec.links) if c]
        needed += list(spec.labels)
        if spec.structure is not None and spec.structure.kind in ("inline", "files"):
            needed.append(spec.structure.column)  # type: ignore[arg-type]
        for col in needed:
            field_name = f"labels.{col}" if col in spec.labels else _field_of(spec, col)
            require_columns(frame, [col], spec.name, field_name, path)
        if spec.id_column:
            ids = [id_text(v) for v in frame[spec.id_column].tolist()]
            for i, ident in enumerate(ids):
                if ident is None:
                    raise SourceError(spec.name, "id_column", f"empty id in column {spec.id_column!r}", row=i)
        else:
            ids = [str(i) for i in range(len(frame))]
    if len(frame) == 0:
        raise SourceError(spec.name, "path", f"{path.name} holds no rows")
    return frame, ids


def _formulas(spec: SourceSpec, frame: pd.DataFrame, ids: list[str]) -> list[str | None]:
    """Reduced formula per row from ``formula_column`` (``None`` everywhere without one)."""
    formulas: list[str | None] = [None] * len(frame)
    if spec.formula_column:
        for i, text in enumerate(frame[spec.formula_column].tolist()):
            if is_missing(text):
                raise SourceError(spec.name, "formula_column", "empty formula", row=_row_label(i, ids))
            try:
                formulas[i] = reduced_formula(str(text).strip())
            except Exception as err:  # noqa: BLE001
                raise SourceError(spec.name, "formula_column", f"unparsable formula {text!r}: {err}",
                                  row=_row_label(i, ids)) from None
    return formulas


def range_text(low: float, high: float, unit: str | None) -> str:
    """``">= 0 eV"``, ``"<= 5"``, ``"in [0, 10] eV"``."""
    unit = f" {unit}" if unit else ""
    if math.isinf(high):
        return f">= {low:g}{unit}"
    if math.isinf(low):
        return f"<= {high:g}{unit}"
    return f"in [{low:g}, {high:g}]{unit}"


def check_range(values: np.ndarray, task: TaskSpec, spec: SourceSpec, field_name: str,
                ids: list[str]) -> list[dict[str, Any]]:
    """Labels of ``task`` outside its physical range: set to NaN in ``values`` and returned as
    ``{task, row, id, value, valid}`` records (policy ``drop``), or a :class:`SourceError` (policy ``error``)."""
    rng = task.physical_range()
    if rng is None:
        return []
    low, high = rng
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero((values < low) | (values > high))
    valid = range_text(low, high, task.unit)
    if len(bad) and spec.out_of_range == "error":
        i = int(bad[0])
        raise SourceError(spec.name, field_name, f"{values[i]:g} is outside the valid range of task {task.name!r} "
                          f"({valid}; {len(bad)} such values); fix the values, or set out_of_range: drop to leave "
                          "them out", row=_row_label(i, ids))
    out = [{"task": task.name, "row": int(i), "id": ids[i], "value": float(values[i]), "valid": valid} for i in bad]
    values[bad] = np.nan
    return out


def _field_of(spec: SourceSpec, col: str) -> str:
    for name in ("id_column", "formula_column", "energy_column"):
        if getattr(spec, name) == col:
            return name
    if col in spec.links:
        return f"links.{col}"
    return "structure.column"


def load_sources(config: AlignmentConfig, base_dir: str | Path) -> list[SourceTable]:
    """Load and validate every source of ``config`` (all cheap checks happen before any structure parsing)."""
    return [load_source(spec, base_dir) for spec in config.sources]


__all__ = [
    "AlignmentConfig", "CompareSpec", "LabelSpec", "MISSING_TEXT", "MatcherName", "SourceError", "SourceSpec",
    "SourceTable", "StructureKind", "StructureSpec", "StructureMatcherConfig", "TableFormat", "check_range",
    "convert_labels", "id_text", "infer_format", "is_missing", "load_source", "load_source_config", "load_sources",
    "range_text", "read_nested", "read_table", "reduced_formula", "require_columns",
]
