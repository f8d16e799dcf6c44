#!/usr/bin/env python
"""Pretrain a shipped encoder on the dense PBE-level labels of Materials Project crystals (one masked multi-task run).

Data: source A of ``../shared/data/mp_multifidelity_bandgap`` (``labels.csv.gz`` + ``structures.jsonl.gz``; see
its SOURCE.md), aligned by ``configs/pretrain_data.yaml`` through the project's data layer (structures parsed and
graphs built in parallel on all cores, both cached). Targets (``--tasks``, default all four dense labels):
``gap_pbe_mp`` (``band_gap_pbe``, eV), ``e_form_mp`` (``formation_energy_per_atom``, eV/atom), ``efermi_mp``
(``efermi``, the PBE Fermi level, eV) and ``magmom_mp`` (``total_magnetization`` divided by the cell's number of
sites: magnetisation per atom, μB/atom; per atom because the encoder's embedding is a mean over atoms). A crystal
missing a label is masked out of that task's loss only.

Leakage: every crystal that carries a label a benchmark scores is EXCLUDED from pretraining (not only from its
test split): any HSE06, GLLB-SC or SCAN gap, or a formula-matched experimental gap / metal class
(``expt_*_formula_matched.csv.gz``), and every polymorph of such a crystal (same reduced formula: the benchmarks
hold out whole formula groups). So a fine-tuned model scored on those crystals has never seen their PBE gap or
formation energy, nor those of their polymorphs. The remaining crystals are split by reduced formula (seed 0) into
train / val / test (90 / 5 / 5 %); the model card reports the test (held-out) metrics of the best-validation
checkpoint.

Output (``--out``, default ``data/pretrained/``): ``<name>.ckpt`` (``--name``, default ``<encoder>_mp_dense``;
compact: fp32 weights and the self-description, no optimiser state; loads with ``tlgnn.load_model`` and
``model.init_from``), its metadata ``<name>.json`` and ``MODEL_CARD.md`` (rendered from every ``*.json``
there). The best model so far is exported after every improving epoch, so an interrupted run still leaves a
usable checkpoint. Full Lightning checkpoints
(for ``--resume``) live in ``--work-dir`` (default ``runs/pretrain/<encoder>``).

    # CPU smoke test (2 epochs on 2,000 crystals):
    python scripts/pretrain.py --encoder cgcnn --limit 2000 --max-epochs 2 --out runs/pretrain/smoke
    # GPU (bf16, batch 256, 8 loader workers, at most 6 minutes of training):
    python scripts/pretrain.py --encoder cgcnn --accelerator gpu --precision bf16-mixed --batch-size 256 \\
        --workers 8 --max-epochs 30 --max-time-min 6
    # continue an interrupted run (another --max-time-min budget):
    python scripts/pretrain.py --encoder cgcnn --resume --max-epochs 30 --max-time-min 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mp_multifidelity_bandgap"
DATA_CONFIG = ROOT / "configs" / "pretrain_data.yaml"
#: the dense source-A labels (configs/pretrain_data.yaml); ``magmom_mp`` is derived here (see derive_tasks)
TASKS = ["gap_pbe_mp", "e_form_mp", "efermi_mp", "magmom_mp"]
#: per-atom tasks made from a per-cell label of the source config: task -> (per-cell task, unit)
PER_ATOM = {"magmom_mp": ("magmom_cell_mp", "μB/atom")}
#: labels a benchmark scores: a crystal carrying any of them is excluded from pretraining
EXCLUDE_TASKS = ["gap_hse", "gap_gllbsc", "gap_scan"]
EXCLUDE_FILES = ["expt_gap_formula_matched.csv.gz", "expt_is_metal_formula_matched.csv.gz"]
ENCODERS = {
    "cgcnn": {"name": "cgcnn", "hidden_channels": 64, "num_layers": 3, "out_channels": 128},
    "m3gnet_lite": {"name": "m3gnet_lite", "hidden_channels": 64, "num_layers": 3, "out_channels": 128},
}
HEAD = {"name": "multitask", "hidden": [128]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--encoder", choices=sorted(ENCODERS), default="cgcnn")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--name", default=None, help="file stem of the published checkpoint (default <encoder>_mp_dense)")
    p.add_argument("--hidden-channels", type=int, default=None, help="encoder width (default 64)")
    p.add_argument("--num-layers", type=int, default=None, help="message-passing layers (default 3)")
    p.add_argument("--out-channels", type=int, default=None, help="embedding size (default 128)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="folder of labels.csv.gz + structures.jsonl.gz")
    p.add_argument("--out", default=str(ROOT / "data" / "pretrained"), help="where the shipped checkpoint goes")
    p.add_argument("--work-dir", default=None, help="full checkpoints and logs (default runs/pretrain/<encoder>)")
    p.add_argument("--cache-dir", default=None, help="graph / alignment cache (default: tlgnn's, ~/.cache/tlgnn)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda"])
    p.add_argument("--devices", default="1", help="number of devices (or 'auto')")
    p.add_argument("--precision", default=None, help="'32' (CPU default) or 'bf16-mixed' (GPU default)")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--max-time-min", type=float, default=None, help="wall-clock budget of this invocation's training")
    p.add_argument("--batch-size", type=int, default=None, help="graphs per batch (default 256 on GPU, 64 on CPU)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay, 1 warm-up epoch)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(8, cores - 1))")
    p.add_argument("--limit", type=int, default=None, help="use only this many (non-excluded) crystals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/checkpoints/last.ckpt")
    p.add_argument("--export-only", action="store_true",
                   help="no training: evaluate WORK_DIR/checkpoints/best.ckpt and export it with its model card")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown or not args.tasks:
        p.error(f"--tasks: unknown {unknown}; choose from {TASKS}")
    args.name = args.name or f"{args.encoder}_mp_dense"
    args.encoder_spec = dict(ENCODERS[args.encoder])
    for key in ("hidden_channels", "num_layers", "out_channels"):
        if getattr(args, key) is not None:
            args.encoder_spec[key] = getattr(args, key)
    return args


def log(msg: str) -> None:
    print(f"[pretrain {datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------- data
def excluded_ids(table: Any, data_dir: Path) -> tuple[set[str], dict[str, int]]:
    """Material ids that carry a benchmark-scored label or share its reduced formula; counts per reason."""
    import pandas as pd

    frame = table.frame
    present = set(frame["material_id"])
    out: set[str] = set()
    counts: dict[str, int] = {}
    for task in EXCLUDE_TASKS:
        ids = set(frame.loc[frame[task].notna(), "material_id"])
        counts[task] = len(ids)
        out |= ids
    for name in EXCLUDE_FILES:
        path = data_dir / name
        if path.is_file():
            ids = set(pd.read_csv(path)["material_id"].astype(str)) & present
            counts[name.split("_formula")[0] + " (formula-matched)"] = len(ids)
            out |= ids
        else:
            log(f"warning: {path} not found; its crystals cannot be excluded")
    # polymorphs of those: the benchmarks hold out whole reduced-formula groups, so their PBE gaps stay unseen too
    formulas = set(frame.loc[frame["material_id"].isin(out), "formula"])
    mates = set(frame.loc[frame["formula"].isin(formulas) & ~frame["material_id"].isin(out), "material_id"])
    counts["same reduced formula as one of these"] = len(mates)
    return out | mates, counts


def derive_tasks(table: Any) -> Any:
    """The aligned table with the :data:`PER_ATOM` tasks added: the per-cell label divided by the crystal's number
    of sites (``n_sites`` of its structure), NaN where the label is missing."""
    from tlgnn.data.table import MaterialTable
    from tlgnn.data.tasks import TaskSpec

    frame, tasks = table.frame.copy(), list(table.tasks)
    for name, (cell_task, unit) in PER_ATOM.items():
        spec = next(t for t in tasks if t.name == cell_task)
        frame[name] = frame[cell_task].to_numpy(dtype=float) / frame["n_sites"].to_numpy(dtype=float)
        tasks.append(TaskSpec(name=name, unit=unit, source=spec.source))
    return MaterialTable(frame, tasks, table.structure_file, table.structure_rows)


def data_config(args: argparse.Namespace, work: Path):
    from tlgnn.data.config import DataConfig, SplitConfig, default_cache_dir

    cfg = DataConfig(
        sources=str(DATA_CONFIG),
        source_overrides=[f"root={Path(args.data_dir).expanduser().resolve()}"],
        tasks=list(args.tasks),
        split=SplitConfig(kind="formula", seed=args.seed, val_fraction=0.05, test_fraction=0.05,
                          file=str(work / "split.json")),
        cache_dir=args.cache_dir or default_cache_dir(),
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=args.gpu,
    )
    cfg.validate()
    return cfg.resolve_paths(ROOT)


def load_pretraining_table(cfg: Any, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The aligned source-A table without the excluded crystals (and cut to ``--limit``); data facts for the card."""
    import numpy as np

    from tlgnn.data.datamodule import load_table

    t0 = time.time()
    table, _ = load_table(cfg, log=log)
    table = derive_tasks(table)
    excluded, counts = excluded_ids(table, Path(args.data_dir))
    keep = ~table.frame["material_id"].isin(excluded).to_numpy()
    rows = np.flatnonzero(keep)
    if args.limit is not None and args.limit < len(rows):
        rows = rows[np.sort(np.random.default_rng(12345).permutation(len(rows))[: args.limit])]
    used = table.subset(rows)  # keeps the (lazy) table's link to its structures
    facts = {
        "rows_in_source": int(len(table)),
        "excluded": int((~keep).sum()),
        "excluded_by": counts,
        "used": int(len(used)),
        "limit": args.limit,
        "align_s": round(time.time() - t0, 1),
    }
    log(f"table: {len(table)} crystals, {facts['excluded']} excluded (carry a scored label: {counts}), "
        f"{len(used)} used ({facts['align_s']} s)")
    return used, facts


# ---------------------------------------------------------------------------------------------------- config
def run_config(args: argparse.Namespace, data_cfg: Any, work: Path):
    from tlgnn.training.config import EarlyStoppingConfig, ModelConfig, OptimConfig, RunConfig, TrainerConfig

    return RunConfig(
        data=data_cfg,
        model=ModelConfig(encoder=dict(args.encoder_spec), head=dict(HEAD)),
        optim=OptimConfig(optimizer="adamw", lr=args.lr, weight_decay=1e-5, scheduler="cosine", warmup_epochs=1.0,
                          min_lr=args.lr * 0.01),
        trainer=TrainerConfig(
            max_epochs=args.max_epochs,
            accelerator="gpu" if args.gpu else "cpu",
            devices=int(args.devices) if str(args.devices).isdigit() else "auto",
            precision=args.precision,
            gradient_clip_val=5.0,
            early_stopping=EarlyStoppingConfig(monitor="val/loss", patience=max(10, args.max_epochs // 3)),
            seed=args.seed,
            log_every_n_steps=20,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
        ),
        output_dir=str(work),
    )


def previous_training_seconds(ckpt: Path) -> float:
    """Training time recorded by Lightning's Timer in a checkpoint (0 if none)."""
    from tlgnn.training.checkpoint import read_checkpoint

    state = read_checkpoint(ckpt).get("callbacks", {})
    for key, value in state.items():
        if key.startswith("Timer"):
            return float(value.get("time_elapsed", {}).get("train", 0.0))
    return 0.0


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical cores"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}"
    return text


# ---------------------------------------------------------------------------------------------------- main
def settle_devices(args: argparse.Namespace) -> str | None:
    """Fill in the device-dependent defaults of ``args``; a message if the device asked for is missing."""
    import torch

    args.gpu = args.accelerator in ("gpu", "cuda") or (args.accelerator == "auto" and torch.cuda.is_available())
    if args.gpu and not torch.cuda.is_available():
        return "--accelerator gpu but no CUDA device is available"
    if not Path(args.data_dir).expanduser().is_dir():
        return f"--data-dir {args.data_dir} is not a folder"
    args.precision = args.precision or ("bf16-mixed" if args.gpu else "32")
    args.batch_size = args.batch_size or (256 if args.gpu else 64)
    if args.workers is None:
        args.workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if args.gpu else 0
    if args.gpu:
        torch.set_float32_matmul_precision("high")
    return None


class Session:
    """One invocation: the selected data (set up), the run config and what the model card records."""

    def __init__(self, args: argparse.Namespace, command: str, work: Path) -> None:
        import numpy as np

        from tlgnn.data import TransferDataModule
        from tlgnn.training.console import EpochLog

        self.args, self.command, self.work = args, command, work
        data_cfg = data_config(args, work)
        t0 = time.time()
        table, self.facts = load_pretraining_table(data_cfg, args)
        self.config = run_config(args, data_cfg, work)
        self.dm = TransferDataModule(data_cfg, table=table)
        self.dm.setup("fit")
        self.setup_s = time.time() - t0
        self.facts["split"] = self.dm.split.sizes()
        log(f"graphs ready, split {self.facts['split']} ({self.setup_s:.0f} s incl. alignment)")
        mean, _ = self.dm.target_stats()
        rows = self.dm.split.test
        self.baseline = {t: float(np.nanmean(abs(self.dm.table.frame[t].to_numpy()[rows] - mean[t])))
                         for t in args.tasks}
        self.units = {t.name: t.unit for t in self.dm.tasks}
        self.progress_path = work / "progress.json"
        self.progress = json.loads(self.progress_path.read_text()) if self.progress_path.is_file() and (
            args.resume or args.export_only) else {"train_s": 0.0, "sessions": 0}
        self.fit_start: float | None = None
        self.epoch_log = EpochLog(len(self.dm.split.train), args.tasks, log, self.progress.get("curve"))

    def make_info(self, module: Any, epochs: int, metrics: dict, status: str, best_epoch: int | None = None) -> dict:
        """The JSON metadata of a published checkpoint (what the model card shows)."""
        import torch

        from tlgnn import __version__
        from tlgnn.training.model_card import CARD_KIND

        args = self.args
        elapsed = self.progress["train_s"] + (time.time() - self.fit_start if self.fit_start else 0.0)
        training = {"epochs_completed": int(epochs), "best_epoch": best_epoch, "max_epochs": args.max_epochs,
                    "batch_size": args.batch_size, "precision": args.precision, "seed": args.seed,
                    "train_wall_min": elapsed / 60.0, "setup_s": self.setup_s, "hardware": hardware(),
                    "torch": torch.__version__}
        return {
            "kind": CARD_KIND, "status": status, "encoder": args.encoder_spec, "head": HEAD, "tasks": args.tasks,
            "units": self.units, "graph": dict(module.hparams["graph"]),
            "optim": {"lr": args.lr, "weight_decay": self.config.optim.weight_decay},
            "n_parameters": int(sum(p.numel() for p in module.parameters())), "data": self.facts,
            "metrics": {**metrics, "mean_baseline_mae": self.baseline}, "training": training,
            "curve": self.epoch_log.history,
            "command": self.command, "tlgnn_version": __version__,
            "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        }


def train(session: Session, out: Path) -> str:
    """Train through :func:`tlgnn.training.run.fit` (resuming with ``--resume``); returns the card's status."""
    from tlgnn.training.model_card import PublishBest
    from tlgnn.training.run import fit

    args, work, config = session.args, session.work, session.config
    last = work / "checkpoints" / "last.ckpt"
    resuming = args.resume and last.is_file()
    if args.resume and not resuming:
        log(f"no {last} yet: starting a fresh run")
    if not resuming and last.exists():
        raise RuntimeError(f"{work} already holds a run; pass --resume or choose another --work-dir")
    spent = previous_training_seconds(last) if resuming else 0.0  # reads it safely (or refuses)
    if args.max_time_min is not None:
        total = spent + args.max_time_min * 60.0  # Lightning's Timer counts time across resumed sessions
        config.trainer.max_time = "{:02d}:{:02d}:{:02d}:{:02d}".format(
            int(total // 86400), int(total % 86400 // 3600), int(total % 3600 // 60), int(total % 60))
    log(f"training for up to {args.max_epochs} epochs" + (f" / {args.max_time_min} min" if args.max_time_min else "")
        + (f", resuming from {last}" if resuming else ""))
    session.fit_start = time.time()
    dm = session.dm
    callbacks = [session.epoch_log,
                 PublishBest(out, args.name, lambda: (dm.test_dataloader(), dm.val_dataloader()),
                             session.make_info)]
    result = fit(config, datamodule=session.dm, callbacks=callbacks, resume="last" if resuming else None, test=False)
    progress = session.progress
    progress["train_s"] += time.time() - session.fit_start
    progress["sessions"] += 1
    progress["epochs"] = result.epochs
    progress["curve"] = session.epoch_log.history
    session.progress_path.write_text(json.dumps(progress))
    session.fit_start = None
    return "finished" if result.epochs >= args.max_epochs else "stopped early (time budget or early stopping)"


def publish(session: Session, out: Path, status: str) -> Path:
    """Score ``best.ckpt`` on the held-out test and validation splits and publish it with its model card."""
    from tlgnn.training.checkpoint import load_module, read_checkpoint
    from tlgnn.training.model_card import task_scores, write_pretrained

    best_path = session.work / "checkpoints" / "best.ckpt"
    if not best_path.is_file():
        raise RuntimeError(f"no best checkpoint at {best_path}")
    best = load_module(best_path).to("cuda" if session.args.gpu else "cpu")
    raw = read_checkpoint(best_path)
    metrics = {"test": task_scores(best, session.dm.test_dataloader()),
               "val": task_scores(best, session.dm.val_dataloader())}
    info = session.make_info(best, int(session.progress.get("epochs", raw.get("epoch", 0))), metrics, status,
                             best_epoch=int(raw.get("epoch", -1)))
    path = write_pretrained(best.cpu(), out, session.args.name, info)
    for task, s in metrics["test"].items():
        log(f"held-out test {task}: MAE {s['mae']:.4f} RMSE {s['rmse']:.4f} R2 {s['r2']:.3f} (n={s['n']}); "
            f"mean-baseline MAE {session.baseline[task]:.4f}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = settle_devices(args)
    if problem:
        print(f"pretrain: {problem}", file=sys.stderr)
        return 2
    command = "python scripts/pretrain.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    work = Path(args.work_dir or ROOT / "runs" / "pretrain" / args.encoder).expanduser().resolve()
    out = Path(args.out).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log(f"encoder {args.encoder}, data {args.data_dir}, accelerator {'gpu' if args.gpu else 'cpu'}, "
        f"precision {args.precision}, batch {args.batch_size}, workers {args.workers}, work dir {work}")
    session = Session(args, command, work)
    try:
        status = "exported" if args.export_only else train(session, out)
        path = publish(session, out, status)
    except RuntimeError as err:  # a run already in the work dir, no best checkpoint, a run that stopped
        print(f"pretrain: {err}", file=sys.stderr)
        return 1
    progress = session.progress
    log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {out / 'MODEL_CARD.md'}; "
        f"training {progress['train_s'] / 60:.1f} min over {progress['sessions']} session(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
