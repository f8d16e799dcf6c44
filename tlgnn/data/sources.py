"""Label sources declared in YAML, loaded and validated into :class:`SourceTable` objects.

A source config (``configs/data/NAME.yaml``) looks like::

    root: ../../data/mp_sample            # base folder of relative source paths (relative to this YAML)
    matchers: [id, structure, composition]
    polymorph_policy: lowest_energy       # or: skip, all
    sources:
      - name: mp                          # structures + labels, keyed by material_id
        path: labels.csv.gz
        id_column: material_id
        namespace: mp                     # ids of this source live in the "mp" id space
        energy_column: formation_energy_per_atom   # eV/atom, used by polymorph_policy=lowest_energy
        structure: {kind: table, path: structures.jsonl.gz, id_column: material_id, column: cif, format: cif}
        labels:
          band_gap_pbe: {task: gap_pbe_mp, unit: eV, fidelity: pbe}
      - name: megnet
        path: sources/megnet_multifidelity_gaps.json.gz
        layout: nested                    # {key: {id: value}}
        namespace: mp
        labels:
          hse: {task: gap_hse, unit: eV, fidelity: hse}
      - name: expt_is_metal
        path: sources/matbench_expt_is_metal.csv
        formula_column: formula          # no id, no structure: aligned by composition
        labels:
          target: {task: is_metal_exp, kind: classification, classes: [0, 1]}

Everything that can be checked without parsing structures is checked by :func:`load_source` (missing files and
columns, non-numeric labels, unknown classes, unparsable formulas, unknown keys): errors are
:class:`SourceError` naming the source, the field and the row.

Row numbers (``row``) are 0-based positions of data rows in the source table as read (header excluded; for a
JSON-lines file the line number; for a nested mapping the position of an id in order of first appearance).
"""

from __future__ import annotations

import difflib
import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tlgnn.data.tasks import TaskSpec
from tlgnn.errors import DataError
from tlgnn.utils.config import (ConfigError, apply_overrides, from_dict, load_yaml, parse_overrides,
                                resolve_path)

TableFormat = Literal["csv", "json", "jsonl", "parquet"]
StructureKind = Literal["inline", "table", "files", "frames"]
MatcherName = Literal["id", "structure", "composition"]
MISSING_TEXT = {"", "nan", "NaN", "NA", "N/A", "null", "None", "none"}


class SourceError(DataError, ValueError):
    """A problem with a source's declaration or contents: names the source, the field and the row (if any)."""

    def __init__(self, source: str, field: str | None, reason: str, row: int | str | None = None):
        self.source, self.field, self.reason, self.row = source, field, reason, row
        where = f"source {source!r}"
        if field:
            where += f", field {field!r}"
        if row is not None:
            where += f", row {row}"
        super().__init__(f"{where}: {reason}")


@dataclass
class LabelSpec:
    """How one label column (or nested key) becomes a task.

    Attributes:
        task: task name (default: the column name); must be unique across all sources.
        kind: ``regression`` or ``classification``.
        unit: physical unit of a regression label.
        fidelity: optional fidelity name (``pbe``, ``hse``, ``exp`` ...).
        classes: class labels of a classification task (values outside them are an error).
        tolerance: duplicates/cross-source values differing by more than this are listed as conflicts
            (default: the source's ``tolerance``).
    """

    task: str | None = None
    kind: Literal["regression", "classification"] = "regression"
    unit: str | None = None
    fidelity: str | None = None
    classes: list[Any] | None = None
    tolerance: float | None = None


@dataclass
class StructureSpec:
    """Where a source's structures come from.

    Attributes:
        kind: ``inline`` (a column of the source table holds CIF text or a pymatgen dict/JSON);
            ``table`` (another table keyed by id holds them, e.g. JSON lines ``{"material_id", "cif"}``);
            ``files`` (a column holds file names under ``dir``); ``frames`` (a multi-frame extxyz/ASE file whose
            frames carry the id in ``info[id_column]``, filtered by ``select``).
        column: the structure column (inline/table) or the file-name column (files).
        format: text format of inline/table structures: ``cif``, ``json`` (pymatgen dict), ``poscar``, ``extxyz``.
        path: the structure table (table) or frame file (frames), relative to the source's folder.
        id_column: key column of the structure table / info key of frames (default: the source's id column).
        dir: folder of the structure files (files); default: the source table's folder.
        select: frames only: keep frames whose ``info`` has these values (e.g. ``{kind: OH}``).
        disordered: partial-occupancy policy passed to :mod:`tlgnn.io` (``error``, ``order``, ``drop``).
    """

    kind: StructureKind
    column: str | None = None
    format: Literal["cif", "json", "poscar", "extxyz"] = "cif"
    path: str | None = None
    id_column: str | None = None
    dir: str | None = None
    select: dict[str, Any] | None = None
    disordered: Literal["error", "order", "drop"] = "error"

    def validate(self) -> None:
        if self.kind in ("inline", "table", "files") and not self.column:
            raise ConfigError("column", f"structure kind {self.kind!r} needs 'column'")
        if self.kind in ("table", "frames") and not self.path:
            raise ConfigError("path", f"structure kind {self.kind!r} needs 'path'")
        if self.select is not None and self.kind != "frames":
            raise ConfigError("select", "only applies to structure kind 'frames'")


@dataclass
class SourceSpec:
    """One label source.

    Attributes:
        name: unique source name (used in provenance and the report).
        path: the table (CSV, JSON list of records, JSON lines, parquet; ``.gz`` accepted), or for
            ``layout: nested`` a JSON mapping ``{key: {id: value}}``.
        format: table format; inferred from the file name when left out.
        layout: ``table`` (a row per record) or ``nested`` (``{key: {id: value}}``; label keys are the ``key``s).
        columns: read only these columns (all must exist); default: all. With ``header: false``: the names of
            the file's columns, in order.
        header: the CSV's first row names its columns (default). ``false`` for a headerless CSV such as CGCNN's
            ``id_prop.csv`` (``id,target`` rows); ``columns`` then names them.
        id_column: column holding the record id; ``None``: records are identified by their row.
        namespace: id space of this source's ids (default: the source name). Sources whose ids are in the
            same namespace are matched by id.
        links: ``{column: namespace}``: columns holding ids of other sources (e.g. ``{mp_id: mp}``).
        formula_column: column holding a chemical formula (for composition matching of sources without
            structures).
        energy_column: column with an energy per atom (eV/atom) used by the ``lowest_energy`` polymorph policy.
        structure: where structures come from; ``None``: this source has none and must align to one that does.
        labels: ``{column or key: LabelSpec}``.
        duplicates: policy for the same material given twice by this source: ``mean`` (classification:
            majority, ties to the first), ``first``, or ``error``.
        tolerance: default conflict tolerance (label units) for duplicates and cross-source comparisons.
    """

    name: str
    path: str
    labels: dict[str, LabelSpec]
    format: TableFormat | None = None
    layout: Literal["table", "nested"] = "table"
    columns: list[str] | None = None
    header: bool = True
    id_column: str | None = None
    namespace: str | None = None
    links: dict[str, str] = field(default_factory=dict)
    formula_column: str | None = None
    energy_column: str | None = None
    structure: StructureSpec | None = None
    duplicates: Literal["mean", "first", "error"] = "mean"
    tolerance: float = 0.1

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("name", "a source needs a name")
        if not self.labels:
            raise ConfigError("labels", f"source {self.name!r} declares no labels")
        if self.layout == "nested":
            for key in ("id_column", "formula_column", "energy_column", "columns"):
                if getattr(self, key):
                    raise ConfigError(key, f"source {self.name!r}: not available with layout 'nested'")
            if self.links:
                raise ConfigError("links", f"source {self.name!r}: not available with layout 'nested'")
            if self.structure is not None and self.structure.kind in ("inline", "files"):
                raise ConfigError("structure.kind", f"source {self.name!r}: a nested mapping has no columns")
        if self.structure is None and self.id_column is None and self.formula_column is None and \
                self.layout == "table" and not self.links:
            raise ConfigError(
                "id_column", f"source {self.name!r} has no structures, ids, links or formulas: nothing to align on"
            )
        if self.tolerance < 0:
            raise ConfigError("tolerance", f"must be >= 0, got {self.tolerance}")
        if not self.header and not self.columns:
            raise ConfigError("columns", f"source {self.name!r} has header: false; name its columns in order, "
                                         "e.g. columns: [material_id, band_gap]")

    @property
    def id_space(self) -> str:
        return self.namespace or self.name

    def task_specs(self) -> list[TaskSpec]:
        """The tasks this source provides, in declaration order."""
        out = []
        for key, label in self.labels.items():
            spec = TaskSpec(
                name=label.task or key, kind=label.kind, unit=label.unit, fidelity=label.fidelity,
                classes=list(label.classes) if label.classes is not None else None, source=self.name,
            )
            try:
                spec.validate()
            except ConfigError as err:
                raise SourceError(self.name, f"labels.{key}.{err.key}", err.reason) from None
            out.append(spec)
        return out


@dataclass
class StructureMatcherConfig:
    """pymatgen ``StructureMatcher`` tolerances (its defaults)."""

    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0
    primitive_cell: bool = True
    scale: bool = True
    attempt_supercell: bool = False


@dataclass
class CompareSpec:
    """Two tasks to compare where both are present; pairs differing by more than ``tolerance`` are listed."""

    tasks: list[str]
    tolerance: float = 0.1

    def validate(self) -> None:
        if len(self.tasks) != 2:
            raise ConfigError("tasks", f"compare needs exactly two task names, got {self.tasks}")


@dataclass
class AlignmentConfig:
    """A source YAML: the sources and how to align them.

    Attributes:
        sources: the label sources, in priority order (the first structure of a material wins).
        root: base folder for relative source paths (itself relative to the YAML's folder).
        matchers: matchers applied in this order to every row of the second and later sources.
        polymorph_policy: composition matches with several candidate materials: ``lowest_energy`` (lowest
            ``energy_column`` value; skipped and reported if no candidate has one), ``skip`` (reported as
            ambiguous), ``all`` (the label is attached to every polymorph).
        structure_matcher: tolerances of the structure matcher.
        compare: task pairs to check for disagreement. Tasks with the same fidelity and unit are compared
            automatically with the larger of their tolerances.
        n_jobs: processes for parsing structures (``None``: all cores).
    """

    sources: list[SourceSpec]
    root: str | None = None
    matchers: list[MatcherName] = field(default_factory=lambda: ["id", "structure", "composition"])
    polymorph_policy: Literal["lowest_energy", "skip", "all"] = "lowest_energy"
    structure_matcher: StructureMatcherConfig = field(default_factory=StructureMatcherConfig)
    compare: list[CompareSpec] = field(default_factory=list)
    n_jobs: int | None = None

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources", "no sources declared")
        names = [s.name for s in self.sources]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"sources[{i}].name", f"duplicate source name {name!r}")
        if len(set(self.matchers)) != len(self.matchers):
            raise ConfigError("matchers", f"a matcher is listed twice: {self.matchers}")
        tasks: dict[str, str] = {}
        for i, src in enumerate(self.sources):
            for key, label in src.labels.items():
                task = label.task or key
                if task in tasks:
                    raise ConfigError(
                        f"sources[{i}].labels.{key}",
                        f"task {task!r} is already given by source {tasks[task]!r}; each source/property pair "
                        "must be its own task (rename it with 'task:')",
                    )
                tasks[task] = src.name
        for j, cmp in enumerate(self.compare):
            for t in cmp.tasks:
                if t not in tasks:
                    raise ConfigError(f"compare[{j}].tasks", f"unknown task {t!r}; known: {', '.join(tasks)}")
        if not any(s.structure is not None for s in self.sources):
            raise ConfigError("sources", "no source has structures: at least one must declare 'structure'")

    def tasks(self) -> list[TaskSpec]:
        """All tasks, in source then label declaration order."""
        return [t for s in self.sources for t in s.task_specs()]


def load_source_config(path: str | Path, overrides: list[str] | None = None,
                       root: str | Path | None = None) -> tuple[AlignmentConfig, Path]:
    """Read a source YAML, apply ``key=value`` overrides and validate it.

    Overrides address sources by name: ``sources.mp.path=/data/labels.csv`` (or by index ``sources.0.path``).
    Returns the config and the resolved base folder of its relative paths (``root`` argument, else the YAML's
    ``root`` relative to the YAML's folder, else the YAML's folder).
    """
    path = Path(path)
    raw = load_yaml(path)
    if overrides:
        raw = _apply_source_overrides(raw, overrides, str(path))
    try:
        config = from_dict(AlignmentConfig, raw)
    except ConfigError as err:
        raise ConfigError(err.key, err.reason, source=str(path)) from None
    if root is not None:
        base = Path(root).expanduser().resolve()
    elif config.root:
        base = (path.parent / Path(config.root).expanduser()).resolve()
    else:
        base = path.parent.resolve()
    return config, base


def _apply_source_overrides(raw: dict, overrides: list[str], where: str) -> dict:
    """``apply_overrides`` with ``sources.<name>.…`` mapped to the list index of that source."""
    parse_overrides(overrides)  # a key given twice is an error
    sources = raw.get("sources")
    names = [s.get("name") for s in sources] if isinstance(sources, list) else []
    fixed = []
    for text in overrides:
        key, sep, value = text.partition("=")
        parts = key.strip().split(".")
        if parts[0] == "sources" and len(parts) > 2:
            if parts[1] in names:
                parts[1] = str(names.index(parts[1]))
            elif not parts[1].isdigit():
                close = difflib.get_close_matches(parts[1], [str(n) for n in names], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; sources: {', '.join(map(str, names))}"
                raise ConfigError(key, f"no source named {parts[1]!r}{hint}", source=where)
            if int(parts[1]) >= len(names):
                raise ConfigError(key, f"source index {parts[1]} out of range ({len(names)} sources)", source=where)
            src = sources[int(parts[1])]
            rest = ".".join(parts[2:])
            apply_overrides(src, [f"{rest}{sep}{value}"])
            continue
        fixed.append(text)
    return apply_overrides(raw, fixed)


# ------------------------------------------------------------------------------------------------ table reading
def infer_format(path: Path) -> TableFormat:
    """Table format from a file name (``.csv[.gz]``, ``.json[.gz]``, ``.jsonl``/``.ndjson[.gz]``, ``.parquet``)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix, fmt in ((".csv", "csv"), (".tsv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"),
                        (".json", "json"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt  # type: ignore[return-value]
    raise ValueError(f"cannot tell the table format of {path.name!r}; set 'format' (csv, json, jsonl, parquet)")


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.lower().endswith(".gz") else path.open()


def read_table(path: Path, fmt: TableFormat | None, source: str, field_name: str = "path",
               columns: list[str] | None = None, header: bool = True) -> pd.DataFrame:
    """Read a table file into a DataFrame (CSV cells as text; JSON values as parsed); errors are SourceErrors.

    CSV: comma-separated, or tab-separated for ``.tsv`` names and for files whose first line has tabs and no
    commas. ``header=False``: the CSV has no header row and ``columns`` names its columns in order."""
    if not path.is_file():
        raise SourceError(source, field_name, f"file not found: {path}")
    try:
        fmt = fmt or infer_format(path)
    except ValueError as err:
        raise SourceError(source, field_name, str(err)) from None
    try:
        if not header and fmt != "csv":
            raise SourceError(source, "header", f"header: false applies to CSV/TSV files; {path.name} is {fmt}")
        if fmt == "csv":
            frame = _read_csv(path, source, columns if not header else None)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "jsonl":
            with _open_text(path) as handle:
                records = []
                for line_no, line in enumerate(handle):
                    if line.strip():
                        try:
                            records.append(json.loads(line))
                        except json.JSONDecodeError as err:
                            raise SourceError(source, field_name, f"{path.name}: invalid JSON: {err}", row=line_no)
            frame = pd.DataFrame.from_records(records)
        else:
            with _open_text(path) as handle:
                data = json.load(handle)
            if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
                frame = pd.DataFrame(data)  # column-oriented {column: [values]}
            elif isinstance(data, list):
                frame = pd.DataFrame.from_records(data)
            else:
                raise SourceError(source, field_name, f"{path.name}: expected a list of records or {{column: [...]}}; "
                                  "for {key: {id: value}} set layout: nested")
    except SourceError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure becomes a named error
        raise SourceError(source, field_name, f"cannot read {path}: {type(err).__name__}: {err}") from None
    if columns is not None and header:
        _require_columns(frame, columns, source, "columns", path)
        frame = frame[list(dict.fromkeys(columns))]
    return frame.reset_index(drop=True)


def _read_csv(path: Path, source: str, names: list[str] | None) -> pd.DataFrame:
    with _open_text(path) as handle:
        first = handle.readline()
    sep = "\t" if ".tsv" in path.name.lower() or ("\t" in first and "," not in first) else ","
    if names is None:
        return pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, header=None)
    if frame.shape[1] != len(names):
        raise SourceError(source, "columns", f"{path.name} has {frame.shape[1]} columns per row; 'columns' names "
                                             f"{len(names)}: {names}")
    frame.columns = list(names)
    return frame


def _require_columns(frame: pd.DataFrame, wanted: list[str], source: str, field_name: str, path: Path) -> None:
    for col in wanted:
        if col not in frame.columns:
            close = difflib.get_close_matches(col, [str(c) for c in frame.columns], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; columns: {', '.join(map(str, frame.columns))}"
            raise SourceError(source, field_name, f"column {col!r} not in {path.name}{hint}")


def read_nested(path: Path, keys: list[str], source: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """A nested mapping ``{key: {id: value}}`` as a table with an ``id`` column and one column per ``key``.

    Rows are ids in order of first appearance over ``keys``; returns the frame and, per key, its value count.
    """
    if not path.is_file():
        raise SourceError(source, "path", f"file not found: {path}")
    try:
        with _open_text(path) as handle:
            data = json.load(handle)
    except Exception as err:  # noqa: BLE001
        raise SourceError(source, "path", f"cannot read {path}: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SourceError(source, "layout", f"{path.name} is not a mapping {{key: {{id: value}}}}")
    for key in keys:
        if key not in data:
            close = difflib.get_close_matches(key, list(data), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; keys: {', '.join(data)}"
            raise SourceError(source, f"labels.{key}", f"key {key!r} not in {path.name}{hint}")
    order: dict[str, int] = {}
    for key in keys:
        for ident in data[key]:
            order.setdefault(str(ident), len(order))
    frame = pd.DataFrame({"id": list(order)})
    for key in keys:
        values = np.full(len(order), None, dtype=object)
        for ident, value in data[key].items():
            values[order[str(ident)]] = value
        frame[key] = values
    return frame, {k: len(data[k]) for k in keys}


# --------------------------------------------------------------------------------------------- value conversion
def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in MISSING_TEXT


def convert_labels(values: pd.Series, task: TaskSpec, source: str, field_name: str,
                   ids: list[str]) -> np.ndarray:
    """Label values as float64 (NaN = missing; classification: the class index). Errors name the row."""
    out = np.full(len(values), np.nan)
    for i, value in enumerate(values.tolist()):
        if _is_missing(value):
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


# -------------------------------------------------------------------------------------------------- source table
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

    @property
    def name(self) -> str:
        return self.spec.name

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_structures(self) -> bool:
        return self.structure_inputs is not None


def load_source(spec: SourceSpec, base_dir: str | Path) -> SourceTable:
    """Read and validate one source (no structure is parsed here; see :mod:`tlgnn.data.structures`)."""
    base = Path(base_dir)
    path = _resolve(base, spec.path)
    tasks = spec.task_specs()
    if spec.layout == "nested":
        frame, _ = read_nested(path, list(spec.labels), spec.name)
        ids = frame["id"].tolist()
    else:
        frame = read_table(path, spec.format, spec.name, columns=spec.columns, header=spec.header)
        needed = [c for c in (spec.id_column, spec.formula_column, spec.energy_column, *spec.links) if c]
        needed += list(spec.labels)
        if spec.structure is not None and spec.structure.kind in ("inline", "files"):
            needed.append(spec.structure.column)  # type: ignore[arg-type]
        for col in needed:
            field_name = f"labels.{col}" if col in spec.labels else _field_of(spec, col)
            _require_columns(frame, [col], spec.name, field_name, path)
        if spec.id_column:
            ids = [_id_text(v) for v in frame[spec.id_column].tolist()]
            for i, ident in enumerate(ids):
                if ident is None:
                    raise SourceError(spec.name, "id_column", f"empty id in column {spec.id_column!r}", row=i)
        else:
            ids = [str(i) for i in range(len(frame))]
    if len(frame) == 0:
        raise SourceError(spec.name, "path", f"{path.name} holds no rows")

    labels = {}
    for (key, _), task in zip(spec.labels.items(), tasks):
        labels[task.name] = convert_labels(frame[key], task, spec.name, f"labels.{key}", ids)

    formulas: list[str | None] = [None] * len(frame)
    if spec.formula_column:
        for i, text in enumerate(frame[spec.formula_column].tolist()):
            if _is_missing(text):
                raise SourceError(spec.name, "formula_column", "empty formula", row=_row_label(i, ids))
            try:
                formulas[i] = reduced_formula(str(text).strip())
            except Exception as err:  # noqa: BLE001
                raise SourceError(spec.name, "formula_column", f"unparsable formula {text!r}: {err}",
                                  row=_row_label(i, ids)) from None

    energies = np.full(len(frame), np.nan)
    if spec.energy_column:
        task = TaskSpec(name=spec.energy_column)
        energies = convert_labels(frame[spec.energy_column], task, spec.name, "energy_column", ids)

    links: list[list[tuple[str, str]]] = [[] for _ in range(len(frame))]
    for col, namespace in spec.links.items():
        for i, value in enumerate(frame[col].tolist()):
            ident = _id_text(value)
            if ident is not None:
                links[i].append((namespace, ident))

    structure_inputs = None
    notes: list[str] = []
    if spec.structure is not None:
        from tlgnn.data.structures import structure_inputs as collect

        structure_inputs, notes = collect(spec, frame, ids, base)
    return SourceTable(spec, tasks, ids, labels, formulas, energies, links, structure_inputs, base, notes)


def _field_of(spec: SourceSpec, col: str) -> str:
    for name in ("id_column", "formula_column", "energy_column"):
        if getattr(spec, name) == col:
            return name
    if col in spec.links:
        return f"links.{col}"
    return "structure.column"


def _id_text(value: Any) -> str | None:
    if _is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _resolve(base: Path, path: str) -> Path:
    return resolve_path(path, base, normalize=False)


def load_sources(config: AlignmentConfig, base_dir: str | Path) -> list[SourceTable]:
    """Load and validate every source of ``config`` (all cheap checks happen before any structure parsing)."""
    return [load_source(spec, base_dir) for spec in config.sources]


__all__ = [
    "AlignmentConfig", "CompareSpec", "LabelSpec", "SourceError", "SourceSpec", "SourceTable", "StructureSpec",
    "StructureMatcherConfig", "convert_labels", "infer_format", "load_source", "load_source_config",
    "load_sources", "read_nested", "read_table", "reduced_formula",
]
