"""Fine-tuning: start a run from a pretrained checkpoint, freeze encoder layers, per-part learning rates.

``model.init_from: PATH.ckpt`` loads the encoder of a tlgnn checkpoint into the freshly built model (and its
head when the head config and the tasks are the same; otherwise the new head keeps its random initialisation).
The checkpoint must describe the same graphs (``data.graph``) and the same encoder (``model.encoder``): any
difference is a :class:`~tlgnn.utils.config.ConfigError` naming the setting, both values and the file. A ``stack``
encoder takes a list, one checkpoint per stacked encoder (``null``: its own weights), each checked the same way.

``model.finetune`` (:class:`~tlgnn.training.config.FinetuneConfig`) then freezes none, all, or the first k of
``encoder.layer_groups()``, gives encoder and head their own learning rates (optimiser parameter groups,
:meth:`FinetunePlan.param_groups`), and optionally unfreezes one group every ``unfreeze_every`` epochs
(:class:`GradualUnfreezing`, from the last frozen group downwards, as in ULMFiT, Howard & Ruder 2018).

Used by :func:`tlgnn.training.run.build_module` (``tlgnn fit``); usable alone::

    module = TransferModule(model=..., tasks=..., graph=builder.settings, target_stats=...)
    plan = apply_finetuning(module, "data/pretrained/cgcnn_mp_pbe_eform.ckpt", FinetuneConfig(freeze=2))
    trainer = L.Trainer(..., callbacks=plan_callbacks(plan))     # gradual unfreezing, if configured
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from tlgnn.models.registry import full_options
from tlgnn.training.checkpoint import Pretrained, read_pretrained
from tlgnn.training.config import FinetuneConfig
from tlgnn.utils.config import ConfigError

#: Graph builder settings that change the graphs an encoder sees (compared against ``data.graph``).
GRAPH_KEYS = ("cutoff", "max_neighbors")
#: Task fields that must agree for a head to be reused.
TASK_KEYS = ("name", "kind", "classes", "unit")


# ------------------------------------------------------------------------------------------------- checks
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_encoder(pretrained: Pretrained, encoder: Mapping[str, Any]) -> None:
    """Raise ``ConfigError("model.encoder.<option>")`` if ``encoder`` differs from the checkpoint's encoder."""
    from tlgnn.models import ENCODERS

    ours, theirs = full_options(ENCODERS, encoder), full_options(ENCODERS, pretrained.encoder_spec)
    free = set(getattr(ENCODERS.get(ours.get("name")), "layout_options", ()))  # same weights, same function
    for key in ["name", *sorted((set(ours) | set(theirs)) - {"name"} - free)]:
        if not _same(ours.get(key), theirs.get(key)):
            raise ConfigError(
                f"model.encoder.{key}",
                f"the checkpoint {pretrained.path} has encoder {key}={theirs.get(key)!r}, this config has "
                f"{ours.get(key)!r}; set model.encoder.{key}: {theirs.get(key)!r} to initialise from it",
            )


def check_graph(pretrained: Pretrained, graph: Mapping[str, Any]) -> None:
    """Raise ``ConfigError("data.graph.<key>")`` if the run's graph settings differ from the checkpoint's."""
    recorded = pretrained.graph
    for key in GRAPH_KEYS:
        if key in recorded and not _same(recorded[key], graph.get(key)):
            raise ConfigError(
                f"data.graph.{key}",
                f"the checkpoint {pretrained.path} was trained on graphs with {key}={recorded[key]!r}, this config "
                f"builds {key}={graph.get(key)!r}; set data.graph.{key}: {recorded[key]!r}",
            )
    theirs, ours = recorded.get("format_version"), graph.get("format_version")
    if theirs is not None and ours is not None and theirs != ours:
        raise ConfigError(
            "data.graph",
            f"the checkpoint {pretrained.path} was trained on graph format {theirs}, this tlgnn builds format "
            f"{ours}; retrain the checkpoint with this version",
        )


def head_mismatch(pretrained: Pretrained, head: Mapping[str, Any], tasks: list[dict[str, Any]]) -> str | None:
    """Why the checkpoint's head cannot be reused for ``head`` on ``tasks`` (``None`` if it can)."""
    from tlgnn.models import HEADS

    if not pretrained.head_state:
        return "the checkpoint holds no head"
    mine = [{k: t.get(k) for k in TASK_KEYS} for t in tasks]
    recorded = [{k: t.get(k) for k in TASK_KEYS} for t in pretrained.meta.get("tasks", [])]
    if mine != recorded:
        return (f"tasks differ (checkpoint {[t['name'] for t in recorded]}, config {[t['name'] for t in mine]}"
                + (")" if [t["name"] for t in recorded] != [t["name"] for t in mine] else ", in kind/unit/classes)"))
    ours, theirs = full_options(HEADS, head), full_options(HEADS, pretrained.head_spec)
    for key in ["name", *sorted(set(ours) | set(theirs) - {"name"})]:
        if not _same(ours.get(key), theirs.get(key)):
            return f"head {key} differs (checkpoint {theirs.get(key)!r}, config {ours.get(key)!r})"
    return None


# ------------------------------------------------------------------------------------------------- plan
@dataclass
class FinetunePlan:
    """What fine-tuning did to a module and how it trains: frozen groups, learning rates, unfreezing."""

    config: FinetuneConfig
    n_groups: int
    initial_frozen: int
    init_from: str | None = None
    head_loaded: bool = False
    head_reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def frozen_at(self, epoch: int) -> int:
        """Number of frozen encoder groups during ``epoch`` (0-based)."""
        every = self.config.unfreeze_every
        if not every:
            return self.initial_frozen
        return max(0, self.initial_frozen - int(epoch) // int(every))

    def param_groups(self, module: nn.Module, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups ``[encoder, head]`` with their learning rates (``lr`` = ``optim.lr``).

        Without gradual unfreezing, frozen parameters are left out; with it, every encoder parameter is in
        the encoder group (a parameter without a gradient is skipped by the optimiser until it is unfrozen).
        """
        model = module.model if hasattr(module, "model") else module
        keep_all = bool(self.config.unfreeze_every)
        enc = [p for p in model.encoder.parameters() if keep_all or p.requires_grad]
        head = [p for p in model.head.parameters() if p.requires_grad]
        enc_lr = float(self.config.encoder_lr or lr)
        head_lr = float(self.config.head_lr or lr)
        groups = [{"params": enc, "lr": enc_lr, "name": "encoder"}, {"params": head, "lr": head_lr, "name": "head"}]
        return [g for g in groups if g["params"]]

    def summary(self) -> str:
        """One line for the log."""
        parts = []
        if self.init_from:
            head = "head loaded" if self.head_loaded else f"new head ({self.head_reason})"
            parts.append(f"encoder from {self.init_from}; {head}")
        else:
            parts.append("NO model.init_from: the encoder starts from random weights, yet these fine-tuning "
                         "settings apply (for plain training from scratch set model.finetune: {})")
        parts.append(f"frozen encoder groups {self.initial_frozen}/{self.n_groups}")
        if self.config.unfreeze_every:
            parts.append(f"unfreeze one every {self.config.unfreeze_every} epoch(s)")
        encoder_trains = self.initial_frozen < self.n_groups or self.config.unfreeze_every
        if self.config.head_lr or (self.config.encoder_lr and encoder_trains):
            encoder = f"encoder {self.config.encoder_lr or 'optim.lr'}, " if encoder_trains else ""
            parts.append(f"lr {encoder}head {self.config.head_lr or 'optim.lr'}")
        return "fine-tuning: " + "; ".join(parts)


def _n_frozen(freeze: int | str, n_groups: int) -> int:
    if freeze == "none":
        return 0
    if freeze == "encoder":
        return n_groups
    k = int(freeze)
    if k > n_groups:
        raise ConfigError("model.finetune.freeze",
                          f"the encoder has {n_groups} layer groups, cannot freeze the first {k}")
    return k


def _members(part: Any) -> list[Any]:
    """The member modules of an ensemble's encoder or head (:mod:`tlgnn.models.ensemble`), else ``[part]``."""
    members = getattr(part, "members", None)
    return list(members) if isinstance(members, nn.ModuleList) else [part]


def _load_encoder(encoder: nn.Module, pretrained: Pretrained) -> None:
    """``pretrained``'s encoder weights into ``encoder`` (strict), or ``ConfigError("model.init_from")``."""
    try:
        encoder.load_state_dict(pretrained.encoder_state, strict=True)
    except RuntimeError as err:  # same options but different weights layout (e.g. another tlgnn version)
        raise ConfigError("model.init_from", f"{pretrained.path}: encoder weights do not fit: {err}") from err


def _load_head(module: Any, pretrained: Pretrained, config: FinetuneConfig, plan: FinetunePlan) -> None:
    """Reuse ``pretrained``'s head when ``load_head`` allows and it fits (recorded in ``plan``)."""
    reason = "load_head: never" if config.load_head == "never" else \
        head_mismatch(pretrained, module.hparams["model"]["head"], module.hparams["tasks"])
    if reason is None:
        for head in _members(module.model.head):
            head.load_state_dict(pretrained.head_state, strict=True)
        # the loaded head keeps the statistics its weights were fit with
        module.set_target_stats(*module.model.head.target_stats(), module.model.head.paired_stats())
        plan.head_loaded = True
    elif config.load_head == "always":
        raise ConfigError("model.finetune.load_head", f"cannot reuse the head of {pretrained.path}: {reason}")
    plan.head_reason = reason


def _init_stacked(model: Any, paths: Sequence[str | Path | None], spec: Mapping[str, Any],
                  graph: Mapping[str, Any]) -> None:
    """Load checkpoint ``paths[i]`` into stacked encoder ``i`` (``None``: leave it); every ensemble member alike."""
    specs = spec.get("encoders") if spec.get("name") == "stack" else None
    if not specs or len(specs) != len(paths):
        raise ConfigError("model.init_from", f"a list of checkpoints needs a stack encoder with as many encoders "
                                             f"({len(paths)} given, encoder {spec.get('name')!r})")
    for i, path in enumerate(paths):
        if path is None:
            continue
        pretrained = read_pretrained(path)
        check_graph(pretrained, graph)
        check_encoder(pretrained, specs[i])
        for stack in _members(model.encoder):
            _load_encoder(stack.encoders[i], pretrained)


def apply_finetuning(module: Any, init_from: str | Path | Sequence[str | Path | None] | None,
                     config: FinetuneConfig | None = None, graph: Mapping[str, Any] | None = None,
                     log: Any = sys.stderr) -> FinetunePlan:
    """Initialise ``module`` (a :class:`~tlgnn.training.module.TransferModule`) from ``init_from`` and freeze.

    Args:
        module: the freshly built module (its target statistics already set from the training split).
        init_from: checkpoint to load the encoder (and, if compatible, the head) from, or ``None``; for a stack
            encoder a list of checkpoints (or ``None``), one per stacked encoder (encoder weights only).
        config: freezing / learning rates / unfreezing (default: none of them).
        graph: the run's graph builder settings (default: the module's ``hparams["graph"]``).
        log: a stream for the one-line summary (``None``: silent).

    Returns:
        the :class:`FinetunePlan`, also stored as ``module.finetune_plan`` (used by ``configure_optimizers``;
        the run builder adds :func:`plan_callbacks` to the trainer).

    Raises:
        ConfigError: unreadable checkpoint, different graph settings or encoder (naming the setting), head
            requested with ``load_head: always`` but incompatible, or too many groups to freeze.
    """
    config = config or FinetuneConfig()
    model = module.model
    n_groups = len(model.encoder.layer_groups())
    plan = FinetunePlan(config=config, n_groups=n_groups, initial_frozen=_n_frozen(config.freeze, n_groups))
    graph = dict(graph if graph is not None else module.hparams.get("graph") or {})
    if isinstance(init_from, (list, tuple)):  # one checkpoint per stacked encoder
        if config.load_head == "always":
            raise ConfigError("model.finetune.load_head", "a list of checkpoints (a stack) initialises encoders only")
        _init_stacked(model, init_from, module.hparams["model"]["encoder"], graph)
        plan.init_from = "; ".join(f"stacked encoder {i}: {p if p is not None else 'its own weights'}"
                                   for i, p in enumerate(init_from))
        plan.head_reason = "a stack's checkpoints give encoder weights only"
    elif init_from is not None:
        pretrained = read_pretrained(init_from)
        check_graph(pretrained, graph)
        check_encoder(pretrained, module.hparams["model"]["encoder"])
        for encoder in _members(model.encoder):  # an ensemble's members all start from the pretrained weights
            _load_encoder(encoder, pretrained)
        plan.init_from = str(pretrained.path)
        _load_head(module, pretrained, config, plan)
    if plan.initial_frozen:
        model.freeze_encoder(plan.initial_frozen)
    module.finetune_plan = plan
    if log is not None and (init_from is not None or config.active):
        print(f"tlgnn: {plan.summary()}", file=log)
    return plan


class GradualUnfreezing(L.Callback):
    """At the start of every training epoch, freeze exactly the groups :meth:`FinetunePlan.frozen_at` says.

    Stateless (depends on the epoch only), so a resumed run unfreezes as an uninterrupted one.
    """

    def __init__(self, plan: FinetunePlan) -> None:
        self.plan = plan

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        k = self.plan.frozen_at(int(trainer.current_epoch))
        model = pl_module.model
        if k != model.frozen_groups:
            model.freeze_encoder(k)
            pl_module.log("finetune/frozen_groups", float(k), on_epoch=True, on_step=False)


def plan_callbacks(plan: FinetunePlan | None) -> list[L.Callback]:
    """The Lightning callbacks a plan needs (gradual unfreezing); the run builder passes them to the trainer."""
    if plan is None or not plan.config.unfreeze_every:
        return []
    return [GradualUnfreezing(plan)]


__all__ = [
    "FinetunePlan",
    "GradualUnfreezing",
    "apply_finetuning",
    "check_encoder",
    "check_graph",
    "full_options",
    "head_mismatch",
    "plan_callbacks",
]
