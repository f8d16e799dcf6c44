"""The run config: data, model, loss, optimiser, trainer, logger and output directory, as validated dataclasses.

Loaded with :func:`load_run_config` from a YAML file plus command-line overrides (``trainer.max_epochs=5``).
Every key is checked by :func:`tlgnn.utils.config.from_dict`: a typo anywhere is a
:class:`~tlgnn.utils.config.ConfigError` naming the dotted key. Encoder and head options are checked against
the model registries by :func:`check_model_options` (errors name ``model.head.<option>``).

Paths written in a YAML resolve relative to that YAML's directory; paths given on the command line resolve
relative to the current directory. Example (``configs/quickstart.yaml``)::

    data: {sources: data/mp_sample.yaml, tasks: [band_gap_pbe, gap_hse], batch_size: 32}
    model:
      encoder: {name: cgcnn, hidden: 64, num_layers: 3}
      head: {name: difference, chain: [band_gap_pbe, gap_hse]}
    optim: {optimizer: adamw, lr: 1.0e-3, scheduler: cosine, warmup_epochs: 1}
    trainer: {max_epochs: 30, seed: 0, early_stopping: {monitor: val/loss, patience: 10}}
    logger: {kind: csv}
    output_dir: ../runs/quickstart
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tlgnn.data.config import DataConfig
from tlgnn.utils.config import ConfigError, apply_overrides, from_dict, load_yaml, resolve_path, to_dict

PRECISIONS = ("32", "64", "bf16-mixed", "16-mixed", "bf16-true", "16-true")

#: Dotted keys that hold file-system paths (resolved against the YAML's or the current directory).
PATH_KEYS = (
    "output_dir",
    "data.sources",
    "data.aligned",
    "data.cache_dir",
    "data.align_dir",
    "data.split.file",
    "model.init_from",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class FinetuneConfig:
    """How a model is fine-tuned (see ``docs/finetuning.md``); applied by :mod:`tlgnn.training.finetune`.

    Attributes:
        freeze: ``none`` (train everything), ``encoder`` (the whole encoder) or an integer k: the first k of
            the encoder's layer groups (input embedding, then each interaction block, then the readout layer).
        load_head: ``auto`` (reuse the checkpoint's head when its head config and tasks equal this run's, else
            build a new head), ``always`` (an error if they differ) or ``never``.
        encoder_lr: learning rate of the encoder's parameters (``null``: ``optim.lr``).
        head_lr: learning rate of the head's parameters (``null``: ``optim.lr``).
        unfreeze_every: gradual unfreezing (Howard & Ruder 2018): every this many epochs the last still-frozen
            layer group is unfrozen, until none is frozen (``null``: the frozen groups stay frozen).
    """

    freeze: int | Literal["none", "encoder"] = "none"
    load_head: Literal["auto", "always", "never"] = "auto"
    encoder_lr: float | None = None
    head_lr: float | None = None
    unfreeze_every: int | None = None

    def validate(self) -> None:
        if isinstance(self.freeze, int) and self.freeze < 0:
            raise ConfigError("freeze", f"must be 'none', 'encoder' or a number of layer groups >= 0, got {self.freeze}")
        for name in ("encoder_lr", "head_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(name, f"must be > 0 or null (= optim.lr), got {value}")
        if self.unfreeze_every is not None:
            if self.unfreeze_every < 1:
                raise ConfigError("unfreeze_every", f"must be >= 1 epoch or null, got {self.unfreeze_every}")
            if self.freeze in ("none", 0):
                raise ConfigError("unfreeze_every", "gradual unfreezing needs frozen layers: set freeze to "
                                                    "'encoder' or a number of layer groups")

    @property
    def active(self) -> bool:
        """Whether any setting differs from plain training."""
        return self != FinetuneConfig()


@dataclass
class EnsembleConfig:
    """An ensemble trained and saved as one model (:mod:`tlgnn.models.ensemble`; ``docs/uncertainty.md``).

    Attributes:
        members: how many members (1: a single model, no uncertainty columns).
        bootstrap: each member trains on its own bootstrap of the training rows, not only its own seed.
        level: the central interval ``<task>_lower``/``<task>_upper`` covers this share of unseen materials
            once calibrated (0.9).
        calibration: how the spread is recalibrated on the validation split after training: the std's scale (and
            floor, and the error model's weight) of maximum Gaussian likelihood in every case, then the interval
            ``conformal`` (mean ± q·std, q the split-conformal quantile of |error| / std: covers ``level`` of new
            materials whatever the shape of the errors, even from a small validation split) or ``scale`` (the
            Gaussian interval mean ± z·std), or ``none`` (the raw spread).
        error_model: learn the out-of-bag |error| of the training rows (needs ``bootstrap``; default: on with it).
    """

    members: int = 1
    bootstrap: bool = False
    level: float = 0.9
    calibration: Literal["conformal", "scale", "none"] = "conformal"
    error_model: bool | None = None

    def validate(self) -> None:
        if self.members < 1:
            raise ConfigError("members", f"must be >= 1, got {self.members}")
        if not 0.0 < self.level < 1.0:
            raise ConfigError("level", f"must be in (0, 1), got {self.level}")


@dataclass
class ModelConfig:
    """Encoder and head, each ``{name: <registered name>, **options}``, and fine-tuning settings.

    Attributes:
        encoder: encoder name and options, e.g. ``{name: cgcnn, hidden: 64, num_layers: 3}``.
        head: head name and options, e.g. ``{name: difference, chain: [band_gap_pbe, gap_hse]}``.
        init_from: a tlgnn checkpoint (``.ckpt``) whose encoder (and head, see ``finetune.load_head``)
            initialises this model; its graph settings and encoder options must equal this config's. For a
            ``stack`` encoder: a list, one checkpoint per stacked encoder (``null``: that encoder keeps its own
            initial weights, e.g. CHGNet's pretrained ones).
        finetune: freezing, per-part learning rates, gradual unfreezing (:class:`FinetuneConfig`).
        cache_embeddings: when the whole encoder is frozen for the whole run (``finetune.freeze: encoder``
            without ``unfreeze_every``), run it once per material, keep the graph embeddings in the on-disk cache
            (``<data.cache_dir>/embeddings``, :mod:`tlgnn.embeddings`) and train the head on the stored vectors:
            the same model, losses, metrics and checkpoints, epochs in milliseconds. ``false``: run the frozen
            encoder on every batch.
        ensemble: k members trained as one model with calibrated uncertainty (:class:`EnsembleConfig`).

    Fine-tuning is applied by :func:`tlgnn.training.finetune.apply_finetuning` after the model is built.
    """

    encoder: dict[str, Any] = field(default_factory=lambda: {"name": "cgcnn"})
    head: dict[str, Any] = field(default_factory=lambda: {"name": "multitask"})
    init_from: str | list[str | None] | None = None
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    cache_embeddings: bool = True
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    def validate(self) -> None:
        for section in ("encoder", "head"):
            spec = getattr(self, section)
            if not isinstance(spec.get("name"), str) or not spec["name"]:
                raise ConfigError(f"{section}.name", f"the {section} needs a name (a registered {section})")


@dataclass
class LossConfig:
    """How regression errors are scored (classification always uses cross-entropy).

    Attributes:
        regression: ``mse`` (default), ``huber`` or ``l1``, on the error divided by the task's training std.
        huber_delta: Huber threshold in units of the task's std.

    Per-task weights and learned (uncertainty) weighting are head options (``model.head.task_weights``,
    ``model.head.weighting``).
    """

    regression: Literal["mse", "huber", "l1"] = "mse"
    huber_delta: float = 1.0

    def validate(self) -> None:
        if not self.huber_delta > 0:
            raise ConfigError("huber_delta", f"must be > 0, got {self.huber_delta}")


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule.

    Attributes:
        optimizer: ``adamw`` (default), ``adam`` or ``sgd``.
        lr: peak learning rate.
        weight_decay: L2 / decoupled weight decay.
        momentum: SGD momentum (``sgd`` only).
        scheduler: ``none``, ``cosine`` (per-step cosine decay to ``min_lr``), ``plateau`` (reduce by
            ``factor`` when ``monitor`` stalls for ``patience`` epochs) or ``onecycle``.
        warmup_epochs: linear warm-up from 0 to ``lr`` over this many epochs (may be fractional; ``none``,
            ``cosine``; for ``onecycle`` it sets the rising fraction).
        min_lr: final learning rate of ``cosine``; lower bound of ``plateau``.
        factor: ``plateau`` reduction factor.
        patience: ``plateau`` patience in epochs.
        monitor: metric watched by ``plateau``.
    """

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "plateau", "onecycle"] = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    factor: float = 0.5
    patience: int = 5
    monitor: str = "val/loss"

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise ConfigError("warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        if self.warmup_epochs > 0 and self.scheduler == "plateau":
            raise ConfigError("warmup_epochs", "warm-up is not combined with scheduler 'plateau'; set it to 0")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError("min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        if not 0 < self.factor < 1:
            raise ConfigError("factor", f"must be in (0, 1), got {self.factor}")


@dataclass
class EarlyStoppingConfig:
    """Stop when ``monitor`` has not improved for ``patience`` validation epochs (``patience: null`` = off).

    ``monitor`` is ``val/loss`` or a per-task metric ``val/<task>/<mae|rmse|r2|accuracy|f1|roc_auc>``;
    ``mode`` is ``min`` or ``max`` (default: ``max`` for r2/accuracy/f1/roc_auc, else ``min``).
    """

    monitor: str = "val/loss"
    patience: int | None = 20
    mode: Literal["min", "max"] | None = None
    min_delta: float = 0.0

    def validate(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise ConfigError("patience", f"must be >= 1 or null (off), got {self.patience}")
        if not (self.monitor == "val/loss" or self.monitor.startswith(("val/", "train/"))):
            raise ConfigError("monitor", f"must be 'val/loss' or 'val/<task>/<metric>', got {self.monitor!r}")

    @property
    def resolved_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "max" if self.monitor.rsplit("/", 1)[-1] in ("r2", "accuracy", "f1", "roc_auc") else "min"


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` settings.

    Attributes:
        max_epochs: number of epochs.
        accelerator: ``auto`` (GPU when present), ``cpu`` or ``gpu``.
        devices: number of devices or ``auto``.
        strategy: ``auto``, ``ddp``, ...
        num_nodes: machines for multi-node DDP.
        precision: ``"32"`` (default), ``"bf16-mixed"`` or ``"16-mixed"`` (GPU), ``"64"``.
        gradient_clip_val: clip the gradient norm to this value (``null`` = off).
        accumulate_grad_batches: gradient accumulation.
        early_stopping: see :class:`EarlyStoppingConfig`.
        seed: seed of every random number generator (model init, shuffling, dropout).
        deterministic: use deterministic algorithms (``true``, ``false`` or ``"warn"``).
        log_every_n_steps: training-step logging interval.
        limit_train_batches / limit_val_batches / limit_test_batches: an int (batches) or a float (fraction).
        check_val_every_n_epoch: validation interval.
        num_sanity_val_steps: validation batches run before training.
        enable_progress_bar: Lightning's progress bar.
        max_time: wall-time limit ``"DD:HH:MM:SS"`` (``null`` = none).
        cpu_threads: torch intra-op threads for CPU work (``null`` = torch's default, one per core). Small
            crystal graphs gain little from several threads, and OpenMP threads slow down badly when the cores
            are shared with other processes: ``1`` is the robust choice for CPU training on a busy machine.
        compile: ``torch.compile`` the model (dynamic shapes) before training. On an H200 it made CGCNN training
            steps 1.13-1.40x faster than PyG's CGConv model (docs/performance.md); on CPUs there is no consistent gain. The first steps
            pay the compilation (about 20 s on a GPU host). Checkpoints are unchanged (same parameter names).
    """

    max_epochs: int = 100
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Any = "32"
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    seed: int = 0
    deterministic: bool | Literal["warn"] = False
    log_every_n_steps: int = 10
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int = 2
    enable_progress_bar: bool = True
    max_time: str | None = None
    cpu_threads: int | None = None
    compile: bool = False

    def validate(self) -> None:
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError("cpu_threads", f"must be >= 1 or null, got {self.cpu_threads}")
        if self.max_epochs < 1:
            raise ConfigError("max_epochs", f"must be >= 1, got {self.max_epochs}")
        self.precision = str(self.precision)
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.accelerator == "cpu" and self.precision in ("16-mixed", "16-true"):
            raise ConfigError("precision", f"{self.precision!r} needs a GPU; use '32' or 'bf16-mixed' on CPU")
        if not (self.devices == "auto" or (isinstance(self.devices, int) and not isinstance(self.devices, bool))
                or (isinstance(self.devices, list) and all(isinstance(d, int) for d in self.devices))):
            raise ConfigError("devices", f"must be 'auto', a number of devices or a list of device ids, got {self.devices!r}")
        if self.num_nodes < 1:
            raise ConfigError("num_nodes", f"must be >= 1, got {self.num_nodes}")
        if self.gradient_clip_val is not None and not self.gradient_clip_val > 0:
            raise ConfigError("gradient_clip_val", f"must be > 0 or null, got {self.gradient_clip_val}")
        if self.accumulate_grad_batches < 1:
            raise ConfigError("accumulate_grad_batches", f"must be >= 1, got {self.accumulate_grad_batches}")
        for name in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or (isinstance(value, float) and value > 1.0):
                raise ConfigError(name, f"must be a number of batches (int) or a fraction in [0, 1], got {value!r}")
        if self.log_every_n_steps < 1:
            raise ConfigError("log_every_n_steps", f"must be >= 1, got {self.log_every_n_steps}")
        if self.check_val_every_n_epoch < 1:
            raise ConfigError("check_val_every_n_epoch", f"must be >= 1, got {self.check_val_every_n_epoch}")


@dataclass
class WandbConfig:
    """Weights & Biases settings (used with ``logger.kind: wandb``).

    ``mode``: ``online``, ``offline`` or ``disabled``; when unset, ``$WANDB_MODE`` is used, else ``online`` if
    ``$WANDB_API_KEY`` is set and ``offline`` otherwise (never an interactive login prompt).
    """

    project: str = "tlgnn"
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: Literal["online", "offline", "disabled"] | None = None
    log_model: bool = False


@dataclass
class LoggerConfig:
    """``kind: csv`` (always written) or ``wandb`` (CSV plus a W&B run, see :class:`WandbConfig`)."""

    kind: Literal["csv", "wandb"] = "csv"
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RunConfig:
    """A whole training run; see the module docstring and ``docs/training.md``."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    output_dir: str = "runs/run"

    def validate(self) -> None:
        if self.optim.scheduler == "plateau" and not self.optim.monitor.startswith(("val/", "train/")):
            raise ConfigError("optim.monitor", f"must be 'val/...' or 'train/...', got {self.optim.monitor!r}")

    def resolve_paths(self, base_dir: str | Path) -> "RunConfig":
        """Make relative paths absolute against ``base_dir``; ``~`` is expanded. Returns ``self``."""
        base = Path(base_dir).expanduser()
        self.output_dir = str(resolve_path(self.output_dir, base))
        self.model.init_from = _absolute(self.model.init_from, base)
        self.data.resolve_paths(base)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain YAML-able values (written to ``output_dir/config.yaml``)."""
        return to_dict(self)


def _absolute(value: Any, base: Path) -> Any:
    """A non-empty string as an absolute path (:func:`resolve_path`), each of a list's too; anything else unchanged
    (checked later)."""
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if not isinstance(value, str) or not value:
        return value
    return str(resolve_path(value, base))


def _get(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value


def load_run_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    raw: dict[str, Any] | None = None,
    cwd: str | Path | None = None,
) -> RunConfig:
    """Read a run config from YAML ``path`` (or a ``raw`` mapping) and apply ``overrides``.

    Overrides are ``["trainer.max_epochs=5", ...]`` or ``{"trainer.max_epochs": 5}``. Paths from the YAML are
    resolved against the YAML's directory, overridden paths against ``cwd`` (default: the current directory).
    Raises :class:`ConfigError` naming the key (and the file) on any problem.
    """
    if path is None and raw is None:
        raise ConfigError("", "give a config file (--config) or a config mapping")
    data = dict(raw or {}) if path is None else load_yaml(path)
    base = Path(path).expanduser().resolve().parent if path is not None else Path(cwd or os.getcwd())
    here = Path(cwd or os.getcwd())
    # paths from the YAML: relative to the YAML
    for key in PATH_KEYS:
        found, value = _get(data, key)
        if found:
            _set(data, key, _absolute(value, base))
    # overrides: parse, then resolve their paths relative to the current directory
    over: dict[str, Any] = {}
    if overrides:
        parsed = apply_overrides({}, overrides)
        flat: dict[str, Any] = {}

        def flatten(prefix: str, node: Any) -> None:
            if isinstance(node, dict) and node:
                for k, v in node.items():
                    flatten(f"{prefix}.{k}" if prefix else k, v)
            else:
                flat[prefix] = node

        flatten("", parsed)
        over = {k: (_absolute(v, here) if k in PATH_KEYS else v) for k, v in flat.items()}
        apply_overrides(data, over)
    source = str(path) if path is not None else None
    try:
        config = from_dict(RunConfig, data)
    except ConfigError as err:
        if any(err.key == k or err.key.startswith(k + ".") or k.startswith(err.key + ".") for k in over):
            source = "command-line override"  # the typo is in what was typed, not in the YAML
        raise ConfigError(err.key, err.reason, source=source) from err
    config.resolve_paths(base)  # anything still relative (defaults) resolves against the YAML
    return config


def check_model_options(model: ModelConfig, log: Any = "stderr") -> None:
    """Check encoder and head names and options against the registries (imports :mod:`tlgnn.models`).

    An option given under its old name (e.g. ``model.encoder.atom_fea_len``) is renamed in ``model`` to the
    current one, with a one-line note to ``log`` (a text stream; ``"stderr"``: ``sys.stderr`` at call time;
    ``None``: silent). Raises :class:`ConfigError` naming
    ``model.encoder.<option>`` / ``model.head.<option>``.
    """
    from tlgnn.models import ENCODERS, HEADS
    from tlgnn.models.registry import accepted_options

    if log == "stderr":
        log = sys.stderr

    def note(section: str) -> Any:
        def say(old: str, new: str) -> None:
            if log is not None:
                print(f"tlgnn: note: model.{section}.{old} is now called model.{section}.{new} "
                      "(read as such; rename it in the config)", file=log)
        return say

    for section, registry in (("encoder", ENCODERS), ("head", HEADS)):
        spec = dict(getattr(model, section))
        name = spec.pop("name")
        try:
            spec = registry.canonical(name, spec, note(section))
            setattr(model, section, {"name": name, **spec})
            registry.check(name, spec)
        except ValueError as err:
            key = "name"
            if name in registry:
                positional = getattr(registry, "positional", ())
                accepted = {k for k in accepted_options(registry[name]) if k not in positional}
                renamed = registry.renamed(name)
                both = [k for k in spec if renamed.get(k) in spec]  # an old name beside its new one
                key = next(iter(both), next((k for k in spec if k not in accepted and k not in renamed), "name"))
            raise ConfigError(f"model.{section}.{key}", str(err)) from err


def save_run_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (``output_dir/config.yaml``)."""
    import yaml

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)


__all__ = [
    "PATH_KEYS",
    "PRECISIONS",
    "EarlyStoppingConfig",
    "FinetuneConfig",
    "LoggerConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainerConfig",
    "WandbConfig",
    "check_model_options",
    "load_run_config",
    "save_run_config",
]
