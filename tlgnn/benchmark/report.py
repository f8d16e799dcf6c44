"""Aggregate cell JSONs into tables and learning-curve plots, written into ``docs/results.md``.

Only finished cells count (``fold*_n*_s*.json`` that parse; hidden temp files are ignored); a cell computed by an
older version of its model kind (:mod:`tlgnn.benchmark.kinds`) counts as unfinished, and the report names it
until it is rerun. Numbers are the mean
± standard deviation (ddof = 1) over folds (and seeds) of each (experiment, model, training size). The generated
part of ``docs/results.md`` lies between :data:`BEGIN` and :data:`END`; the hand-written text around it is kept.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tlgnn.benchmark.best import best_section
from tlgnn.benchmark.uncertainty import uncertainty_section
from tlgnn.benchmark.kinds import cell_version, is_current, kind_version

BEGIN = "<!-- BEGIN GENERATED: scripts/benchmarks/transfer.py report -->"
END = "<!-- END GENERATED -->"
_CELL = re.compile(r"^fold(\d+)_n([^_]+)_s(\d+)\.json$")
REGIME_TITLES = {"structure_only": "structure only", "low_fidelity_known": "low fidelity known"}


def collect(results: str | Path) -> pd.DataFrame:
    """One row per finished cell under ``results`` (metrics flattened as ``m_<name>``; ``version``: that of its
    model kind which computed it, ``outdated``: whether the kind has a newer version since)."""
    rows = []
    for path in sorted(Path(results).glob("*/*/*.json")):
        if not _CELL.match(path.name):
            continue
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(record, dict) or "metrics" not in record:
            continue
        row = {k: record.get(k) for k in ("experiment", "model", "kind", "regime", "task_kind", "target", "fold",
                                           "train_size", "n_train_target", "n_test", "seed", "quick", "wall_time_s")}
        row["train_size"] = str(row["train_size"])
        row.update({f"m_{k}": v for k, v in record["metrics"].items()})
        row["data_files"] = json.dumps(record.get("data", {}).get("files", {}), sort_keys=True)
        row["hardware"] = json.dumps(record.get("hardware", {}), sort_keys=True)
        row["git_commit"] = record.get("git_commit")
        row["version"] = cell_version(record)
        row["outdated"] = not is_current(record)
        rows.append(row)
    return pd.DataFrame(rows)


def _size_key(size: str) -> float:
    return float("inf") if size == "all" else float(size)


def summarise(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count over folds/seeds of every metric per (experiment, model, regime, train_size)."""
    metric_cols = [c for c in cells.columns if c.startswith("m_")]
    keys = ["experiment", "model", "kind", "regime", "task_kind", "train_size"]
    grouped = cells.groupby(keys, dropna=False)
    out = grouped[metric_cols].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out["n_folds"] = grouped.size()
    out["n_train_target"] = grouped["n_train_target"].mean()
    out["wall_time_s"] = grouped["wall_time_s"].sum()
    return out.reset_index()


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    if std is None or not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def learning_curve_plot(summary: pd.DataFrame, experiment: str, metric: str, path: Path) -> Path:
    """PNG of ``metric`` (mean ± std over folds) against the number of scarce training labels, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = summary[summary.experiment == experiment]
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    for model, rows in data.groupby("model"):
        rows = rows.sort_values("n_train_target")
        style = "--" if rows["regime"].iloc[0] == "low_fidelity_known" else "-"
        ax.errorbar(rows["n_train_target"], rows[f"m_{metric}_mean"], yerr=rows[f"m_{metric}_std"].fillna(0),
                    linestyle=style, marker="o", capsize=3, label=model)
    ax.set_xscale("log")
    ax.set_xlabel("scarce training labels")
    ax.set_ylabel(metric.upper() if metric in ("mae", "rmse") else metric)
    ax.set_title(f"{experiment}: {metric} (dashed: low fidelity known)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def experiment_section(summary: pd.DataFrame, cells: pd.DataFrame, experiment: str, figures: Path, figures_rel: str) -> str:
    """Markdown for one experiment: headline table (all labels), learning-curve table and plot, provenance."""
    data = summary[summary.experiment == experiment]
    task_kind = data["task_kind"].iloc[0]
    exp_cells = cells[cells.experiment == experiment]
    target = exp_cells["target"].iloc[0]
    parts = [f"### {experiment} (target `{target}`)"]
    headline = ["mae", "rmse", "correction_mae"] if task_kind == "regression" else ["accuracy", "f1", "roc_auc"]
    headline = [m for m in headline if f"m_{m}_mean" in data.columns and data[f"m_{m}_mean"].notna().any()]
    sizes = sorted(data["train_size"].unique(), key=_size_key)
    for regime in ("structure_only", "low_fidelity_known"):
        part = data[(data.regime == regime) & (data.train_size == "all")]
        if part.empty:
            continue
        # with the low label known the correction error is the error itself: shown only without it
        shown = [m for m in headline if not (m == "correction_mae" and regime == "low_fidelity_known")]
        rows = [[f"`{r.model}`", f"{r.n_train_target:.0f}",
                 *[_pm(getattr(r, f"m_{m}_mean"), getattr(r, f"m_{m}_std")) for m in shown],
                 f"{r.n_folds}", f"{r.wall_time_s:.0f}"] for r in part.sort_values("model").itertuples()]
        parts.append(f"**{REGIME_TITLES[regime]}**, all training labels (mean ± std over folds):")
        parts.append(_table(["model", "n train", *shown, "folds", "wall s"], rows))
    curve_metric = "mae" if task_kind == "regression" else "roc_auc"
    all_folds = int(data["n_folds"].max())

    def curve_cell(r) -> str:
        text = _pm(getattr(r, f"m_{curve_metric}_mean"), getattr(r, f"m_{curve_metric}_std"))
        return text if r.n_folds >= all_folds else f"{text} ({r.n_folds}/{all_folds} folds)"

    rows = []
    for model, group in data.groupby("model"):
        by_size = {r.train_size: r for r in group.itertuples()}
        rows.append([f"`{model}`", REGIME_TITLES[group["regime"].iloc[0]],
                     *[curve_cell(by_size[s]) if s in by_size else "–" for s in sizes]])
    parts.append(f"Learning curve, {curve_metric} by number of scarce training labels (mean ± std over folds; "
                 "fewer folds than the others are marked; – = not run):")
    parts.append(_table(["model", "regime", *sizes], rows))
    png = learning_curve_plot(summary, experiment, curve_metric, figures / f"{experiment}_{curve_metric}.png")
    parts.append(f"![{experiment} learning curve]({figures_rel}/{png.name})")
    files = json.loads(exp_cells["data_files"].iloc[0])
    versions = ", ".join(f"`{name}` ({v['rows']} rows, sha256 {v['sha256'][:12]})" for name, v in files.items())
    parts.append(f"Data: {versions}. Cells: {len(exp_cells)}; total model wall time {exp_cells['wall_time_s'].sum():.0f} s.")
    return "\n\n".join(parts)


def coverage(configs: list[Path], cells: pd.DataFrame, quick: bool = False) -> pd.DataFrame:
    """Planned, finished, not applicable and missing cells per (experiment, model) of the experiment YAMLs.

    A cell is *not applicable* when its training size exceeds the fold's scarce training labels (the runner
    skips it); that count is read from the finished ``all`` cells of the fold, so no data is loaded here.
    """
    from tlgnn.benchmark.config import load_experiment
    from tlgnn.benchmark.runner import plan_cells

    finished = set()
    labels: dict[tuple[str, int], int] = {}
    for r in cells.itertuples():
        finished.add((r.experiment, r.model, int(r.fold), r.train_size, int(r.seed)))
        if r.train_size == "all":
            labels[(r.experiment, int(r.fold))] = int(r.n_train_target)
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for path in configs:
        config = load_experiment(path)
        for cell in plan_cells(config, quick):
            key = cell.key
            counts = rows.setdefault((config.name, str(cell.model.name)), {"planned": 0, "finished": 0, "n/a": 0})
            counts["planned"] += 1
            n_labels = labels.get((config.name, key.fold))
            if (config.name, str(cell.model.name), key.fold, str(key.train_size), key.seed) in finished:
                counts["finished"] += 1
            elif key.train_size != "all" and n_labels is not None and n_labels < int(key.train_size):
                counts["n/a"] += 1
    frame = pd.DataFrame([{"experiment": e, "model": m, **c} for (e, m), c in rows.items()],
                         columns=["experiment", "model", "planned", "finished", "n/a"])
    frame["missing"] = frame["planned"] - frame["finished"] - frame["n/a"]
    return frame


def coverage_section(table: pd.DataFrame) -> str:
    """Markdown: the totals, then one row per (experiment, model) that still has missing cells."""
    total = table[["planned", "finished", "n/a", "missing"]].sum()
    gnn = table[table.model.str.startswith("gnn_")][["planned", "finished", "n/a", "missing"]].sum()
    text = (f"Coverage of the planned grid: {total.finished} of {total.planned - total['n/a']} applicable cells "
            f"finished ({total.missing} missing; {total['n/a']} not applicable: training size above the fold's "
            f"labels); GNN kinds {gnn.finished} of {gnn.planned - gnn['n/a']}.")
    open_rows = table[table.missing > 0]
    if open_rows.empty:
        return text + " Every applicable cell is finished."
    rows = [[f"`{r.experiment}`", f"`{r.model}`", str(r.finished), str(r.missing)] for r in open_rows.itertuples()]
    return text + " Models with missing cells:\n\n" + _table(["experiment", "model", "finished", "missing"], rows)


def outdated_section(cells: pd.DataFrame) -> str:
    """Markdown naming the cells computed by an older version of their model kind (left out of every table)."""
    old = cells[cells["outdated"]]
    lines = [f"Outdated cells: {len(old)}, computed by an older version of their model kind "
             "(`tlgnn.benchmark.kinds`); they are left out of the tables below until rerun "
             "(`transfer.py run` recomputes them):", ""]
    for (experiment, model, kind), group in old.groupby(["experiment", "model", "kind"], sort=True):
        versions = ", ".join(str(v) for v in sorted(set(group["version"])))
        stems = ", ".join(f"fold{r.fold}_n{r.train_size}_s{r.seed}" for r in group.sort_values(
            ["fold", "train_size", "seed"]).itertuples())
        lines.append(f"- `{experiment}/{model}` (`{kind}` version {versions}, now {kind_version(kind)}): {stems}")
    return "\n".join(lines)


def _hardware_lines(cells: pd.DataFrame) -> str:
    texts = dict.fromkeys(  # one line per distinct text (records may differ in fields not shown)
        f"{h.get('cpu')} ({h.get('cores')} cores, {h.get('memory_gb')} GB), GPU {h.get('gpu') or 'none'}, "
        f"Python {h.get('python')}, scikit-learn {h.get('sklearn')}"
        for h in map(json.loads, sorted(set(cells["hardware"]))))
    return "Hardware: " + "; ".join(texts)


def render(results: str | Path, figures: str | Path, figures_rel: str = "results",
           configs: list[Path] | None = None, results_shown: str | None = None) -> str:
    """The generated Markdown for every experiment under ``results`` (plots and ``summary.csv`` into ``figures``);
    with the experiment YAMLs ``configs``, a coverage summary of their planned grid first. ``results_shown``:
    how the page names the results folder (default: as given)."""
    shown = results if results_shown is None else results_shown
    cells = collect(results)
    if cells.empty:
        return f"No finished cells under `{shown}`."
    outdated = cells[cells["outdated"]]
    cells = cells[~cells["outdated"]].reset_index(drop=True)
    if cells.empty:
        return f"No current cells under `{shown}`.\n\n{outdated_section(outdated)}"
    summary = summarise(cells)
    Path(figures).mkdir(parents=True, exist_ok=True)
    summary.to_csv(Path(figures) / "summary.csv", index=False, float_format="%.5g")
    commits = sorted({c for c in cells["git_commit"] if c})
    lines = [
        f"Finished cells: {len(cells)} from `{shown}`"
        + (" (quick mode)" if cells["quick"].all() else "")
        + f"; every aggregate (mean, std, folds) is also in `{figures_rel}/summary.csv` (relative to this page)"
        + f"; git commit(s): {', '.join(c[:10] for c in commits) or 'unknown'}.",
        _hardware_lines(cells),
    ]
    if not outdated.empty:
        lines.append(outdated_section(outdated))
    if configs:
        lines.append(coverage_section(coverage(configs, cells, quick=bool(cells["quick"].all()))))
    for section in (best_section(summary), uncertainty_section(summary, results)):
        if section:
            lines.append(section)
    for experiment in sorted(cells["experiment"].unique()):
        lines.append(experiment_section(summary, cells, experiment, Path(figures), figures_rel))
    return "\n\n".join(lines)


def shown_path(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` (``..`` where outside it): pages never hold this machine's absolute paths."""
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def write_report(results: str | Path, output: str | Path, figures: str | Path,
                 configs: list[Path] | None = None, root: str | Path | None = None) -> Path:
    """Replace the generated block of ``output`` (created with a skeleton if absent) with the current tables
    (and the coverage of the ``configs`` grid, see :func:`render`). The page names the figures relative to
    itself and the results folder relative to ``root`` (the repository; default the working directory)."""
    output = Path(output)
    figures = Path(figures)
    figures_rel = shown_path(figures, output.parent)
    results_shown = shown_path(results, Path.cwd() if root is None else root)
    block = f"{BEGIN}\n\n{render(results, figures, figures_rel, configs, results_shown)}\n\n{END}"
    text = output.read_text() if output.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return output


__all__ = ["BEGIN", "END", "collect", "coverage", "coverage_section", "learning_curve_plot", "outdated_section", "render",
           "shown_path", "summarise", "write_report"]
