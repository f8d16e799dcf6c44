"""Align several label sources into one :class:`MaterialTable` and an :class:`AlignmentReport`.

Algorithm (sources in declared order; matching is against materials created by *earlier* sources):

1. Every source is loaded and validated (cheap checks) before any structure is parsed.
2. Rows of one source are grouped by their id (sources with ids) or reduced formula (formula-only sources):
   such groups are the same material given twice, merged by the source's ``duplicates`` policy.
3. Each group is matched by the matchers (objects of :mod:`tlgnn.data.match`) in the declared order: ``id`` (own
   id in its namespace, or a link column), ``structure`` (StructureMatcher within the same reduced formula and
   space group; rows with a structure only), ``composition`` (reduced formula with the polymorph policy; rows
   without a structure only). The first matcher with an answer decides: a match, or a drop with its reason.
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
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlgnn.data.errors import AlignmentError, SourceError
from tlgnn.data.match import Drop, Match, Materials, Matcher, Query, build_matchers, first_match
from tlgnn.data.report import AlignmentReport, SourceStats
from tlgnn.data.source_config import AlignmentConfig, load_source_config
from tlgnn.data.source_table import SourceTable
from tlgnn.data.sources import load_sources
from tlgnn.data.structures import ParsedStructure, parse_structures
from tlgnn.data.table import MaterialTable
from tlgnn.data.tasks import TaskSpec
from tlgnn.utils.files import write_text_atomic

Values = dict[str, dict[int, list[tuple[int, float]]]]  # task -> material -> [(source row, value)]


def align(config: AlignmentConfig, base_dir: str | Path, n_jobs: int | None = None,
          cache_dir: str | Path | None = None, log=None) -> tuple[MaterialTable, AlignmentReport]:
    """Align the sources of ``config`` (relative paths against ``base_dir``), in the steps of the module doc.

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
    sources = load_sources(config, base_dir)  # step 1: every source read and checked
    say(f"loaded {len(sources)} sources in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{s.name} ({len(s)} rows)" for s in sources))
    tasks: list[TaskSpec] = [t for s in sources for t in s.tasks]
    report = AlignmentReport(tasks=tasks, matchers=list(config.matchers), polymorph_policy=config.polymorph_policy)
    materials = Materials()
    matchers = build_matchers(list(config.matchers), config.structure_matcher, config.polymorph_policy)
    values: Values = {t.name: defaultdict(list) for t in tasks}
    tolerance = {t.name: _tolerance(src, t.name) for src in sources for t in src.tasks}
    for src in sources:  # steps 2-4, source by source
        t_src = time.perf_counter()
        parsed = _parse(src, n_jobs or config.n_jobs, cache_dir, say)
        stats = _align_source(src, parsed, matchers, materials, values, report)
        _check_losses(src, stats)
        say(f"{src.name}: " + stats.short() + f" ({time.perf_counter() - t_src:.1f} s)")
    frame = _build_frame(materials, tasks, values, sources, tolerance, report)  # step 5
    table = MaterialTable(frame, tasks)
    report.finish(table, config, tolerance)
    report.seconds = time.perf_counter() - t0
    return table, report


def _parse(src: SourceTable, n_jobs: int | None, cache_dir: str | Path | None,
           say) -> list[ParsedStructure | None] | None:
    """The source's structures parsed (``None`` for a source without structures)."""
    if not src.has_structures:
        return None
    t0 = time.perf_counter()
    names = [f"{src.name}:{ident}" for ident in src.ids]
    parsed = parse_structures(src.structure_inputs, names, src.spec.structure.disordered,  # type: ignore
                              n_jobs, cache_dir)
    n_ok = sum(1 for p in parsed if p is not None and p.error is None)
    say(f"{src.name}: parsed {n_ok} structures in {time.perf_counter() - t0:.1f} s")
    return parsed


def _groups(src: SourceTable) -> list[list[int]]:
    """Step 2: rows of ``src`` describing the same material: same id, or same formula for formula-only sources."""
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


@dataclass
class _SourceRun:
    """What one source adds while it is matched: ids and formulas registered when it is done, and the formulas
    that met several polymorphs."""

    new_ids: list[tuple[int, tuple[str, str]]] = field(default_factory=list)
    new_formulas: list[tuple[str, int]] = field(default_factory=list)
    ambiguous_formulas: set[str] = field(default_factory=set)
    chosen: dict[str, dict] = field(default_factory=dict)  # formula -> the polymorph its rows went to


def _align_source(src: SourceTable, parsed: list[ParsedStructure | None] | None, matchers: list[Matcher],
                  materials: Materials, values: Values, report: AlignmentReport) -> SourceStats:
    """Steps 2-4 for one source: group its rows, match each group, make a new material or drop the rows."""
    stats = report.source(src.name, len(src))
    stats.notes.extend(src.notes)
    stats.out_of_range.extend(src.out_of_range)
    run = _SourceRun()
    has_ids = bool(src.spec.id_column or src.spec.layout == "nested")
    for group in _groups(src):
        first = group[0]
        ps = parsed[first] if parsed is not None else None
        readable = ps is not None and ps.error is None
        own = [(src.spec.id_space, src.ids[first])] if has_ids else []
        query = Query(own + [k for i in group for k in src.links[i]],
                      ps.formula if readable else src.formulas[first], ps.structure if readable else None)
        outcome = first_match(query, matchers, materials)  # step 3
        _note_polymorphs(query, outcome, run)
        if outcome is None:  # step 4
            outcome = _new_or_unmatched(src, first, ps, query, materials, [m.name for m in matchers], has_ids, run)
        if isinstance(outcome, Drop):
            _drop(src, group, outcome, stats)
        else:
            _place(src, group, query, outcome, materials, values, stats, run)
    materials.register(run.new_ids, run.new_formulas)
    stats.ambiguous_formulas = len(run.ambiguous_formulas)
    stats.polymorph_choices = list(run.chosen.values())
    for matcher in matchers:
        matcher.end_source()
    return stats


def _check_losses(src: SourceTable, stats: SourceStats) -> None:
    """A source none of whose rows aligned is an error (unless ``allow_all_dropped``): it names the most common
    reason, which usually points at a misread file or a wrong id column."""
    top = stats.top_drop()
    if top is None or len(stats.dropped) < stats.rows or src.spec.allow_all_dropped:
        return
    code, n, d = top
    raise SourceError(src.name, None, f"all {stats.rows} rows were dropped, {n} as {code}, e.g. row {d['row']} "
                                      f"(id {d['id']!r}): {d['reason']}; check the file and its columns, or set "
                                      "allow_all_dropped: true to accept an empty source")


def _note_polymorphs(query: Query, outcome: Match | Drop | None, run: _SourceRun) -> None:
    """Remember formulas that met several polymorphs, and the first choice made for each."""
    if isinstance(outcome, Match) and outcome.polymorphs is not None:
        run.ambiguous_formulas.add(query.formula)  # type: ignore[arg-type]
        run.chosen.setdefault(query.formula, outcome.polymorphs)  # type: ignore[arg-type]
    elif isinstance(outcome, Drop) and outcome.code == "ambiguous_formula":
        run.ambiguous_formulas.add(query.formula)  # type: ignore[arg-type]


def _new_or_unmatched(src: SourceTable, row: int, ps: ParsedStructure | None, query: Query, materials: Materials,
                      matchers: list[str], has_ids: bool, run: _SourceRun) -> Match | Drop:
    """Step 4: an unmatched group with a readable structure becomes a new material; otherwise a reasoned drop."""
    if query.structure is None:
        return _unmatched_reason(src, ps, query, matchers)
    mid = src.ids[row] if has_ids else f"{src.name}-{row}"
    if mid in materials.seen:
        mid = f"{src.name}:{mid}"
    m = materials.add(mid, ps.structure, ps.formula, ps.n_sites, src.name, float(src.energies[row]),  # type: ignore
                      ps.key)  # type: ignore[union-attr]
    run.new_formulas.append((ps.formula, m))  # type: ignore[union-attr]
    return Match([m], "new")


def _drop(src: SourceTable, group: list[int], drop: Drop, stats: SourceStats) -> None:
    for i in group:
        stats.drop(i, src.ids[i], drop.code, drop.reason)
        for task in src.tasks:
            if not math.isnan(src.labels[task.name][i]):
                stats.dropped_labels[task.name] += 1


def _place(src: SourceTable, group: list[int], query: Query, match: Match, materials: Materials, values: Values,
           stats: SourceStats, run: _SourceRun) -> None:
    """Count the group's rows, give a matched material the source's energy if it had none, and collect the
    rows' labels and ids for the material(s)."""
    first = group[0]
    stats.count(match.how, first)
    for i in group[1:]:
        stats.count("merged", i)
    single = len(match.materials) == 1
    for m in match.materials:
        if match.how != "new" and single and not math.isnan(src.energies[first]) \
                and math.isnan(materials.energy[m]):
            materials.energy[m] = float(src.energies[first])
        if single:
            run.new_ids.extend((m, key) for key in query.keys)
        for task in src.tasks:
            col = src.labels[task.name]
            for i in group:
                if not math.isnan(col[i]):
                    values[task.name][m].append((i, float(col[i])))


def _tolerance(src: SourceTable, task: str) -> float:
    for key, label in src.spec.labels.items():
        if (label.task or key) == task and label.tolerance is not None:
            return float(label.tolerance)
    return float(src.spec.tolerance)


def _unmatched_reason(src: SourceTable, ps: ParsedStructure | None, query: Query, matchers: list[str]) -> Drop:
    keys, formula = query.keys, query.formula
    if ps is not None and ps.error is not None:
        return Drop("bad_structure", f"structure unreadable ({ps.error}) and no match by id")
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
        return Drop("unmatched", f"{what}; no id/formula a declared matcher could use")
    return Drop("unmatched", f"{what}; " + "; ".join(tried))


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


def _build_frame(mats: Materials, tasks: list[TaskSpec], values, sources: list[SourceTable],
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
        "ids": [json.dumps(d, sort_keys=True) for d in mats.id_map],
    }
    provenance: list[dict[str, list]] = [{} for _ in range(n)]
    for task in tasks:
        src = by_task_source[task.name]
        col = np.full(n, np.nan)
        for m, entries in values[task.name].items():
            rows = [r for r, _ in entries]
            col[m] = _merge(entries, task, src.spec.duplicates)
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
                    "policy": src.spec.duplicates, "merged": float(col[m]),
                })
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


LOCK_FILE = ".tlgnn-align.lock"


@contextmanager
def output_lock(out_dir: str | Path, log=None) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (``fcntl.flock`` on ``out_dir/.tlgnn-align.lock``) while a run's
    outputs are written. If another process holds it, say so through ``log`` (default: stderr) and wait: two runs
    into one folder write one after the other, so the folder always holds one run's table and report. The lock
    is released when the holder exits, however it exits. (No lock where ``fcntl`` is missing, e.g. Windows.)"""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(out / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
            say(f"another tlgnn align is writing into {out}; waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_alignment(table: MaterialTable, report: AlignmentReport, out_dir: str | Path, log=None) -> Path:
    """Write ``report.md``, ``report.json`` and then ``aligned.parquet`` (with its checksum) into ``out_dir``;
    returns the table path. The table comes last: a folder holding it (and its checksum) is complete. The three
    are written under :func:`output_lock`, so a concurrent run into the same folder cannot mix its files in."""
    out = Path(out_dir)
    with output_lock(out, log):
        write_text_atomic(out / "report.md", report.to_markdown())
        write_text_atomic(out / "report.json", json.dumps(report.to_dict(), indent=1, default=_json_default))
        return table.save(out)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    raise TypeError(type(obj).__name__)


__all__ = ["AlignmentError", "SourceError", "align", "align_config", "output_lock", "write_alignment"]
