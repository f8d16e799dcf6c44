"""GNN model kinds of the transfer benchmark: ``run_gnn_cell(cell) -> CellOutput`` on top of :mod:`tlgnn.training`.

Every kind trains a crystal-graph encoder (CGCNN by default) with one head, on the rows the runner allows
(``cell.frame`` is already masked: the scarce target only on ``train_target_idx``, no label of a test crystal
except the low-fidelity one in the ``low_fidelity_known`` regime). Kinds (``T`` = target, ``P`` = low fidelity):

==================  ==================================================================================
``gnn_single``      single head on ``T`` only (regression or classification)
``gnn_union``       naive union: one task whose label is ``T`` where given, else ``P`` (a material with both
                    contributes one row, with its ``T`` label)
``gnn_multitask``   multitask head over ``[P, T]`` (+ the auxiliary columns with ``use_auxiliary``)
``gnn_difference``  difference head, chain ``[P, T]``; ``use_known_low`` in the ``low_fidelity_known`` regime
``gnn_fidelity``    fidelity-embedding head over ``[P, T]``
``gnn_finetune``    single head on ``T`` from an encoder pretrained on ``P`` (``init_from: fold`` = a model
                    trained on the fold's training rows' ``P`` labels only, or a checkpoint path)
``gnn_elv``         explicit latent variables: latents ``[P, shift]``, ``T = P + softplus(shift)`` (default),
                    or the latents/expressions given in ``options.head`` (TinNet)
==================  ==================================================================================

Rows: the ``train_target_idx`` rows plus, for the kinds that learn from ``P``, a seeded subsample of at most
``low_rows`` other training rows with a ``P`` label. A grouped validation set (``val_fraction`` of the scarce
training labels, whole CV groups) is carved out for early stopping. Each cell writes ``aligned.parquet``,
``split.json`` and ``run/config.yaml`` into its ``work_dir`` (so ``tlgnn fit --config work/.../run/config.yaml``
reproduces it) and trains with :func:`tlgnn.training.run.fit`.

Extra prediction columns: ``low_pred`` (structure only, regression: the model's own ``P`` prediction — the
multitask/fidelity ``P`` output, the difference head's base, the ELV latent; ``gnn_single`` and ``gnn_union``
take it from the fold's separate ``P`` model, so their correction error is that of two separately predicted
gaps), ``delta_pred`` (difference: Δ; ELV: ``T − P`` latent form) and ``low_used`` (difference: the ``P`` value
the prediction was built on — the given label where known).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlgnn.benchmark.config import ModelEntry
from tlgnn.benchmark.models import CellInput, CellOutput
from tlgnn.utils.config import ConfigError, from_dict, to_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
KINDS = ("single", "union", "multitask", "difference", "fidelity", "finetune", "elv")
#: options of the experiment-wide ``quick.options`` meant for the forests; GNN kinds ignore them.
FOREST_KEYS = {"n_estimators", "max_features", "min_samples_leaf", "n_jobs", "low_forest", "max_depth"}


@dataclass
class GNNOptions:
    """Options of a GNN model entry (``models[i].options``); ``quick`` overrides them in ``--quick`` mode.

    Attributes:
        encoder: encoder spec (``tlgnn.models.ENCODERS``).
        hidden: hidden widths of the head's readout MLPs.
        head: head options merged over the kind's default head (e.g. the TinNet ELV latents/expressions).
        tasks: label columns to train on (default per kind; the target is always added).
        use_auxiliary: multitask: also train on the experiment's auxiliary label columns.
        low_rows: at most this many training rows without a visible target label join as ``P``-only rows
            (seeded subsample; kinds that learn from ``P``).
        epochs: epochs to train at least ...
        min_steps: ... or as many as give this many optimiser steps (small training sets) ...
        max_epochs: ... but never more than this.
        patience: early-stopping patience in epochs (at least a quarter of the planned epochs).
        batch_size: graphs per batch.
        lr, weight_decay: AdamW settings (cosine schedule).
        val_fraction, min_val: validation share of the scarce training labels (whole CV groups), at least
            ``min_val`` labels.
        cpu_threads: torch threads (1: robust on a shared machine).
        low_model: ``gnn_single``/``gnn_union`` (structure only): predict ``P`` of the test rows with the fold's
            separate ``P`` model, for the correction metric.
        init_from: ``gnn_finetune``: ``fold`` (pretrain on the fold's training ``P`` labels) or a checkpoint path
            (relative to the repository root).
        finetune: ``model.finetune`` settings of the fine-tuning run.
        init_intercept: ELV: a parameter initialised to the mean training target (e.g. ``c`` of a linear
            expression).
        elv_shift_stats: scale of the default ELV form's ``shift`` latent: ``target`` (mean 0, std of ``T``: the
            head's default) or ``paired`` (from ``T − P`` on the training rows with both labels, see
            :func:`paired_shift_stats`).
        cache_dir: graph and structure cache (relative to the repository root).
        cutoff, max_neighbors: graph settings.
        frame_kind: extxyz frames holding the structures (TinNet ``OH``).
        keep_checkpoints: keep the cell's checkpoints in ``work_dir`` (else deleted after prediction).
        freeze_encoder: keep the whole encoder frozen (``model.finetune.freeze: encoder``): the head trains on the
            encoder's cached embeddings (:mod:`tlgnn.embeddings`); the frozen-embedding kinds. A pretrained
            encoder either loads its own weights (``chgnet``) or comes from ``encoder_from``.
        condition_on_known_low: difference kinds in the ``low_fidelity_known`` regime: the Δ nets also read the known
            ``P`` (Δ(g, y_low), the head's ``condition_on_known_low``); off by default, as when the ``gnn_difference``
            cells were computed.
        encoder_from: a tlgnn checkpoint (relative to the repository root) whose encoder weights the model starts
            from (``model.init_from``), e.g. the shipped ``data/pretrained/cgcnn_mp_pbe_eform.ckpt``; for a
            ``stack`` encoder a list, one checkpoint (or ``null``) per stacked encoder.
        ensemble: ``model.ensemble`` of the run (e.g. ``{members: 5, bootstrap: true}``): the cell's predictions
            get ``y_std``, ``y_std_raw``, ``y_lower``/``y_upper`` and ``member_<i>`` columns (regression).
        quick: overrides applied with ``--quick``.
    """

    encoder: dict[str, Any] = field(default_factory=lambda: {"name": "cgcnn", "hidden_channels": 64,
                                                              "num_layers": 3, "out_channels": 128})
    hidden: list[int] = field(default_factory=lambda: [64])
    head: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] | None = None
    use_auxiliary: bool = False
    low_rows: int = 4000
    epochs: int = 40
    min_steps: int = 600
    max_epochs: int = 300
    patience: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-5
    val_fraction: float = 0.1
    min_val: int = 5
    cpu_threads: int = 1
    low_model: bool = True
    init_from: str = "fold"
    finetune: dict[str, Any] = field(default_factory=lambda: {"encoder_lr": 5e-4, "head_lr": 2e-3})
    init_intercept: str | None = None
    elv_shift_stats: str = "target"
    cache_dir: str = "runs/cache"
    cutoff: float = 8.0
    max_neighbors: int | None = 12
    frame_kind: str = "OH"
    keep_checkpoints: bool = False
    freeze_encoder: bool = False
    condition_on_known_low: bool = False
    encoder_from: str | list[str | None] | None = None
    ensemble: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.low_rows < 0:
            raise ConfigError("low_rows", f"must be >= 0, got {self.low_rows}")
        if not 1 <= self.epochs <= self.max_epochs:
            raise ConfigError("epochs", f"must be in [1, max_epochs={self.max_epochs}], got {self.epochs}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.elv_shift_stats not in ("target", "paired"):
            raise ConfigError("elv_shift_stats", f"must be 'target' or 'paired', got {self.elv_shift_stats!r}")
        if self.elv_shift_stats == "paired" and self.head:
            raise ConfigError("elv_shift_stats", "'paired' applies to the default ELV form only, not to options.head")


def gnn_options(cell: CellInput) -> GNNOptions:
    """The cell's validated options (``quick`` overrides merged in ``--quick`` mode; forest keys ignored)."""
    return entry_options(cell.model, cell.quick)


def entry_options(model: ModelEntry, quick: bool) -> GNNOptions:
    """A model entry's validated GNN options (``quick`` overrides merged when ``quick``)."""
    raw = {k: v for k, v in model.options.items() if k not in FOREST_KEYS}
    if quick:
        raw = {**raw, **dict(raw.get("quick") or {})}
    return from_dict(GNNOptions, raw, prefix=f"models[{model.name}].options")


def _kind(cell: CellInput) -> str:
    kind = cell.model.kind.removeprefix("gnn_")
    if kind not in KINDS:
        raise ConfigError(f"models[{cell.model.name}].kind", f"unknown GNN kind {cell.model.kind!r}")
    exp = cell.experiment
    needs_low = kind in ("union", "multitask", "difference", "fidelity", "finetune") or (
        kind == "elv" and not cell.model.options.get("head"))
    if needs_low and exp.low is None:
        raise ConfigError(f"models[{cell.model.name}].kind", f"{cell.model.kind} needs the experiment's 'low' column")
    known = ((cell.model.options.get("head") or {}).get("context") or {}).get("known") or []
    if cell.regime == "low_fidelity_known" and kind != "difference" and exp.low not in known:
        raise ConfigError(f"models[{cell.model.name}].regime",
                          "low_fidelity_known applies to gnn_difference (use_known_low) and to heads that read the "
                          f"low fidelity as context (options.head.context.known: [{exp.low}]); the others take no "
                          "label as input")
    if exp.kind == "classification" and kind not in ("single", "multitask", "finetune"):
        raise ConfigError(f"models[{cell.model.name}].kind", f"{cell.model.kind} needs a regression target")
    return kind


# ------------------------------------------------------------------------------------------------ rows
def _low_pool(cell: CellInput, rows: np.ndarray) -> np.ndarray:
    low = cell.low_values(rows)
    return rows[np.isfinite(low)]


def low_only_rows(cell: CellInput, n: int, exclude: np.ndarray) -> np.ndarray:
    """At most ``n`` training rows (not in ``exclude``) with a ``P`` label; a seeded subset per (fold, seed)."""
    if cell.experiment.low is None or n == 0:
        return np.zeros(0, dtype=np.int64)
    pool = np.setdiff1d(_low_pool(cell, cell.train_idx), exclude)
    rng = np.random.default_rng([cell.seed, cell.fold, 27644437])
    return np.sort(rng.permutation(pool)[:n])


def validation_rows(cell: CellInput, labelled: np.ndarray, opts: GNNOptions) -> np.ndarray:
    """Whole CV groups of ``labelled`` rows holding about ``val_fraction`` of them (at least ``min_val``)."""
    groups = cell.groups[labelled]
    unique = np.unique(groups)
    rng = np.random.default_rng([cell.seed, cell.fold, 15485863])
    order = unique[rng.permutation(len(unique))]
    want = max(opts.min_val, int(round(opts.val_fraction * len(labelled))))
    want = min(want, len(labelled) // 2)
    counts = pd.Series(groups).value_counts()
    chosen, total = [], 0
    for g in order:
        if total >= want:
            break
        chosen.append(g)
        total += int(counts[g])
    return labelled[np.isin(groups, chosen)]


# ------------------------------------------------------------------------------------------------ data
def _structures(cell: CellInput, opts: GNNOptions) -> pd.DataFrame:
    """Structures (pymatgen JSON + cache key) of every row of the experiment table, parsed once per experiment
    and process, and their graphs built into the shared graph cache."""
    key = ("gnn_structures", cell.data_path, opts.frame_kind, opts.cutoff, opts.max_neighbors)
    if key not in cell.shared:
        cell.shared[key] = cached_structures(cell.data_path, cell.frame["id"].tolist(), opts)
    return cell.shared[key]


def cached_structures(data_path: str, ids: list[str], opts: GNNOptions, n_jobs: int = 2) -> pd.DataFrame:
    """Structures of ``ids`` (parsed once into the structure cache) with their graphs in the graph cache;
    ``n_jobs`` processes parse and build what is missing. Call it once before starting several worker
    processes, so that they find everything cached."""
    from tlgnn.benchmark.gnn_structures import load_structures
    from tlgnn.data.graphs import LazyStructures, graph_cache

    found = load_structures(data_path, ids, _cache_dir(opts), frame_kind=opts.frame_kind, n_jobs=n_jobs)
    cache = graph_cache(_cache_dir(opts), opts.cutoff, opts.max_neighbors)
    cache.get_many(LazyStructures(found["structure"].tolist()), keys=found["structure_key"].tolist(), n_jobs=n_jobs)
    return found


def _cache_dir(opts: GNNOptions) -> Path:
    return _repo_path(Path(opts.cache_dir).expanduser())


def _task_specs(cell: CellInput, names: list[str]):
    from tlgnn.data.tasks import TaskSpec

    exp = cell.experiment
    specs = []
    for name in names:
        if name == exp.target and exp.kind == "classification":
            specs.append(TaskSpec(name, "classification", classes=list(range(len(exp.classes or [])))))
        else:
            fidelity = "low" if name == exp.low else ("high" if name == exp.target else name)
            specs.append(TaskSpec(name, "regression", unit="eV", fidelity=fidelity))
    return specs


def cell_table(cell: CellInput, opts: GNNOptions, rows: np.ndarray, tasks: list[str],
               labels: dict[str, np.ndarray] | None = None):
    """A :class:`tlgnn.data.MaterialTable` of ``rows`` with the (masked) label columns ``tasks``.

    ``labels`` replaces columns by per-row arrays over ``cell.frame`` (e.g. the union column).
    """
    from tlgnn.data.table import MaterialTable

    structures = _structures(cell, opts)
    ids = cell.frame["id"].to_numpy()[rows]
    frame = pd.DataFrame({
        "material_id": ids,
        "formula": cell.frame["formula"].to_numpy()[rows],
        "structure": structures.loc[ids, "structure"].to_numpy(),
        "structure_key": structures.loc[ids, "structure_key"].to_numpy(),
        "provenance": ["{}"] * len(rows),
    })
    for name in tasks:
        values = (labels or {}).get(name)
        if values is None:
            values = cell.frame[name].to_numpy(dtype=np.float64)
        frame[name] = np.asarray(values, dtype=np.float64)[rows]
    return MaterialTable(frame, _task_specs(cell, tasks))


@dataclass
class Prepared:
    """A cell's training data written to ``directory``: table, split and the rows of each part."""

    directory: Path
    table: Any
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def prepare(cell: CellInput, opts: GNNOptions, directory: Path, train_rows: np.ndarray, val_rows: np.ndarray,
            test_rows: np.ndarray, tasks: list[str], labels: dict[str, np.ndarray] | None = None) -> Prepared:
    """Write ``aligned.parquet`` and ``split.json`` (train/val/test material ids) for one training run."""
    from tlgnn.data.splits import Split, save_split

    if np.intersect1d(np.concatenate([train_rows, val_rows]), cell.test_idx).size:
        raise AssertionError("a test row reached the training or validation rows")  # the runner's contract
    rows = np.concatenate([train_rows, val_rows, test_rows])
    table = cell_table(cell, opts, rows, tasks, labels)
    n_train, n_val = len(train_rows), len(val_rows)
    directory.mkdir(parents=True, exist_ok=True)
    table.save(directory / "aligned.parquet")
    split = Split(np.arange(n_train), np.arange(n_train, n_train + n_val), np.arange(n_train + n_val, len(rows)),
                  "benchmark", cell.seed, {"group_by": "row", "fold": cell.fold, "train_size": str(cell.train_size)})
    save_split(split, table, directory / "split.json")
    return Prepared(directory, table, train_rows, val_rows, test_rows)


# ------------------------------------------------------------------------------------------------ training
def _epochs(opts: GNNOptions, n_train: int) -> tuple[int, int]:
    steps = max(1, math.ceil(n_train / opts.batch_size))
    epochs = min(opts.max_epochs, max(opts.epochs, math.ceil(opts.min_steps / steps)))
    return epochs, max(opts.patience, epochs // 4)


def run_config(cell: CellInput, opts: GNNOptions, prep: Prepared, head: dict[str, Any], monitor: str,
               init_from: str | None = None):
    """The :class:`tlgnn.training.RunConfig` of one training run on ``prep``."""
    from tlgnn.training.config import load_run_config

    epochs, patience = _epochs(opts, len(prep.train))
    raw: dict[str, Any] = {
        "data": {
            "aligned": str(prep.directory / "aligned.parquet"),
            "tasks": [t.name for t in prep.table.tasks],
            "graph": {"cutoff": opts.cutoff, "max_neighbors": opts.max_neighbors},
            "split": {"file": str(prep.directory / "split.json")},
            "cache_dir": str(_cache_dir(opts)),
            "batch_size": opts.batch_size,
            "num_workers": 0,
            "n_jobs": 1,
            "drop_missing": False,
        },
        "model": {"encoder": dict(opts.encoder), "head": {"hidden": list(opts.hidden), **head}},
        "optim": {"optimizer": "adamw", "lr": opts.lr, "weight_decay": opts.weight_decay, "scheduler": "cosine",
                  "min_lr": opts.lr * 0.02},
        "trainer": {
            "max_epochs": epochs,
            "accelerator": cell.accelerator,
            "gradient_clip_val": 5.0,
            "early_stopping": {"monitor": monitor, "patience": patience},
            "seed": int(cell.seed),
            "cpu_threads": opts.cpu_threads,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 50,
        },
        "logger": {"kind": "csv"},
        "output_dir": str(prep.directory / "run"),
    }
    if init_from is not None:
        raw["model"]["init_from"] = init_from
        raw["model"]["finetune"] = dict(opts.finetune)
    if opts.encoder_from is not None:
        raw["model"]["init_from"] = [None if p is None else str(_repo_path(p)) for p in opts.encoder_from] \
            if isinstance(opts.encoder_from, list) else str(_repo_path(opts.encoder_from))
        raw["model"].setdefault("finetune", {})["load_head"] = "never"
    if opts.freeze_encoder:
        raw["model"].setdefault("finetune", {})["freeze"] = "encoder"
    if opts.ensemble:
        raw["model"]["ensemble"] = dict(opts.ensemble)
    return load_run_config(raw=raw, cwd=prep.directory)


def _repo_path(path: str | Path) -> Path:
    """``path`` as given if absolute, else relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def train(config) -> tuple[Path, int]:
    """Fit (quietly) and return the best checkpoint and the number of epochs run."""
    import logging
    import warnings

    from tlgnn.training.run import fit

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(config, test=False, overwrite=True)
    best = result.best_checkpoint or result.last_checkpoint
    if best is None:
        raise RuntimeError(f"{config.output_dir}: training wrote no checkpoint")
    return best, int(result.epochs)


def predict(checkpoint: Path, prep: Prepared, opts: GNNOptions, rows: np.ndarray) -> tuple[Any, dict[str, float]]:
    """The :class:`~tlgnn.training.inference.Inference` for table ``rows`` of ``prep`` (per-task predictions,
    classification: probabilities; the head's extra outputs: ``delta_<T>`` of a difference head, ``latent_<name>``
    of an ELV head; an ensemble's uncertainty) and the ensemble's calibration or the head's learned scalar
    parameters (``head.parameters_dict``; ``{}`` for most heads)."""
    from tlgnn.data.dataset import MaterialDataset
    from tlgnn.data.graphs import graph_cache
    from tlgnn.data.loader import graph_loader
    from tlgnn.models.ensemble import is_ensemble
    from tlgnn.training.checkpoint import load_module
    from tlgnn.training.inference import predict_batches

    module = load_module(checkpoint)
    dataset = MaterialDataset(prep.table, graph_cache(_cache_dir(opts), opts.cutoff, opts.max_neighbors),
                              [t.name for t in module.tasks], rows=rows)
    got = predict_batches(module, graph_loader(dataset, batch_size=128, shuffle=False), extras=True)
    head = module.model.head
    if is_ensemble(head):
        return got, {name: head.calibration_of(name) for name in module.outputs if name in got.members}
    return got, {k: float(v.detach()) for k, v in head.parameters_dict().items()}


def ensemble_columns(got: Any, target: str) -> dict[str, np.ndarray]:
    """An ensemble's columns of target ``target``: ``y_std``, ``y_std_raw``, ``y_lower``, ``y_upper`` and each
    member's prediction ``member_<i>`` (target unit)."""
    columns = {f"y_{key}": got.uncertainty[f"{target}_{key}"] for key in ("std", "std_raw", "lower", "upper")}
    columns.update({f"member_{i}": values for i, values in enumerate(got.members[target])})
    return columns


def _finish(prep: Prepared, opts: GNNOptions, keep: bool = False) -> None:
    if not (opts.keep_checkpoints or keep):
        shutil.rmtree(prep.directory / "run" / "checkpoints", ignore_errors=True)


# ------------------------------------------------------------------------------------------------ P model
LOW_MODEL_SETTINGS = ("encoder", "hidden", "low_rows", "epochs", "min_steps", "max_epochs", "patience", "batch_size",
                      "lr", "weight_decay", "val_fraction", "min_val", "cutoff", "max_neighbors", "frame_kind")


def _settings_digest(opts: GNNOptions) -> str:
    payload = {k: v for k, v in to_dict(opts).items() if k in LOW_MODEL_SETTINGS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def low_model(cell: CellInput, opts: GNNOptions) -> tuple[Path, dict[str, float]]:
    """The fold's separate ``P`` model: single head trained on the ``P`` labels of the training folds only
    (the ``train_target_idx`` rows' and ``low_rows`` others). Shared by every cell of the fold (memoised in
    ``cell.shared`` and on disk under ``<results>/<experiment>/_gnn_low/``); returns its best checkpoint and its
    ``P`` prediction for every test row id of the fold."""
    exp = cell.experiment
    digest = _settings_digest(opts)
    key = ("gnn_low_model", exp.name, cell.fold, cell.seed, digest)
    if key in cell.shared:
        return cell.shared[key]
    directory = cell.work_dir.parents[2] / "_gnn_low" / f"fold{cell.fold}_s{cell.seed}_{digest}"
    done = directory / "done.json"
    if done.is_file():
        record = json.loads(done.read_text())
        cell.shared[key] = (Path(record["checkpoint"]), record["test_pred"])
        return cell.shared[key]
    # a seeded subsample of the training folds' P labels, the same for every training size of the fold
    rows = low_only_rows(cell, opts.low_rows, np.zeros(0, dtype=np.int64))
    val = validation_rows(cell, rows, opts)
    train_rows = np.setdiff1d(rows, val)
    prep = prepare(cell, opts, directory, train_rows, val, cell.test_idx, [exp.low])
    config = run_config(cell, opts, prep, {"name": "single", "task": exp.low}, f"val/{exp.low}/mae")
    checkpoint, epochs = train(config)
    test_rows = np.arange(len(train_rows) + len(val), len(prep.table))
    pred = predict(checkpoint, prep, opts, test_rows)[0].preds[exp.low]
    ids = prep.table.frame["material_id"].to_numpy()[test_rows]
    test_pred = {str(i): float(v) for i, v in zip(ids, pred)}
    done.write_text(json.dumps({"checkpoint": str(checkpoint), "epochs": epochs, "n_train": int(len(train_rows)),
                                "n_val": int(len(val)), "test_pred": test_pred}))
    cell.shared[key] = (checkpoint, test_pred)
    return cell.shared[key]


# ------------------------------------------------------------------------------------------------ kinds
def _head_and_tasks(cell: CellInput, kind: str, opts: GNNOptions) -> tuple[dict[str, Any], list[str]]:
    exp = cell.experiment
    t, p = exp.target, exp.low
    if kind in ("single", "union", "finetune"):
        head, tasks = {"name": "single", "task": t}, [t]
    elif kind == "multitask":
        extra = [a for a in exp.auxiliary if opts.use_auxiliary]
        head, tasks = {"name": "multitask"}, [p, *extra, t]
    elif kind == "difference":
        head = {"name": "difference", "chain": [p, t], "use_known_low": cell.regime == "low_fidelity_known"}
        tasks = [p, t]
    elif kind == "fidelity":
        head, tasks = {"name": "fidelity", "targets": [p, t]}, [p, t]
    else:  # elv
        if opts.head:
            head, tasks = {"name": "elv"}, list(opts.tasks or [])
        else:
            head = {"name": "elv", "latents": [p, "shift"], "expressions": {t: f"{p} + softplus(shift)"}}
            tasks = [p, t]
    head.update({k: v for k, v in opts.head.items()})
    if head["name"] == "difference":  # not another head in its place (the tree head has its own option)
        head.setdefault("condition_on_known_low", bool(head["use_known_low"]) and opts.condition_on_known_low)
    if opts.tasks is not None:
        tasks = [c for c in opts.tasks if c != t] + [t]
    elif t not in tasks:
        tasks.append(t)
    return head, tasks


def paired_shift_stats(cell: CellInput, rows: np.ndarray) -> tuple[float, float]:
    """``[mean, std]`` of the ``shift`` latent of ``T = P + softplus(shift)`` from ``Δ = T − P`` on ``rows``
    (those with both labels; eV): ``softplus⁻¹`` of ``mean(Δ)`` (at least 0.01 eV, as ``softplus > 0``) and
    ``std(Δ)`` (at least 0.01 eV), so that the network's unit output spans the corrections seen in training."""
    delta = cell.target_values(rows) - cell.low_values(rows)
    delta = delta[np.isfinite(delta)]
    if len(delta) < 2:
        raise ValueError(f"elv_shift_stats 'paired' needs 2+ training rows with both labels, got {len(delta)}")
    mean = max(float(delta.mean()), 0.01)
    return mean + math.log(-math.expm1(-mean)), max(float(delta.std()), 0.01)


def low_columns(cell: CellInput, kind: str, opts: GNNOptions, tasks: list[str], preds: dict[str, np.ndarray],
                extras: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A regression cell's columns about the low fidelity ``P``: ``low_pred`` (the model's own or the fold's
    ``P`` model's prediction, for the correction metric), ``delta_pred`` and ``low_used`` where the kind has them."""
    exp = cell.experiment
    t, p = exp.target, exp.low
    columns: dict[str, np.ndarray] = {}
    if exp.kind != "regression" or p is None:
        return columns
    if kind == "difference":
        delta = extras[f"delta_{t}"]
        columns["delta_pred"] = delta
        columns["low_used"] = preds[t] - delta
        if cell.regime == "structure_only":
            columns["low_pred"] = preds[p]
    elif kind == "elv" and p in tasks:
        columns["low_pred"] = preds[p]
        columns["delta_pred"] = preds[t] - preds[p]
    elif kind in ("multitask", "fidelity"):
        columns["low_pred"] = preds[p]
    elif kind in ("single", "union") and opts.low_model and cell.regime == "structure_only":
        test_pred = low_model(cell, opts)[1]
        columns["low_pred"] = np.array([test_pred[str(i)] for i in cell.frame["id"].to_numpy()[cell.test_idx]])
    return columns


def run_gnn_cell(cell: CellInput) -> CellOutput:
    """Train the cell's GNN kind on the training folds and predict the scarce target of ``cell.test_idx``."""
    kind = _kind(cell)
    opts = gnn_options(cell)
    exp = cell.experiment
    t, p = exp.target, exp.low
    head, tasks = _head_and_tasks(cell, kind, opts)
    for column in tasks:
        if column not in cell.frame.columns:
            raise ConfigError(f"models[{cell.model.name}].options.tasks", f"column {column!r} is not in the table")
    if head.get("name") == "elv" and opts.init_intercept:
        params = dict(head.get("parameters") or {})
        params[opts.init_intercept] = float(np.mean(cell.target_values(cell.train_target_idx)))
        head["parameters"] = params

    target_rows = np.asarray(cell.train_target_idx)
    val = validation_rows(cell, target_rows, opts)
    if kind == "elv" and opts.elv_shift_stats == "paired":
        head["latent_stats"] = {"shift": list(paired_shift_stats(cell, np.setdiff1d(target_rows, val)))}
    learns_low = any(c != t for c in tasks) or kind == "union"
    if cell.regime == "low_fidelity_known":
        learns_low = False  # the given P label replaces the base prediction: P-only rows would only train it
    extra = low_only_rows(cell, opts.low_rows, target_rows) if learns_low and p is not None else np.zeros(0, int)
    train_rows = np.sort(np.concatenate([np.setdiff1d(target_rows, val), extra]))
    labels = None
    if kind == "union":
        union = cell.frame[t].to_numpy(dtype=np.float64).copy()
        low = cell.low_values(np.arange(len(cell.frame)))
        fill = ~np.isfinite(union)
        union[fill] = low[fill]
        union[cell.test_idx] = np.nan  # never a label on a test row, even a low one
        labels = {t: union}

    init_from, info = None, {"kind": cell.model.kind, "tasks": tasks, "head": head["name"]}
    if kind == "finetune":
        if opts.init_from == "fold":
            init_from = str(low_model(cell, opts)[0])
            info["init_from"] = f"fold {cell.fold} P model (training-fold {p} labels only)"
        else:
            init_from = str(_repo_path(opts.init_from))
            info["init_from"] = opts.init_from
            info["init_from_sha256"] = hashlib.sha256(Path(init_from).read_bytes()).hexdigest()[:16]

    prep = prepare(cell, opts, cell.work_dir, train_rows, val, cell.test_idx, tasks, labels)
    monitor = f"val/{t}/accuracy" if exp.kind == "classification" else f"val/{t}/mae"
    config = run_config(cell, opts, prep, head, monitor, init_from)
    checkpoint, epochs = train(config)
    test_rows = np.arange(len(train_rows) + len(val), len(prep.table))
    got, params = predict(checkpoint, prep, opts, test_rows)
    preds, extras = got.preds, {k: v for k, v in got.extras.items() if not k.endswith("_std")}
    _finish(prep, opts)

    columns = low_columns(cell, kind, opts, tasks, preds, extras)
    if opts.ensemble and exp.kind == "regression":
        columns.update(ensemble_columns(got, t))
        info.update(level=float(opts.ensemble.get("level", 0.9)), calibration=params[t],
                    constant_sigma=params[t]["constant_sigma"])
    if head["name"] == "elv":
        info["parameters"] = params
        for name, values in extras.items():
            if name[len("latent_"):] not in tasks:
                columns[name] = values
    info.update({"epochs_run": epochs, "n_train_rows": int(len(train_rows)), "n_val_rows": int(len(val)),
                 "n_low_only_rows": int(len(extra)), "planned_epochs": _epochs(opts, len(train_rows))[0]})
    y_pred = preds[t]
    return CellOutput(y_pred, columns, info)


__all__ = ["GNNOptions", "KINDS", "cached_structures", "cell_table", "ensemble_columns", "entry_options", "gnn_options",
           "low_columns", "low_model", "low_only_rows", "paired_shift_stats", "predict", "prepare", "run_config", "run_gnn_cell", "train",
           "validation_rows"]
