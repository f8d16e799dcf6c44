#!/usr/bin/env python
"""Learning curves on scarce HSE06 band gaps: fine-tuning the shipped pretrained encoder vs training from scratch.

Data: the HSE06 gaps (``gap_hse``, 3,500 crystals) of ``../shared/data/mp_multifidelity_bandgap``, aligned by
``configs/pretrain_data.yaml`` (the same table the encoder was pretrained from; the pretraining EXCLUDED every
crystal with an HSE label, so no crystal scored here was seen in pretraining, not even its PBE gap).

Protocol: one fixed test set — fold 0 of a 5-fold split grouped by reduced formula and balanced on labels
(``tlgnn.benchmark.folds.grouped_folds``, seed 0), ~700 crystals — for every cell. From the other folds, N labels
(50, 100, 200, 400, all; nested subsets per seed, ``learning_curve_order``) are given to the model; 20 % of them
(grouped by formula, at least 5) validate (best epoch, early stopping), the rest train. Arms, all with the same
encoder architecture, single-task head, optimiser and step budget:

* ``scratch``: random initialisation, learning rate ``--lr`` everywhere;
* ``finetune``: encoder from ``--pretrained`` (``model.init_from``), encoder at ``--lr * --encoder-lr-factor``,
  head at ``--lr``;
* ``frozen``: encoder from ``--pretrained`` frozen, only the head trains (a linear-probe-like reference).

Each cell runs the same code path as ``tlgnn fit`` (``tlgnn.training.run.fit`` with only the best-validation
checkpoint) and is appended to ``OUT/results.jsonl``; finished cells are skipped when rerun (resumable). ``report``
writes the table and the plot into ``docs/finetuning.md`` (between the generated markers) and
``docs/figures/finetune_learning_curve.png``, or into ``--doc PATH`` and ``figures/`` beside it.

    python scripts/bench_finetune.py run --quick          # N in {50, 100, 200}, seeds 0-1, ~1 h on 2 CPU cores
    python scripts/bench_finetune.py run                  # N in {50, 100, 200, 400, all}, seeds 0-2
    python scripts/bench_finetune.py run --accelerator gpu --max-time-min 5
    python scripts/bench_finetune.py report
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

from tlgnn.benchmark.finetune_curve import ARMS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mp_multifidelity_bandgap"
DATA_CONFIG = ROOT / "configs" / "pretrain_data.yaml"
DEFAULT_CKPT = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"
DOC = ROOT / "docs" / "finetuning.md"
FIGURE = ROOT / "docs" / "figures" / "finetune_learning_curve.png"
TARGET = "gap_hse"
BEGIN, END = "<!-- BEGIN GENERATED: scripts/bench_finetune.py report -->", "<!-- END GENERATED -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (missing) cells")
    run.add_argument("--data-dir", default=str(DEFAULT_DATA))
    run.add_argument("--pretrained", default=str(DEFAULT_CKPT), help="pretrained checkpoint (compact or Lightning)")
    run.add_argument("--sizes", nargs="+", default=None, help="training label counts (ints or 'all')")
    run.add_argument("--seeds", nargs="+", type=int, default=None)
    run.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    run.add_argument("--quick", action="store_true", help="N in {50, 100, 200}, seeds 0-1, 150 steps")
    run.add_argument("--steps", type=int, default=None, help="optimiser steps per cell (default 400; quick 150)")
    run.add_argument("--min-epochs", type=int, default=8)
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--lr", type=float, default=2e-3)
    run.add_argument("--encoder-lr-factor", type=float, default=0.25)
    run.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu", "auto"])
    run.add_argument("--precision", default="32")
    run.add_argument("--max-time-min", type=float, default=None, help="start no new cell after this many minutes")
    run.add_argument("--cache-dir", default=None)
    run.add_argument("--out", default=str(ROOT / "runs" / "bench_finetune"))
    rep = sub.add_parser("report", help="table + plot into docs/finetuning.md")
    rep.add_argument("--out", default=str(ROOT / "runs" / "bench_finetune"))
    rep.add_argument("--results", default=None, help="results.jsonl (default OUT/results.jsonl)")
    rep.add_argument("--doc", default=str(DOC),
                     help="Markdown file to write the table into, between the generated markers; the plot goes to "
                          "figures/ beside it (default: docs/finetuning.md; give another for a throwaway run)")
    return p.parse_args(argv)


def log(msg: str) -> None:
    print(f"[bench_finetune {datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------- data
def load_hse_table(args: argparse.Namespace):
    """The aligned table restricted to crystals with an HSE gap (graphs cached)."""
    import numpy as np

    from tlgnn.data.config import DataConfig, default_cache_dir
    from tlgnn.data.datamodule import load_table

    cfg = DataConfig(sources=str(DATA_CONFIG), source_overrides=[f"root={Path(args.data_dir).resolve()}"],
                     tasks=[TARGET], cache_dir=args.cache_dir or default_cache_dir())
    cfg.resolve_paths(ROOT)
    table, _ = load_table(cfg, log=log)
    return table.subset(np.flatnonzero(table.frame[TARGET].notna().to_numpy())), cfg


def settings_of(args: argparse.Namespace):
    """The package's :class:`~tlgnn.benchmark.finetune_curve.CurveSettings` from the ``run`` options."""
    from tlgnn.benchmark.finetune_curve import CurveSettings

    return CurveSettings(pretrained=args.pretrained, out=args.out, target=TARGET, steps=args.steps,
                         min_epochs=args.min_epochs, batch_size=args.batch_size, lr=args.lr,
                         encoder_lr_factor=args.encoder_lr_factor, accelerator=args.accelerator,
                         precision=args.precision)


def run(args: argparse.Namespace) -> int:
    """Run the cells not yet in ``OUT/results.jsonl`` (one JSON line each), until ``--max-time-min``."""
    from tlgnn.benchmark.finetune_curve import cell_key, done_key, plan, run_cell, sha256
    from tlgnn.training.checkpoint import read_pretrained

    args.steps = args.steps or (150 if args.quick else 400)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    ckpt = Path(args.pretrained).resolve()
    if not ckpt.is_file():
        print(f"bench_finetune: pretrained checkpoint not found: {ckpt} (run scripts/pretrain.py)", file=sys.stderr)
        return 2
    args.pretrained = str(ckpt)
    pre = read_pretrained(ckpt)
    encoder, graph = pre.encoder_spec, pre.graph
    settings = settings_of(args)
    start = time.time()
    table, data_cfg = load_hse_table(args)
    sizes = args.sizes or (["50", "100", "200"] if args.quick else ["50", "100", "200", "400", "all"])
    test, pool, cells = plan(table, sizes, args.seeds or ([0, 1] if args.quick else [0, 1, 2]), args.arms)
    sha = sha256(ckpt)
    log(f"{len(table)} HSE crystals: test {len(test)} (fixed), pool {len(pool)}; {len(cells)} cells; "
        f"encoder {encoder} from {ckpt.name} ({sha})")
    done = set()
    if results_path.is_file():
        done = {done_key(json.loads(line)) for line in results_path.read_text().splitlines() if line.strip()}
    for cell in cells:
        if cell_key(cell, settings.key(), sha) in done:
            continue
        if args.max_time_min is not None and time.time() - start > args.max_time_min * 60:
            log("time budget spent; rerun to continue")
            break
        result = run_cell(cell, table, data_cfg.cache_dir, test, pool, settings, encoder, graph)
        with results_path.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        log(f"{cell['arm']:>8} N={cell['size']:>4} seed {cell['seed']}: test MAE {result['mae']:.3f} eV "
            f"(R2 {result['r2']:.2f}; {result['epochs']} epochs, best {result['best_epoch']}; {result['time_s']:.0f} s)")
    return 0


# ---------------------------------------------------------------------------------------------------- report
def _order(n: str) -> float:
    return math.inf if n == "all" else float(n)


def report(args: argparse.Namespace) -> int:
    import matplotlib

    from tlgnn.benchmark.finetune_curve import summarise

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = Path(args.doc)
    figure = doc.parent / "figures" / FIGURE.name
    path = Path(args.results or Path(args.out) / "results.jsonl")
    if not path.is_file():
        print(f"bench_finetune: no results at {path}", file=sys.stderr)
        return 2
    results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    frame, agg = summarise(results)
    sizes = sorted(agg["n"].unique(), key=_order)
    arms = [a for a in ARMS if a in set(agg["arm"])]
    cell = {(r.n, r.arm): r for r in agg.itertuples()}
    lines = [BEGIN, "",
             f"Test MAE (eV) of the HSE06 gap, mean ± standard deviation over seeds; fixed test set of "
             f"{int(frame['n_test'].iloc[0])} crystals. Checkpoint `{frame['pretrained'].dropna().iloc[0]}` "
             f"(sha256 {frame['pretrained_sha'].dropna().iloc[0]}); settings `{frame['settings'].iloc[0]}`; "
             f"device {', '.join(sorted(frame['device'].unique()))}.", "",
             "| N labels (train + val) | " + " | ".join(arms) + " | fine-tune gain | mean predictor |",
             "| --- | " + " | ".join("---" for _ in arms) + " | --- | --- |"]
    for n in sizes:
        row = [n if n != "all" else f"all ({int(cell[(n, arms[0])].n_train)} train)"]
        for arm in arms:
            r = cell.get((n, arm))
            row.append("–" if r is None else f"{r.mae:.3f} ± {0 if math.isnan(r.mae_sd) else r.mae_sd:.3f} "
                                               f"(n={r.seeds})")
        s, f = cell.get((n, "scratch")), cell.get((n, "finetune"))
        row.append(f"{100 * (s.mae - f.mae) / s.mae:+.0f} %" if s is not None and f is not None else "–")
        row.append(f"{cell[(n, arms[0])].base:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"![learning curves](figures/{figure.name})", "", END]
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = {n: (i, n) for i, n in enumerate(sizes)}
    for arm, marker in zip(arms, "osd"):
        pts = [(xs[n][0], cell[(n, arm)]) for n in sizes if (n, arm) in cell]
        ax.errorbar([p[0] for p in pts], [p[1].mae for p in pts],
                    yerr=[0 if math.isnan(p[1].mae_sd) else p[1].mae_sd for p in pts], marker=marker, capsize=3,
                    label=arm)
    ax.plot(range(len(sizes)), [cell[(n, arms[0])].base for n in sizes], "k:", label="mean predictor")
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set_xlabel("HSE06 labels available (train + val)")
    ax.set_ylabel("test MAE (eV)")
    ax.set_title("HSE06 gap: pretrained encoder vs scratch")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    block = "\n".join(lines)
    text = doc.read_text() if doc.is_file() else f"# Fine-tuning\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
    print("\n".join(lines[2:-3]))
    log(f"wrote {doc} and {figure}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
