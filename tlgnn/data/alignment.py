"""Align several label sources into one :class:`MaterialTable` and an :class:`AlignmentReport`.

Algorithm (sources in declared order; matching is against materials created by *earlier* sources):

1. Every source is loaded and validated (cheap checks) before any structure is parsed.
2. Rows of one source are grouped by their id (sources with ids) or reduced formula (formula-only sources):
   such groups are the same material given twice, merged by the source's ``duplicates`` policy.
3. Each group is matched by the matchers in the declared order: ``id`` (own id in its namespace, or a link
   column), ``structure`` (StructureMatcher within the same reduced formula and space group; rows with a
   structure only), ``composition`` (reduced formula with the polymorph policy; rows without a structure only).
4. An unmatched group with a readable structure becomes a new material; otherwise its rows are dropped with a
   reason. Every input row ends up ``new``, ``matched`` (by a named matcher), ``merged`` (a duplicate) or
   ``dropped`` -- nothing vanishes silently.
5. Labels are written per task; several rows of a source landing on one material follow the duplicate policy,
   and values differing by more than the tolerance are listed as conflicts. Tasks with the same fidelity and unit
   (and declared ``compare`` pairs) are compared and their disagreements listed.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlgnn.data.match import FormulaIndex, IdIndex, StructureIndex, energy_margin, pick_polymorph
from tlgnn.data.report import AlignmentReport
from tlgnn.data.sources import AlignmentConfig, SourceError, SourceTable, load_source_config, load_sources
from tlgnn.data.structures import parse_structures
from tlgnn.data.table import MaterialTable
from tlgnn.data.tasks import TaskSpec
from tlgnn.errors import DataError
from tlgnn.utils.files import write_text_atomic


class AlignmentError(DataError, ValueError):
    """Alignment cannot proceed (e.g. duplicates with policy ``error``); names the source and rows."""


@dataclass
class _Materials:
    material_id: list[str] = field(default_factory=list)
    structure: list[str] = field(default_factory=list)
    formula: list[str] = field(default_factory=list)
    n_sites: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    key: list[str] = field(default_factory=list)
    energy: list[float] = field(default_factory=list)
    ids: list[dict[str, list[str]]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def add(self, material_id: str, structure: str, formula: str, n_sites: int, source: str, energy: float,
            key: str) -> int:
        self.key.append(key)
        self.material_id.append(material_id)
        self.structure.append(structure)
        self.formula.append(formula)
        self.n_sites.append(n_sites)
        self.source.append(source)
        self.energy.append(energy)
        self.ids.append({})
        self.seen.add(material_id)
        return len(self.material_id) - 1

    def add_id(self, material: int, namespace: str, ident: str) -> None:
        bucket = self.ids[material].setdefault(namespace, [])
        if ident not in bucket:
            bucket.append(ident)


def _groups(src: SourceTable) -> list[list[int]]:
    """Rows of ``src`` describing the same material: same id, or same formula for formula-only sources."""
    spec = src.spec
    if spec.id_column or spec.layout == "nested":
        keys: list[Any] = src.ids
    elif spec.formula_column and not src.has_structures:
        keys = src.formulas
    else:
        return [[i] for i in range(len(src))]
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def align(config: AlignmentConfig, base_dir: str | Path, n_jobs: int | None = None,
          cache_dir: str | Path | None = None, log=None) -> tuple[MaterialTable, AlignmentReport]:
    """Align the sources of ``config`` (relative paths against ``base_dir``).

    Args:
        config: the validated source config.
        base_dir: folder relative source paths are resolved against.
        n_jobs: processes for structure parsing (default: ``config.n_jobs``, else all cores).
        cache_dir: cache folder for parsed structures (``None``: no cache).
        log: optional ``callable(str)`` for progress messages.

    Returns:
        The aligned table and its report.

    Raises:
        SourceError: a bad source (before any structure is parsed).
        AlignmentError: duplicates under policy ``error``.
    """
    say = log or (lambda msg: None)
    t0 = time.perf_counter()
    sources = load_sources(config, base_dir)
    say(f"loaded {len(sources)} sources in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{s.name} ({len(s)} rows)" for s in sources))
    tasks: list[TaskSpec] = [t for s in sources for t in s.tasks]
    report = AlignmentReport(tasks=tasks, matchers=list(config.matchers), polymorph_policy=config.polymorph_policy)
    mats = _Materials()
    id_index, formula_index = IdIndex(), FormulaIndex()
    struct_index = StructureIndex(config.structure_matcher) if "structure" in config.matchers else None
    # values[task][material] -> [(row, value)]
    values: dict[str, dict[int, list[tuple[int, float]]]] = {t.name: defaultdict(list) for t in tasks}
    tolerance = {t.name: _tolerance(src, t.name) for src in sources for t in src.tasks}

    for src in sources:
        t_src = time.perf_counter()
        stats = report.source(src.name, len(src))
        stats.notes.extend(src.notes)
        parsed = None
        if src.has_structures:
            names = [f"{src.name}:{ident}" for ident in src.ids]
            parsed = parse_structures(src.structure_inputs, names, src.spec.structure.disordered,  # type: ignore
                                      n_jobs or config.n_jobs, cache_dir)
            n_ok = sum(1 for p in parsed if p is not None and p.error is None)
            say(f"{src.name}: parsed {n_ok} structures in {time.perf_counter() - t_src:.1f} s")
        new_ids: list[tuple[int, tuple[str, str]]] = []
        new_formulas: list[tuple[str, int]] = []
        has_ids = bool(src.spec.id_column or src.spec.layout == "nested")
        ambiguous_formulas: set[str] = set()
        chosen: dict[str, dict] = {}  # formula -> which polymorph its rows went to, and by what energy margin
        for group in _groups(src):
            first = group[0]
            own = [(src.spec.id_space, src.ids[first])] if has_ids else []
            keys = own + [k for i in group for k in src.links[i]]
            ps = parsed[first] if parsed is not None else None
            structure_ok = ps is not None and ps.error is None
            formula = ps.formula if structure_ok else src.formulas[first]
            targets: list[int] = []
            how = None
            reason = None
            for matcher in config.matchers:
                if matcher == "id" and keys:
                    found = sorted(id_index.lookup(keys))
                    if len(found) == 1:
                        targets, how = found, "id"
                    elif len(found) > 1:
                        reason = ("ambiguous_id", "ids " + ", ".join(f"{n}:{i}" for n, i in keys)
                                  + " point to materials " + ", ".join(mats.material_id[m] for m in found))
                        break
                elif matcher == "structure" and structure_ok and struct_index is not None:
                    cands = formula_index.get(formula)
                    hit = struct_index.find(ps.structure, cands, [mats.structure[m] for m in cands])
                    if hit is not None:
                        targets, how = [hit], "structure"
                elif matcher == "composition" and not structure_ok and formula:
                    cands = formula_index.get(formula)
                    if cands:
                        energies = [mats.energy[m] for m in cands]
                        choice = pick_polymorph(cands, energies, config.polymorph_policy)
                        if choice.ambiguous:
                            ambiguous_formulas.add(formula)
                        if choice.ambiguous and choice.materials and formula not in chosen:
                            chosen[formula] = {
                                "formula": formula, "polymorphs": len(cands),
                                "chosen": [mats.material_id[m] for m in choice.materials],
                                "margin_ev_per_atom": energy_margin(energies) if len(choice.materials) == 1 else None,
                            }
                        if choice.materials:
                            targets, how = choice.materials, "composition"
                        else:
                            reason = ("ambiguous_formula", f"formula {formula}: {choice.reason}")
                            break
                if targets:
                    break
            if not targets and reason is None:
                if structure_ok:
                    mid = src.ids[first] if has_ids else f"{src.name}-{first}"
                    if mid in mats.seen:
                        mid = f"{src.name}:{mid}"
                    m = mats.add(mid, ps.structure, ps.formula, ps.n_sites, src.name, float(src.energies[first]),
                                 ps.key)
                    targets, how = [m], "new"
                    new_formulas.append((ps.formula, m))
                else:
                    reason = _unmatched_reason(src, first, ps, keys, formula, config.matchers, has_ids)
            if reason is not None:
                for i in group:
                    stats.drop(i, src.ids[i], reason[0], reason[1])
                    for task in src.tasks:
                        if not math.isnan(src.labels[task.name][i]):
                            stats.dropped_labels[task.name] += 1
                continue
            stats.count(how, group[0])
            for i in group[1:]:
                stats.count("merged", i)
            for m in targets:
                if how != "new" and len(targets) == 1 and not math.isnan(src.energies[first]) \
                        and math.isnan(mats.energy[m]):
                    mats.energy[m] = float(src.energies[first])
                if len(targets) == 1:
                    for key in keys:
                        new_ids.append((m, key))
                for task in src.tasks:
                    col = src.labels[task.name]
                    for i in group:
                        if not math.isnan(col[i]):
                            values[task.name][m].append((i, float(col[i])))
        for m, (namespace, ident) in new_ids:
            id_index.add((namespace, ident), m)
            mats.add_id(m, namespace, ident)
        for formula, m in new_formulas:
            formula_index.add(formula, m)
        stats.ambiguous_formulas = len(ambiguous_formulas)
        stats.polymorph_choices = list(chosen.values())
        if struct_index is not None:
            struct_index.forget()
        say(f"{src.name}: " + stats.short() + f" ({time.perf_counter() - t_src:.1f} s)")

    frame = _build_frame(mats, tasks, values, sources, tolerance, report)
    table = MaterialTable(frame, tasks)
    report.finish(table, config, tolerance)
    report.seconds = time.perf_counter() - t0
    return table, report


def _tolerance(src: SourceTable, task: str) -> float:
    for key, label in src.spec.labels.items():
        if (label.task or key) == task and label.tolerance is not None:
            return float(label.tolerance)
    return float(src.spec.tolerance)


def _unmatched_reason(src: SourceTable, row: int, ps, keys, formula, matchers, has_ids) -> tuple[str, str]:
    if ps is not None and ps.error is not None:
        return "bad_structure", f"structure unreadable ({ps.error}) and no match by id"
    if src.has_structures and ps is None:
        what = "no structure for this row"
    else:
        what = "no structure"
    tried = []
    if "id" in matchers and keys:
        tried.append("id " + ", ".join(f"{n}:{i}" for n, i in keys) + " matches no material")
    if "composition" in matchers and formula:
        tried.append(f"formula {formula} matches no material")
    if not tried:
        return "unmatched", f"{what}; no id/formula a declared matcher could use"
    return "unmatched", f"{what}; " + "; ".join(tried)


def _merge(entries: list[tuple[int, float]], task: TaskSpec, policy: str) -> float:
    if policy == "first" or len(entries) == 1:
        return entries[0][1]
    vals = [v for _, v in entries]
    if task.kind == "classification":
        counts: dict[float, int] = {}
        for v in vals:
            counts[v] = counts.get(v, 0) + 1
        best = max(counts.values())
        return next(v for v in vals if counts[v] == best)
    return float(np.mean(vals))


def _build_frame(mats: _Materials, tasks: list[TaskSpec], values, sources: list[SourceTable],
                 tolerance: dict[str, float], report: AlignmentReport) -> pd.DataFrame:
    n = len(mats.material_id)
    by_task_source = {t.name: src for src in sources for t in src.tasks}
    columns: dict[str, Any] = {
        "material_id": mats.material_id,
        "formula": mats.formula,
        "n_sites": np.asarray(mats.n_sites, dtype=np.int64),
        "structure": mats.structure,
        "structure_key": mats.key,
        "structure_source": mats.source,
        "energy_per_atom": np.asarray(mats.energy, dtype=np.float64),
        "ids": [json.dumps(d, sort_keys=True) for d in mats.ids],
    }
    provenance: list[dict[str, list]] = [{} for _ in range(n)]
    for task in tasks:
        src = by_task_source[task.name]
        col = np.full(n, np.nan)
        for m, entries in values[task.name].items():
            rows = [r for r, _ in entries]
            if len(entries) > 1:
                vals = [v for _, v in entries]
                spread = max(vals) - min(vals)
                conflict = spread > tolerance[task.name] if task.kind == "regression" else len(set(vals)) > 1
                if src.spec.duplicates == "error":
                    raise AlignmentError(
                        f"source {src.name!r}, task {task.name!r}: material {mats.material_id[m]} is given by rows "
                        f"{rows} (ids {[src.ids[r] for r in rows]}) with values {vals} (duplicates: error)"
                    )
                report.duplicates.append({
                    "source": src.name, "task": task.name, "material_id": mats.material_id[m], "rows": rows,
                    "ids": [src.ids[r] for r in rows], "values": vals, "conflict": bool(conflict),
                })
            col[m] = _merge(entries, task, src.spec.duplicates)
            provenance[m][task.name] = [src.name, rows[0] if len(rows) == 1 else rows]
        columns[task.name] = col
    columns["provenance"] = [json.dumps(p, sort_keys=True) for p in provenance]
    return pd.DataFrame(columns)


def align_config(path: str | Path, overrides: list[str] | None = None, root: str | Path | None = None,
                 n_jobs: int | None = None, cache_dir: str | Path | None = None,
                 log=None) -> tuple[MaterialTable, AlignmentReport]:
    """Load a source YAML (with ``key=value`` overrides) and align it; see :func:`align`."""
    config, base = load_source_config(path, overrides, root)
    table, report = align(config, base, n_jobs=n_jobs, cache_dir=cache_dir, log=log)
    report.config_path = str(path)
    return table, report


def write_alignment(table: MaterialTable, report: AlignmentReport, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.json`` and then ``aligned.parquet`` (with its checksum) into ``out_dir``;
    returns the table path. The table comes last: a folder holding it (and its checksum) is complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.md", report.to_markdown())
    write_text_atomic(out / "report.json", json.dumps(report.to_dict(), indent=1, default=_json_default))
    return table.save(out)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(type(obj).__name__)


__all__ = ["AlignmentError", "SourceError", "align", "align_config", "write_alignment"]
