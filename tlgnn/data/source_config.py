"""The source YAML's schema: :class:`AlignmentConfig` (the file), :class:`SourceSpec` (one source),
:class:`LabelSpec`, :class:`StructureSpec`, :class:`StructureMatcherConfig`, :class:`CompareSpec`, and
:func:`load_source_config` (read, apply ``key=value`` overrides, validate).

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

Every key is validated when the file is loaded: errors are :class:`~tlgnn.utils.config.ConfigError` naming the key.
Reading the tables a config names is :mod:`tlgnn.data.readers`; turning them into source tables is
:mod:`tlgnn.data.sources`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tlgnn.data.errors import SourceError
from tlgnn.data.tasks import TaskSpec
from tlgnn.utils.config import ConfigError, apply_overrides, from_dict, load_yaml, parse_overrides

TableFormat = Literal["csv", "json", "jsonl", "parquet"]
StructureKind = Literal["inline", "table", "files", "frames"]
MatcherName = Literal["id", "structure", "composition"]


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
        valid_range: ``[low, high]`` a physical value lies in (``null`` for an open end; ``[null, null]``: no
            check). Default: band gaps (``unit: eV`` with a ``fidelity``) >= 0, other tasks unchecked. Values
            outside follow the source's ``out_of_range`` policy.
    """

    task: str | None = None
    kind: Literal["regression", "classification"] = "regression"
    unit: str | None = None
    fidelity: str | None = None
    classes: list[Any] | None = None
    tolerance: float | None = None
    valid_range: list[float | None] | None = None


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
        out_of_range: a label outside its task's valid range (a negative band gap): ``drop`` (the value is left
            out, and listed by row and id in the report and on the console) or ``error`` (refuse the source).
        allow_all_dropped: accept a source none of whose rows aligns (default: that is an error naming the most
            common reason, since it usually means a misread file or a wrong id column).
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
    out_of_range: Literal["drop", "error"] = "drop"
    allow_all_dropped: bool = False

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
                valid_range=list(label.valid_range) if label.valid_range is not None else None,
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
        raw = apply_source_overrides(raw, overrides, str(path))
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


def apply_source_overrides(raw: dict, overrides: list[str], where: str) -> dict:
    """``apply_overrides`` with ``sources.<name>.…`` mapped to the list index of that source; a key given twice
    (by name, by index, or once each) is an error naming it as the user spelled it."""
    sources = raw.get("sources")
    names = [s.get("name") for s in sources] if isinstance(sources, list) else []
    indexed, spelled = [], {}
    for text in overrides:
        key, sep, value = text.partition("=")
        parts = key.strip().split(".")
        if parts[0] == "sources" and len(parts) > 2:
            parts[1] = _source_index(parts[1], key, names, where)
        spelled.setdefault(".".join(parts), key.strip())
        indexed.append(".".join(parts) + sep + value)
    try:
        parse_overrides(indexed)
    except ConfigError as err:
        raise ConfigError(spelled.get(err.key, err.key), err.reason, source=where) from None
    fixed = []
    for text in indexed:
        key, sep, value = text.partition("=")
        parts = key.strip().split(".")
        if parts[0] == "sources" and len(parts) > 2:
            apply_overrides(sources[int(parts[1])], [".".join(parts[2:]) + sep + value])
        else:
            fixed.append(text)
    return apply_overrides(raw, fixed)


def _source_index(name: str, key: str, names: list, where: str) -> str:
    """The list index (as text) of the source ``name`` (a source name or an index) in an override ``key``."""
    if name in names:
        return str(names.index(name))
    if not name.isdigit():
        close = difflib.get_close_matches(name, [str(n) for n in names], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; sources: {', '.join(map(str, names))}"
        raise ConfigError(key, f"no source named {name!r}{hint}", source=where)
    if int(name) >= len(names):
        raise ConfigError(key, f"source index {name} out of range ({len(names)} sources)", source=where)
    return name


__all__ = [
    "AlignmentConfig", "CompareSpec", "LabelSpec", "MatcherName", "SourceSpec", "StructureKind",
    "StructureMatcherConfig", "StructureSpec", "TableFormat", "load_source_config",
]
