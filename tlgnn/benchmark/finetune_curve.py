"""Learning curves on a scarce target: a pretrained encoder fine-tuned (or frozen) vs trained from scratch.

The protocol behind ``scripts/bench_finetune.py`` (which selects the data, loops over the cells resumably and
writes the report): one fixed test set, fold 0 of a 5-fold split grouped by reduced formula and balanced on labels
(:func:`tlgnn.benchmark.folds.grouped_folds`, seed 0); from the other folds N labels (nested per seed,
:func:`tlgnn.benchmark.folds.learning_curve_order`), 20 % of them (by formula, at least 5) validating. Each cell
trains through :func:`tlgnn.training.run.fit` (only ``best.ckpt``) and is scored on the test rows with
:func:`tlgnn.training.scores.regression_metrics`.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ARMS = ("scratch", "finetune", "frozen")


@dataclass
class CurveSettings:
    """What every cell of a learning curve shares (``scripts/bench_finetune.py run`` options)."""

    pretrained: str
    out: str
    target: str = "gap_hse"
    steps: int = 400
    min_epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-3
    encoder_lr_factor: float = 0.25
    accelerator: str = "cpu"
    precision: str = "32"

    def key(self) -> str:
        """The settings part of a finished cell's identity (cells of other settings are rerun)."""
        return (f"steps{self.steps}_bs{self.batch_size}_lr{self.lr}_encf{self.encoder_lr_factor}"
                f"_min{self.min_epochs}")


def sha256(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256 (recorded with each fine-tuned cell)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def done_key(r: dict[str, Any]) -> tuple:
    """A finished cell's identity: arm, size, seed, settings and (fine-tuned arms) the checkpoint's digest."""
    return (r["arm"], str(r["size"]), int(r["seed"]), r["settings"], r.get("pretrained_sha"))


def cell_key(cell: dict[str, Any], settings_key: str, pretrained_sha: str) -> tuple:
    """The :func:`done_key` that ``cell`` of a plan will have once finished with these settings and checkpoint."""
    return done_key({**cell, "settings": settings_key,
                     "pretrained_sha": pretrained_sha if cell["arm"] != "scratch" else None})


def plan(table: Any, sizes: list[str], seeds: list[int],
         arms: list[str]) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Fixed test rows, the training pool, and the cells (``{"arm", "size", "seed"}``) to run."""
    from tlgnn.benchmark.folds import grouped_folds

    formulas = table.frame["formula"].to_numpy()
    folds = grouped_folds(formulas, np.ones(len(table)), n_folds=5, seed=0)
    test = np.flatnonzero(folds == 0)
    pool = np.flatnonzero(folds != 0)
    cells = [{"arm": arm, "size": str(size), "seed": seed} for size in sizes for seed in seeds for arm in arms]
    return test, pool, cells


def cell_rows(table: Any, pool: Any, size: str, seed: int) -> tuple[Any, Any]:
    """Train and validation rows of a cell: the first N of the seeded pool order, 20 % (by formula) validate."""
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
def cell_config(cell: dict[str, Any], settings: CurveSettings, data: Any, work: Path, n_tr: int,
                encoder: dict[str, Any]):
    """The run config of one cell: the arm's initialisation and learning rates, the step budget in epochs."""
    from tlgnn.training.config import (EarlyStoppingConfig, FinetuneConfig, ModelConfig, OptimConfig, RunConfig,
                                       TrainerConfig)

    batches = math.ceil(n_tr / settings.batch_size)
    epochs = max(settings.min_epochs, math.ceil(settings.steps / batches))
    pretrained = cell["arm"] in ("finetune", "frozen")
    finetune = FinetuneConfig()
    if cell["arm"] == "finetune":
        finetune = FinetuneConfig(encoder_lr=settings.lr * settings.encoder_lr_factor, head_lr=settings.lr)
    elif cell["arm"] == "frozen":
        finetune = FinetuneConfig(freeze="encoder")
    return RunConfig(
        data=data,
        model=ModelConfig(encoder=dict(encoder), head={"name": "single", "task": settings.target, "hidden": [64]},
                          init_from=str(settings.pretrained) if pretrained else None, finetune=finetune),
        optim=OptimConfig(optimizer="adamw", lr=settings.lr, weight_decay=1e-5, scheduler="cosine", warmup_epochs=0.0),
        trainer=TrainerConfig(max_epochs=epochs, accelerator=settings.accelerator, devices=1, precision=settings.precision,
                              gradient_clip_val=5.0, seed=cell["seed"], num_sanity_val_steps=0,
                              enable_progress_bar=False, log_every_n_steps=max(1, batches),
                              early_stopping=EarlyStoppingConfig(monitor="val/loss", patience=max(10, epochs // 3))),
        output_dir=str(work),
    )


def run_cell(cell: dict[str, Any], table: Any, cache_dir: str, test: Any, pool: Any, settings: CurveSettings,
             encoder: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
    """Train one cell through :func:`tlgnn.training.run.fit` (only ``best.ckpt``: a cell is never resumed) and
    score its best epoch on the fixed test rows."""
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
    work = Path(settings.out) / "cells" / f"{cell['arm']}_n{cell['size']}_s{cell['seed']}"
    shutil.rmtree(work, ignore_errors=True)
    split_file = save_split(split, sub, work / "split.json")
    data = DataConfig(aligned=str(work), tasks=[settings.target], batch_size=settings.batch_size, cache_dir=cache_dir,
                      graph=GraphConfig(cutoff=float(graph["cutoff"]), max_neighbors=graph["max_neighbors"]),
                      split=SplitConfig(kind="random", seed=cell["seed"], file=str(split_file)))
    config = cell_config(cell, settings, data, work, n_tr, encoder)
    dm = TransferDataModule(data, table=sub)
    result = fit(config, datamodule=dm, checkpoints="best", test=False)
    best = result.best_module()
    got = predict_batches(best, dm.test_dataloader())
    y_true = got.y[:, 0]
    scores = regression_metrics(y_true=y_true, y_pred=got.preds[settings.target])
    pretrained = config.model.init_from is not None
    out = {
        **cell,
        "n_train": n_tr, "n_val": n_va, "n_test": int(len(test)),
        "mae": scores["mae"], "rmse": scores["rmse"], "r2": scores["r2"],
        "mean_baseline_mae": float(np.abs(y_true - sub.frame[settings.target].to_numpy()[:n_tr].mean()).mean()),
        "epochs": result.epochs, "max_epochs": config.trainer.max_epochs,
        "best_epoch": int(read_checkpoint(result.best_checkpoint)["epoch"]),
        "steps": result.steps, "time_s": round(time.time() - t0, 1),
        "pretrained": Path(settings.pretrained).name if pretrained else None,
        "pretrained_sha": sha256(Path(settings.pretrained)) if pretrained else None,
        "settings": settings.key(),
        "device": "gpu" if str(best.device).startswith("cuda") else "cpu",
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    shutil.rmtree(work, ignore_errors=True)
    return out


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


__all__ = ["ARMS", "CurveSettings", "cell_config", "cell_rows", "done_key", "plan", "run_cell", "sha256",
           "summarise"]
