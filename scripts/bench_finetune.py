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
import hashlib
import json
import math
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mp_multifidelity_bandgap"
DATA_CONFIG = ROOT / "configs" / "pretrain_data.yaml"
DEFAULT_CKPT = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"
DOC = ROOT / "docs" / "finetuning.md"
FIGURE = ROOT / "docs" / "figures" / "finetune_learning_curve.png"
TARGET = "gap_hse"
ARMS = ("scratch", "finetune", "frozen")
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


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


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


def plan(table: Any, args: argparse.Namespace) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Fixed test rows, the training pool, and the cells to run."""
    import numpy as np

    from tlgnn.benchmark.folds import grouped_folds

    formulas = table.frame["formula"].to_numpy()
    folds = grouped_folds(formulas, np.ones(len(table)), n_folds=5, seed=0)
    test = np.flatnonzero(folds == 0)
    pool = np.flatnonzero(folds != 0)
    sizes = args.sizes or (["50", "100", "200"] if args.quick else ["50", "100", "200", "400", "all"])
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    cells = [{"arm": arm, "size": str(size), "seed": seed} for size in sizes for seed in seeds for arm in args.arms]
    return test, pool, cells


def cell_rows(table: Any, pool: Any, size: str, seed: int) -> tuple[Any, Any]:
    """Train and validation rows of a cell: the first N of the seeded pool order, 20 % (by formula) validate."""
    import numpy as np

    from tlgnn.benchmark.folds import learning_curve_order

    order = learning_curve_order(pool, fold=0, seed=seed)
    chosen = order if size == "all" else order[: int(size)]
    formulas = table.frame["formula"].to_numpy()[chosen]
    rng = np.random.default_rng([seed, 31])
    uniq = np.unique(formulas)
    uniq = uniq[rng.permutation(len(uniq))]
    n_val = max(5, int(round(0.2 * len(chosen))))
    val_formulas: set[str] = set()
    count = 0
    for f in uniq:
        if count >= n_val:
            break
        val_formulas.add(f)
        count += int((formulas == f).sum())
    is_val = np.isin(formulas, list(val_formulas))
    return chosen[~is_val], chosen[is_val]


# ---------------------------------------------------------------------------------------------------- one cell
def cell_config(cell: dict[str, Any], args: argparse.Namespace, data: Any, work: Path, n_tr: int,
                encoder: dict[str, Any]):
    """The run config of one cell: the arm's initialisation and learning rates, the step budget in epochs."""
    from tlgnn.training.config import (EarlyStoppingConfig, FinetuneConfig, ModelConfig, OptimConfig, RunConfig,
                                       TrainerConfig)

    batches = math.ceil(n_tr / args.batch_size)
    epochs = max(args.min_epochs, math.ceil(args.steps / batches))
    pretrained = cell["arm"] in ("finetune", "frozen")
    finetune = FinetuneConfig()
    if cell["arm"] == "finetune":
        finetune = FinetuneConfig(encoder_lr=args.lr * args.encoder_lr_factor, head_lr=args.lr)
    elif cell["arm"] == "frozen":
        finetune = FinetuneConfig(freeze="encoder")
    return RunConfig(
        data=data,
        model=ModelConfig(encoder=dict(encoder), head={"name": "single", "task": TARGET, "hidden": [64]},
                          init_from=str(args.pretrained) if pretrained else None, finetune=finetune),
        optim=OptimConfig(optimizer="adamw", lr=args.lr, weight_decay=1e-5, scheduler="cosine", warmup_epochs=0.0),
        trainer=TrainerConfig(max_epochs=epochs, accelerator=args.accelerator, devices=1, precision=args.precision,
                              gradient_clip_val=5.0, seed=cell["seed"], num_sanity_val_steps=0,
                              enable_progress_bar=False, log_every_n_steps=max(1, batches),
                              early_stopping=EarlyStoppingConfig(monitor="val/loss", patience=max(10, epochs // 3))),
        output_dir=str(work),
    )


def run_cell(cell: dict[str, Any], table: Any, data_cfg: Any, test: Any, pool: Any, args: argparse.Namespace,
             encoder: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """Train one cell through :func:`tlgnn.training.run.fit` (only ``best.ckpt``: a cell is never resumed) and
    score its best epoch on the fixed test rows."""
    import numpy as np

    from tlgnn.data import TransferDataModule
    from tlgnn.data.config import DataConfig, GraphConfig, SplitConfig
    from tlgnn.data.splits import Split, save_split
    from tlgnn.training.checkpoint import read_checkpoint
    from tlgnn.training.inference import predict_batches
    from tlgnn.training.run import fit
    from tlgnn.training.scores import regression_metrics

    t0 = time.time()
    train, val = cell_rows(table, pool, cell["size"], cell["seed"])
    rows = np.concatenate([train, val, test])
    sub = table.subset(rows)
    n_tr, n_va = len(train), len(val)
    split = Split(np.arange(n_tr), np.arange(n_tr, n_tr + n_va), np.arange(n_tr + n_va, len(rows)), "fixed",
                  cell["seed"], {"group_by": "formula"})
    work = Path(args.out) / "cells" / f"{cell['arm']}_n{cell['size']}_s{cell['seed']}"
    shutil.rmtree(work, ignore_errors=True)
    split_file = save_split(split, sub, work / "split.json")
    data = DataConfig(aligned=str(work), tasks=[TARGET], batch_size=args.batch_size, cache_dir=data_cfg.cache_dir,
                      graph=GraphConfig(cutoff=float(graph["cutoff"]), max_neighbors=graph["max_neighbors"]),
                      split=SplitConfig(kind="random", seed=cell["seed"], file=str(split_file)))
    config = cell_config(cell, args, data, work, n_tr, encoder)
    dm = TransferDataModule(data, table=sub)
    result = fit(config, datamodule=dm, checkpoints="best", test=False)
    best = result.best_module()
    got = predict_batches(best, dm.test_dataloader())
    y_true = got.y[:, 0]
    scores = regression_metrics(y_true=y_true, y_pred=got.preds[TARGET])
    pretrained = config.model.init_from is not None
    out = {
        **cell,
        "n_train": n_tr, "n_val": n_va, "n_test": int(len(test)),
        "mae": scores["mae"], "rmse": scores["rmse"], "r2": scores["r2"],
        "mean_baseline_mae": float(np.abs(y_true - sub.frame[TARGET].to_numpy()[:n_tr].mean()).mean()),
        "epochs": result.epochs, "max_epochs": config.trainer.max_epochs,
        "best_epoch": int(read_checkpoint(result.best_checkpoint)["epoch"]),
        "steps": result.steps, "time_s": round(time.time() - t0, 1),
        "pretrained": Path(args.pretrained).name if pretrained else None,
        "pretrained_sha": sha256(Path(args.pretrained)) if pretrained else None,
        "settings": settings_key(args),
        "device": "gpu" if str(best.device).startswith("cuda") else "cpu",
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    shutil.rmtree(work, ignore_errors=True)
    return out


def settings_key(args: argparse.Namespace) -> str:
    return f"steps{args.steps}_bs{args.batch_size}_lr{args.lr}_encf{args.encoder_lr_factor}_min{args.min_epochs}"


def done_key(r: dict[str, Any]) -> tuple:
    return (r["arm"], str(r["size"]), int(r["seed"]), r["settings"], r.get("pretrained_sha"))


def run(args: argparse.Namespace) -> int:
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
    start = time.time()
    table, data_cfg = load_hse_table(args)
    test, pool, cells = plan(table, args)
    log(f"{len(table)} HSE crystals: test {len(test)} (fixed), pool {len(pool)}; {len(cells)} cells; "
        f"encoder {encoder} from {ckpt.name} ({sha256(ckpt)})")
    done = set()
    if results_path.is_file():
        done = {done_key(json.loads(line)) for line in results_path.read_text().splitlines() if line.strip()}
    sha = sha256(ckpt)
    for cell in cells:
        key = (cell["arm"], cell["size"], cell["seed"], settings_key(args),
               sha if cell["arm"] != "scratch" else None)
        if key in done:
            continue
        if args.max_time_min is not None and time.time() - start > args.max_time_min * 60:
            log("time budget spent; rerun to continue")
            break
        result = run_cell(cell, table, data_cfg, test, pool, args, encoder, graph)
        with results_path.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
        log(f"{cell['arm']:>8} N={cell['size']:>4} seed {cell['seed']}: test MAE {result['mae']:.3f} eV "
            f"(R2 {result['r2']:.2f}; {result['epochs']} epochs, best {result['best_epoch']}; {result['time_s']:.0f} s)")
    return 0


# ---------------------------------------------------------------------------------------------------- report
def summarise(results: list[dict[str, Any]]):
    import pandas as pd

    frame = pd.DataFrame(results)
    frame["n"] = frame["size"].astype(str)
    # keep the latest settings / checkpoint per arm
    latest = frame.sort_values("written").groupby("arm")[["settings", "pretrained_sha"]].last()
    keep = frame.apply(lambda r: r["settings"] == latest.loc[r["arm"], "settings"]
                       and (r["arm"] == "scratch" or r["pretrained_sha"] == latest.loc[r["arm"], "pretrained_sha"]),
                       axis=1)
    frame = frame[keep]
    agg = frame.groupby(["n", "arm"]).agg(mae=("mae", "mean"), mae_sd=("mae", "std"), r2=("r2", "mean"),
                                          seeds=("seed", "nunique"), n_train=("n_train", "mean"),
                                          time_s=("time_s", "mean"), base=("mean_baseline_mae", "mean"))
    return frame, agg.reset_index()


def _order(n: str) -> float:
    return math.inf if n == "all" else float(n)


def report(args: argparse.Namespace) -> int:
    import matplotlib

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
