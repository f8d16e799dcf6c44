"""The alignment report: rows per source, matches per matcher, dropped rows with reasons, task overlap, label
statistics, duplicates and conflicts. Written as Markdown (``report.md``) and JSON (``report.json``)."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlgnn.data.tasks import TaskSpec

OUTCOMES = ("new", "id", "structure", "composition", "merged")
LIST_LIMIT = 15  # rows shown per list in the Markdown report (the JSON has all)
NEAR_DEGENERATE_EV = 0.025  # polymorphs closer than this (eV/atom) are flagged: the energy alone barely decides


@dataclass
class SourceStats:
    """Per-source bookkeeping: every row is counted once as an outcome or dropped with a reason."""

    name: str
    rows: int
    counts: Counter = field(default_factory=Counter)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    ambiguous_formulas: int = 0
    polymorph_choices: list[dict[str, Any]] = field(default_factory=list)  # formula rows matched to a polymorph
    dropped_labels: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    out_of_range: list[dict[str, Any]] = field(default_factory=list)  # labels left out: {task, row, id, value, valid}
    _seen: set = field(default_factory=set, repr=False)

    def _mark(self, row: int) -> None:
        if row in self._seen:
            raise RuntimeError(f"source {self.name!r}: row {row} accounted twice")
        self._seen.add(row)

    def count(self, outcome: str, row: int) -> None:
        self._mark(row)
        self.counts[outcome] += 1

    def drop(self, row: int, ident: str, code: str, reason: str) -> None:
        self._mark(row)
        self.dropped.append({"row": row, "id": ident, "code": code, "reason": reason})

    @property
    def accounted(self) -> int:
        return sum(self.counts.values()) + len(self.dropped)

    def short(self) -> str:
        parts = [f"{self.rows} rows"] + [f"{self.counts[o]} {o if o in ('new', 'merged') else 'by ' + o}"
                                          for o in OUTCOMES if self.counts[o]]
        if self.dropped:
            parts.append(f"{len(self.dropped)} dropped")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "outcomes": {o: self.counts[o] for o in OUTCOMES},
            "dropped": len(self.dropped), "dropped_by_reason": dict(Counter(d["code"] for d in self.dropped)),
            "ambiguous_formulas": self.ambiguous_formulas, "polymorph_choices": self.polymorph_choices,
            "dropped_labels": dict(self.dropped_labels),
            "notes": self.notes, "dropped_rows": self.dropped,
        } | ({"out_of_range": self.out_of_range} if self.out_of_range else {})

    def top_drop(self) -> tuple[str, int, dict[str, Any]] | None:
        """The most common drop reason: ``(code, rows, first such row)``; ``None`` when nothing was dropped."""
        return _top_drop(self.dropped)


@dataclass
class AlignmentReport:
    """What :func:`tlgnn.data.alignment.align` did. ``to_markdown()``, ``to_dict()`` and ``summary()`` render it."""

    tasks: list[TaskSpec]
    matchers: list[str]
    polymorph_policy: str
    sources: dict[str, SourceStats] = field(default_factory=dict)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    n_materials: int = 0
    overlap: list[list[int]] = field(default_factory=list)
    label_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    config_path: str | None = None

    def source(self, name: str, rows: int) -> SourceStats:
        self.sources[name] = SourceStats(name, rows)
        return self.sources[name]

    @property
    def conflicts(self) -> list[dict[str, Any]]:
        """Duplicates whose values differ by more than the tolerance (or in class)."""
        return [d for d in self.duplicates if d["conflict"]]

    @property
    def dropped(self) -> list[dict[str, Any]]:
        return [dict(source=s.name, **d) for s in self.sources.values() for d in s.dropped]

    def finish(self, table, config, tolerance: dict[str, float]) -> None:
        """Fill the table-level statistics; checks every input row is accounted for."""
        for stats in self.sources.values():
            if stats.accounted != stats.rows:
                raise RuntimeError(f"source {stats.name!r}: {stats.rows} rows but {stats.accounted} accounted for")
        names = [t.name for t in self.tasks]
        present = ~np.isnan(table.labels(names)) if names else np.zeros((len(table), 0), bool)
        self.n_materials = len(table)
        p = present.astype(np.int64)
        self.overlap = (p.T @ p).tolist()
        for k, task in enumerate(self.tasks):
            vals = table.frame[task.name].to_numpy(dtype=float)[present[:, k]]
            stats: dict[str, Any] = {"count": int(len(vals)), "unit": task.unit, "kind": task.kind,
                                     "fidelity": task.fidelity, "source": task.source}
            if task.kind == "regression" and len(vals):
                stats.update(mean=float(vals.mean()), std=float(vals.std()), min=float(vals.min()),
                             max=float(vals.max()), zeros=int((vals == 0).sum()))
            elif task.kind == "classification":
                stats["classes"] = {str(c): int((vals == i).sum()) for i, c in enumerate(task.classes or [])}
            self.label_stats[task.name] = stats
        pairs: dict[tuple[str, str], float] = {}
        for a, b in itertools.combinations(self.tasks, 2):
            if a.kind == b.kind == "regression" and a.fidelity and a.fidelity == b.fidelity and a.unit == b.unit:
                pairs[(a.name, b.name)] = max(tolerance.get(a.name, 0.1), tolerance.get(b.name, 0.1))
        for cmp in config.compare:
            pairs[(cmp.tasks[0], cmp.tasks[1])] = cmp.tolerance
        frame = table.frame
        for (a, b), tol in pairs.items():
            both = frame[a].notna() & frame[b].notna()
            diff = (frame.loc[both, b] - frame.loc[both, a]).to_numpy(dtype=float)
            bad = frame.loc[both].loc[np.abs(diff) > tol]
            self.comparisons.append({
                "tasks": [a, b], "tolerance": tol, "both": int(both.sum()),
                "mean_diff": float(diff.mean()) if len(diff) else None,
                "mean_abs_diff": float(np.abs(diff).mean()) if len(diff) else None,
                "disagreements": len(bad),
                "rows": [{"material_id": r.material_id, a: float(getattr(r, a)), b: float(getattr(r, b))}
                         for r in bad[["material_id", a, b]].itertuples(index=False)],
            })

    # ------------------------------------------------------------------------------------------- rendering
    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config_path, "seconds": round(self.seconds, 2), "n_materials": self.n_materials,
            "matchers": self.matchers, "polymorph_policy": self.polymorph_policy,
            "tasks": [t.to_dict() for t in self.tasks],
            "sources": {n: s.to_dict() for n, s in self.sources.items()},
            "overlap": {"tasks": [t.name for t in self.tasks], "matrix": self.overlap},
            "label_stats": self.label_stats, "duplicates": self.duplicates, "comparisons": self.comparisons,
        }

    def summary(self) -> str:
        """A few lines for the end of ``tlgnn align``."""
        lines = [f"{self.n_materials} materials, {len(self.tasks)} tasks ({self.seconds:.1f} s)"]
        for s in self.sources.values():
            reasons = Counter(d["code"] for d in s.dropped)
            extra = f" [{', '.join(f'{k}: {v}' for k, v in reasons.items())}]" if reasons else ""
            lines.append(f"  {s.name}: {s.short()}{extra}")
        lines.append("  labels: " + ", ".join(f"{n} {st['count']}" for n, st in self.label_stats.items()))
        if self.conflicts:
            lines.append(f"  conflicting duplicates: {len(self.conflicts)}")
        for c in (c for c in self.comparisons if c["both"]):
            lines.append(f"  {c['tasks'][0]} vs {c['tasks'][1]}: {c['disagreements']} of {c['both']} differ "
                         f"by > {c['tolerance']}")
        lines += ["  " + line for line in self.warnings()]
        return "\n".join(lines)

    def warnings(self) -> list[str]:
        """What a user must hear about on the console (see :func:`console_warnings`)."""
        return console_warnings(self.to_dict())

    def to_markdown(self) -> str:
        """The whole report as Markdown (``report.md``): one section per method below, in this order."""
        out = self._md_header() + self._md_tasks() + self._md_overlap() + self._md_dropped() \
            + self._md_out_of_range() + self._md_polymorphs() + self._md_duplicates() + self._md_comparisons()
        return "\n".join(out) + "\n"

    def _md_header(self) -> list[str]:
        out = ["# Alignment report", ""]
        if self.config_path:
            out.append(f"Config: `{self.config_path}`  ")
        out += [f"Materials: **{self.n_materials}**; tasks: {len(self.tasks)}; matchers (in order): "
                f"{', '.join(self.matchers)}; polymorph policy: `{self.polymorph_policy}`; time {self.seconds:.1f} s.",
                "", "## Rows per source", "",
                "| source | rows | new materials | by id | by structure | by composition | merged duplicates | "
                "dropped | ambiguous formulas |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for s in self.sources.values():
            c = s.counts
            out.append(f"| {s.name} | {s.rows} | {c['new']} | {c['id']} | {c['structure']} | {c['composition']} | "
                       f"{c['merged']} | {len(s.dropped)} | {s.ambiguous_formulas} |")
        notes = [(s.name, n) for s in self.sources.values() for n in s.notes]
        if notes:
            out += [""] + [f"- {name}: {note}" for name, note in notes]
        return out

    def _md_tasks(self) -> list[str]:
        out = ["", "## Tasks", "", "| task | source | kind | unit | fidelity | labels | mean | std | min | max |",
               "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for t in self.tasks:
            st = self.label_stats.get(t.name, {})
            if t.kind == "regression":
                nums = [f"{st[k]:.4g}" if k in st else "" for k in ("mean", "std", "min", "max")]
            else:
                nums = ["classes " + ", ".join(f"{k}: {v}" for k, v in st.get("classes", {}).items()), "", "", ""]
            out.append(f"| {t.name} | {t.source} | {t.kind} | {t.unit or ''} | {t.fidelity or ''} | "
                       f"{st.get('count', 0)} | " + " | ".join(nums) + " |")
        return out

    def _md_overlap(self) -> list[str]:
        names = [t.name for t in self.tasks]
        out = ["", "## Task overlap (materials with both labels)", "",
               "| | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
        for name, row in zip(names, self.overlap):
            out.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
        return out

    def _md_dropped(self) -> list[str]:
        out = ["", "## Dropped rows", ""]
        if not any(s.dropped for s in self.sources.values()):
            out.append("None.")
        for s in self.sources.values():
            if not s.dropped:
                continue
            reasons = Counter(d["code"] for d in s.dropped)
            out.append(f"**{s.name}**: {len(s.dropped)} rows (" +
                       ", ".join(f"{k}: {v}" for k, v in reasons.items()) + "); labels they carried: " +
                       (", ".join(f"{k} {v}" for k, v in s.dropped_labels.items()) or "none") +
                       f". First {min(LIST_LIMIT, len(s.dropped))}:")
            out.append("")
            for d in s.dropped[:LIST_LIMIT]:
                out.append(f"- row {d['row']} (id `{d['id']}`): {d['reason']}")
            out.append("")
        return out

    def _md_out_of_range(self) -> list[str]:
        """Labels left out for lying outside their task's valid range (a section only when there are any)."""
        rows = [(s.name, d) for s in self.sources.values() for d in s.out_of_range]
        if not rows:
            return []
        out = ["## Labels outside their valid range", "",
               f"{len(rows)} labels left out (policy out_of_range: drop). First {min(LIST_LIMIT, len(rows))}:", ""]
        for name, d in rows[:LIST_LIMIT]:
            out.append(f"- {name} row {d['row']} (id `{d['id']}`): {d['task']} = {d['value']:g}, valid {d['valid']}")
        return out + [""]

    def _md_polymorphs(self) -> list[str]:
        out = ["## Polymorph choices", ""]
        choices = [(s.name, c) for s in self.sources.values() for c in s.polymorph_choices]
        if not choices:
            out.append("None: no formula-only row met several polymorphs.")
            return out
        near = sum(1 for _, c in choices if c["margin_ev_per_atom"] is not None
                   and c["margin_ev_per_atom"] < NEAR_DEGENERATE_EV)
        out.append(f"{len(choices)} formulas matched one of several polymorphs ({near} by less than "
                   f"{1000 * NEAR_DEGENERATE_EV:.0f} meV/atom: check that the label describes that polymorph). "
                   f"Closest first (all in report.json):")
        out.append("")
        ranked = sorted(choices, key=lambda sc: (sc[1]["margin_ev_per_atom"] is None,
                                                 sc[1]["margin_ev_per_atom"] or 0.0))
        for name, c in ranked[:LIST_LIMIT]:
            margin = c["margin_ev_per_atom"]
            how = f"lowest energy by {1000 * margin:.1f} meV/atom" if margin is not None else "all polymorphs"
            out.append(f"- {name}: {c['formula']} ({c['polymorphs']} polymorphs) -> "
                       f"{', '.join(c['chosen'])} ({how})")
        return out

    def _md_duplicates(self) -> list[str]:
        out = ["", "## Duplicates inside a source", ""]
        if not self.duplicates:
            out.append("None.")
            return out
        out.append(f"{len(self.duplicates)} materials given more than once by one source; "
                   f"{len(self.conflicts)} conflict (differ by more than the tolerance):")
        out.append("")
        for d in (self.conflicts or self.duplicates)[:LIST_LIMIT]:
            flag = " **conflict**" if d["conflict"] else ""
            out.append(f"- {d['source']} / {d['task']}: `{d['material_id']}` rows {d['rows']} values "
                       f"{[round(v, 4) for v in d['values']]}{flag}")
        return out

    def _md_comparisons(self) -> list[str]:
        out = ["", "## Same-fidelity comparisons", ""]
        if not self.comparisons:
            out.append("None (no two tasks share a fidelity and unit).")
        for c in self.comparisons:
            a, b = c["tasks"]
            mean = c["mean_diff"] if c["mean_diff"] is None else round(c["mean_diff"], 4)
            out.append(f"**{a} vs {b}**: {c['both']} materials have both; {c['disagreements']} differ by more than "
                       f"{c['tolerance']} (mean {b} − {a}: {mean}).")
            if c["rows"]:
                out += ["", f"| material_id | {a} | {b} |", "| --- | ---: | ---: |"]
                for r in c["rows"][:LIST_LIMIT]:
                    out.append(f"| {r['material_id']} | {r[a]:.4g} | {r[b]:.4g} |")
                if len(c["rows"]) > LIST_LIMIT:
                    out.append(f"| … {len(c['rows']) - LIST_LIMIT} more in report.json | | |")
            out.append("")
        return out

def _top_drop(dropped: list[dict[str, Any]]) -> tuple[str, int, dict[str, Any]] | None:
    if not dropped:
        return None
    code, n = Counter(d["code"] for d in dropped).most_common(1)[0]
    return code, n, next(d for d in dropped if d["code"] == code)


def console_warnings(report: dict[str, Any]) -> list[str]:
    """Console lines from a report in its JSON form (``report.json``; :meth:`AlignmentReport.to_dict`): a source
    that lost more than half its rows to one reason, labels left out for lying outside their valid range, and
    materials one source gives twice with conflicting labels (with the policy that merged them)."""
    lines = []
    for name, s in report["sources"].items():
        top = _top_drop(s.get("dropped_rows", []))
        if top is not None and top[1] > s["rows"] / 2:
            code, n, d = top
            lines.append(f"warning: source {name!r}: {n} of {s['rows']} rows dropped as {code}, e.g. row "
                         f"{d['row']} (id {d['id']}): {d['reason']}")
        bad = s.get("out_of_range", [])
        if bad:
            d = bad[0]
            lines.append(f"warning: source {name!r}: {len(bad)} labels outside their valid range left out, e.g. "
                         f"{d['task']} = {d['value']:g} at row {d['row']} (id {d['id']}; valid {d['valid']})")
    by_source: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in report.get("duplicates", []):
        if d["conflict"]:
            by_source.setdefault((d["source"], d.get("policy", "mean")), []).append(d)
    for (name, policy), found in by_source.items():
        d = found[0]
        merged = f" -> {d['merged']:.4g}" if isinstance(d.get("merged"), float) else ""
        lines.append(f"warning: source {name!r}: {len(found)} materials given more than once with conflicting "
                     f"labels, merged by duplicates: {policy}; e.g. {d['task']} of {d['material_id']}: rows "
                     f"{d['rows']} values {[round(v, 4) for v in d['values']]}{merged}")
    return lines


__all__ = ["AlignmentReport", "SourceStats", "console_warnings"]
