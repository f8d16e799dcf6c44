#!/usr/bin/env python
"""Transfer benchmark (issue 7): run experiments cell by cell (resumable), then report into docs/results.md.

  scripts/benchmarks/transfer.py run [--quick] [--only 'hse/rf_*'] [--results results] [--data [EXP=]PATH]
                                     [--accelerator cpu|gpu] [--workers N]
  scripts/benchmarks/transfer.py report [--results results] [--output docs/results.md]

Experiments are the YAMLs in configs/benchmarks/ (one per experiment). A cell is (experiment, model, fold,
training size, seed); it writes results/<exp>/<model>/fold<k>_n<N>_s<seed>.json and .predictions.csv when it
finishes, and a rerun skips finished cells. --quick runs the configs' quick subset into results/quick/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _data_overrides(values: list[str]) -> tuple[str | None, dict[str, str]]:
    default, per_experiment = None, {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and "/" not in name and not Path(value).exists():
            per_experiment[name] = path
        else:
            default = value
    return default, per_experiment


def _experiment_yamls(folder: str) -> list[Path]:
    """The experiment YAMLs in ``folder``; none: says so on stderr (the caller exits with 2)."""
    configs = sorted(Path(folder).glob("*.yaml"))
    if not configs:
        print(f"no experiment YAMLs in {folder}", file=sys.stderr)
    return configs


def cmd_run(args: argparse.Namespace) -> int:
    from tlgnn.benchmark.config import load_experiment
    from tlgnn.benchmark.runner import plan_cells, run_experiment

    results = Path(args.results or (REPO / "results" / ("quick" if args.quick else "")))
    default_data, per_experiment = _data_overrides(args.data)
    configs = _experiment_yamls(args.configs)
    if not configs:
        return 2
    if args.only and not _patterns_match(configs, args.quick, args.only):
        return 2
    start = time.perf_counter()
    if args.workers > 1:
        failed = _run_parallel(args, configs, results, default_data, per_experiment)
        print(f"total wall time {time.perf_counter() - start:.0f} s", flush=True)
        return cmd_report(args) if args.report else (1 if failed else 0)
    failed = 0
    for path in configs:
        config = load_experiment(path)
        if not plan_cells(config, args.quick, args.only):
            continue
        data = per_experiment.get(config.name, default_data)
        print(f"== {config.name} ({path.name}) -> {results / config.name}", flush=True)
        summary = run_experiment(
            config, results, data_path=data, repo_root=REPO, quick=args.quick, only=args.only, force=args.force,
            keep_going=not args.fail_fast, log=lambda msg: print(msg, flush=True), accelerator=args.accelerator,
        )
        failed += len(summary.failed)
        print(f"== {config.name}: ran {len(summary.ran)}, skipped {len(summary.skipped)} finished, "
              f"failed {len(summary.failed)} ({summary.wall_time_s:.0f} s)", flush=True)
    print(f"total wall time {time.perf_counter() - start:.0f} s", flush=True)
    if args.report:
        return cmd_report(args)
    return 1 if failed else 0


def _patterns_match(configs: list[Path], quick: bool, only: list[str]) -> bool:
    """Name each ``--only`` pattern that selects no cell (a typo would otherwise run nothing, silently); False
    when none selects any."""
    from tlgnn.benchmark.config import load_experiment
    from tlgnn.benchmark.runner import plan_cells

    experiments = [load_experiment(path) for path in configs]
    matched = 0
    for pattern in only:
        if any(plan_cells(config, quick, [pattern]) for config in experiments):
            matched += 1
            continue
        example = next((cell.key.id for config in experiments for cell in plan_cells(config, quick)), "none")
        print(f"--only {pattern!r} selects no cell (cell names look like {example!r}; experiments: "
              f"{', '.join(config.name for config in experiments)})", file=sys.stderr)
    return matched > 0


def _run_parallel(args: argparse.Namespace, configs: list[Path], results: Path, default_data: str | None,
                  per_experiment: dict[str, str]) -> int:
    """``--workers N``: warm the caches once, then run the unfinished cells (every selected cell with
    ``--force``) in N spawned processes, in the order of the ``--only`` patterns; returns the number of failed
    cells."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tlgnn.benchmark.config import load_experiment
    from tlgnn.benchmark.runner import prepare, run_group, unfinished_tasks, warm_caches

    tasks = []
    for path in configs:
        config = load_experiment(path)
        found = unfinished_tasks(config, results, args.quick, args.only, force=args.force)
        if not found:
            continue
        data = per_experiment.get(config.name, default_data)
        t0 = time.perf_counter()
        models = {cell.split("/")[1] for _, ids in found for cell in ids}
        warm_caches(config, prepare(config, data, REPO), args.quick, n_jobs=args.workers, models=models)
        print(f"== {config.name}: {sum(len(ids) for _, ids in found)} cells "
              f"(caches warm in {time.perf_counter() - t0:.0f} s)", flush=True)
        tasks += [(rank, str(path), ids, data) for rank, ids in found]
    tasks.sort(key=lambda task: task[0])  # stable: plan order within a pattern
    failed = 0
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        futures = [pool.submit(run_group, path, str(results), ids, data_path=data, repo_root=str(REPO),
                               quick=args.quick, accelerator=args.accelerator, keep_going=not args.fail_fast,
                               force=args.force)
                   for _, path, ids, data in tasks]
        for future in as_completed(futures):
            try:
                failed += len(future.result().failed)
            except Exception as err:  # a worker that died (e.g. out of memory) must not stop the others
                print(f"[failed] a worker task: {type(err).__name__}: {err}", flush=True)
                failed += 1
                if args.fail_fast:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return failed


def cmd_report(args: argparse.Namespace) -> int:
    from tlgnn.benchmark.report import write_report

    results = Path(args.results or (REPO / "results" / ("quick" if getattr(args, "quick", False) else "")))
    configs = _experiment_yamls(args.configs)
    if not configs:
        return 2
    output = write_report(results, args.output, args.figures, configs, root=REPO)
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) the benchmark cells")
    run.add_argument("--configs", default=str(REPO / "configs" / "benchmarks"), help="folder of experiment YAMLs")
    run.add_argument("--results", default=None, help="results folder (default results/, results/quick/ with --quick)")
    run.add_argument("--data", action="append", default=[], metavar="[EXP=]PATH",
                     help="table for every selected experiment, or EXP=PATH for one: a raw dataset folder "
                          "(labels.csv.gz), an aligned.parquet or its folder (default: each config's data.path)")
    run.add_argument("--quick", action="store_true", help="the configs' quick subset (folds, sizes, fewer trees)")
    run.add_argument("--only", action="append", default=[], metavar="GLOB",
                     help="cell filter on '<exp>/<model>/fold<k>_n<N>_s<seed>' (prefix globs: 'hse', 'hse/rf_*')")
    run.add_argument("--force", action="store_true", help="recompute finished cells")
    run.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu",
                     help="where the GNN kinds train (recorded in each cell's JSON)")
    run.add_argument("--workers", type=int, default=1,
                     help="run cells in this many processes (several can share one GPU), taking the --only "
                          "patterns in the order given")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell")
    run.add_argument("--report", action="store_true", help="write the report after running")
    run.add_argument("--output", default=str(REPO / "docs" / "results.md"))
    run.add_argument("--figures", default=str(REPO / "docs" / "results"))
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="aggregate finished cells into docs/results.md and PNG plots")
    report.add_argument("--configs", default=str(REPO / "configs" / "benchmarks"),
                        help="folder of experiment YAMLs (for the coverage of their grid)")
    report.add_argument("--results", default=None, help="results folder (default results/)")
    report.add_argument("--quick", action="store_true", help="report results/quick/ (default folder only)")
    report.add_argument("--output", default=str(REPO / "docs" / "results.md"))
    report.add_argument("--figures", default=str(REPO / "docs" / "results"))
    report.set_defaults(func=cmd_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
