"""Head interface: (EncoderOutput, batch) -> {task name: prediction}, with target statistics and loss weighting.

A head is built as ``HEADS[name](in_dim, tasks, **options)`` where ``tasks`` is the dataset's full, ordered task
list (the column order of ``batch.y``; items are :class:`tlgnn.data.TaskSpec` or anything with ``name``,
``kind``, ``classes``, ``fidelity`` and ``unit``). Options name the subset the head predicts
(``head.outputs``). Regression outputs are ``mean + std * raw`` in physical units, with per-task statistics
set from the training split by :meth:`Head.set_target_stats` and stored as buffers (so checkpoints carry
them); classification outputs are logits [B, C]. Option ``nonnegative`` (every head) clamps the named
regression outputs at 0 in physical units, after the head's own arithmetic and before the loss.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.layers import mlp
from tlgnn.models.registry import Registry, close_matches

HEADS = Registry("head", positional=("in_dim", "tasks"))
"""Registered heads by name; ``HEADS[name](in_dim, tasks, **options)`` builds one."""

TASK_KINDS = ("regression", "classification")
WEIGHTINGS = ("fixed", "uncertainty")


def register_head(name: str):
    """Class decorator registering a :class:`Head` subclass under ``name``."""
    return HEADS.register(name)


def build_head(name: str, in_dim: int, tasks: Sequence[Any], **options: Any) -> "Head":
    """Build a registered head; an unknown name or option raises ``ValueError`` with close matches."""
    return HEADS.build(name, in_dim, list(tasks), **options)


def find_task(tasks: Sequence[Any], name: str, where: str, kind: str | None = None) -> Any:
    """The task called ``name`` in ``tasks``; ``ValueError`` naming ``where`` (e.g. "difference head option
    chain[1]") with close matches if it is unknown, or if it is not of ``kind``."""
    by_name = {t.name: t for t in tasks}
    if name not in by_name:
        raise ValueError(
            f"{where}: unknown task {name!r}{close_matches(str(name), list(by_name))}; "
            f"tasks: {', '.join(by_name)}"
        )
    task = by_name[name]
    if kind is not None and task.kind != kind:
        raise ValueError(f"{where}: task {name!r} is {task.kind}, needs {kind}")
    return task


class Head(nn.Module):
    """Base class of prediction heads.

    Common options (every head): ``hidden`` (hidden widths of each readout MLP, default ``[64]``),
    ``activation`` ("silu"), ``dropout`` (0.0), ``weighting`` ("fixed" or "uncertainty", see
    :meth:`combine_losses`), ``task_weights`` ({task: weight}, default 1; "fixed" only) and ``nonnegative``
    (regression outputs that cannot be negative, e.g. band gaps: ``max(0, y)`` in physical units, in training
    and prediction alike; default none, so heads saved before the option behave as they did).
    Subclasses call ``super().__init__(in_dim, tasks, outputs, **common)`` with the names they predict,
    build their networks with :meth:`make_mlp` and return :meth:`physical` values from ``forward``.
    """

    #: Whether the head is fitted directly on arrays (``fit_arrays``, the tree head) instead of by gradient descent.
    fits_directly = False

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[Any],
        outputs: Sequence[str],
        *,
        hidden: Sequence[int] = (64,),
        activation: str = "silu",
        dropout: float = 0.0,
        weighting: str = "fixed",
        task_weights: Mapping[str, float] | None = None,
        nonnegative: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if int(in_dim) < 1:
            raise ValueError(f"head in_dim must be >= 1, got {in_dim}")
        self.in_dim = int(in_dim)
        self.tasks = list(tasks)
        self._check_tasks()
        self.task_index = {t.name: i for i, t in enumerate(self.tasks)}
        self.task_by_name = {t.name: t for t in self.tasks}
        for name in outputs:
            self.require_task(name, "outputs")
        if not outputs:
            raise ValueError(f"{type(self).__name__} predicts no task")
        self.outputs = list(outputs)
        self.hidden = [int(h) for h in hidden]
        self.activation = activation
        self.dropout = float(dropout)
        mlp(1, self.hidden, 1, activation, self.dropout)  # validates the MLP options early
        n = len(self.tasks)
        self.register_buffer("target_mean", torch.zeros(n))
        self.register_buffer("target_std", torch.ones(n))
        self._pair_stats: dict[tuple[str, str], tuple[float, float]] = {}  # (low, high) -> mean, std of high - low
        self._init_weighting(weighting, task_weights)
        self._init_nonnegative(nonnegative)

    # ----------------------------------------------------------------- tasks
    def _check_tasks(self) -> None:
        seen: set[str] = set()
        for i, t in enumerate(self.tasks):
            for attr in ("name", "kind"):
                if not hasattr(t, attr):
                    raise TypeError(f"tasks[{i}] has no attribute {attr!r}; pass tlgnn.data.TaskSpec objects")
            if t.name in seen:
                raise ValueError(f"tasks[{i}]: task {t.name!r} is listed twice")
            seen.add(t.name)
            if t.kind not in TASK_KINDS:
                raise ValueError(f"task {t.name!r}: kind must be one of {TASK_KINDS}, got {t.kind!r}")
            if t.kind == "classification" and (not getattr(t, "classes", None) or len(t.classes) < 2):
                raise ValueError(f"task {t.name!r}: a classification task needs at least 2 classes")

    def require_task(self, name: str, option: str, kind: str | None = None) -> Any:
        """The task called ``name``; a clear error naming ``option`` if it is unknown or of the wrong kind."""
        head = getattr(type(self), "registry_name", type(self).__name__)
        return find_task(self.tasks, name, f"{head} head option {option}", kind)

    def output_label(self, name: str) -> str:
        """How messages name the output ``name``: ``task 'name'``; heads that compute it from a formula add it."""
        return f"task {name!r}"

    def out_size(self, name: str) -> int:
        """Raw output width for a task: 1 for regression, the number of classes for classification."""
        task = self.task_by_name[name]
        return 1 if task.kind == "regression" else len(task.classes)

    def make_mlp(self, out_dim: int, in_dim: int | None = None) -> nn.Sequential:
        """A readout MLP with the head's ``hidden``/``activation``/``dropout`` settings."""
        return mlp(self.in_dim if in_dim is None else in_dim, self.hidden, out_dim, self.activation, self.dropout)

    # ----------------------------------------------------------------- statistics
    def set_target_stats(self, mean: Mapping[str, float], std: Mapping[str, float],
                         pairs: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> None:
        """Store per-task mean and standard deviation (physical units) of the training labels.

        Tasks not named keep their current values (initially mean 0, std 1); entries for classification
        tasks are ignored. Unknown task names, non-finite values and ``std <= 0`` raise ``ValueError``.
        ``pairs[high][low] = [mean, std]``: statistics of ``high - low`` over the training rows labelled with
        both (what a difference head normalises its Δ with); pairs not named keep their current values.
        """
        checked: dict[tuple[str, str], tuple[float, float]] = {}
        for high, lows in (pairs or {}).items():
            for low, pair in lows.items():
                for name in (high, low):
                    if name not in self.task_index:
                        raise ValueError(f"set_target_stats pairs: unknown task {name!r}"
                                         f"{close_matches(str(name), list(self.task_index))}")
                if len(pair) != 2 or not all(math.isfinite(float(v)) for v in pair) or float(pair[1]) <= 0:
                    raise ValueError(f"set_target_stats pairs[{high!r}][{low!r}] must be [mean, std > 0], got {pair}")
                checked[(str(low), str(high))] = (float(pair[0]), float(pair[1]))
        for label, values in (("mean", mean), ("std", std)):
            for name, value in values.items():
                if name not in self.task_index:
                    raise ValueError(
                        f"set_target_stats {label}: unknown task {name!r}"
                        f"{close_matches(str(name), list(self.task_index))}"
                    )
                if not math.isfinite(float(value)):
                    raise ValueError(f"set_target_stats {label}[{name!r}] must be finite, got {value}")
                if label == "std" and float(value) <= 0:
                    raise ValueError(f"set_target_stats std[{name!r}] must be > 0, got {value}")
        with torch.no_grad():
            for name, value in mean.items():
                if self.task_by_name[name].kind == "regression":
                    self.target_mean[self.task_index[name]] = float(value)
            for name, value in std.items():
                if self.task_by_name[name].kind == "regression":
                    self.target_std[self.task_index[name]] = float(value)
        self._pair_stats.update(checked)
        self.on_target_stats()

    def on_target_stats(self) -> None:
        """Hook for heads that derive further statistics (difference, ELV) from the task statistics."""

    def paired_stats(self) -> dict[str, dict[str, list[float]]]:
        """The pair statistics the head normalises with, as ``{high: {low: [mean, std]}}`` (none by default)."""
        return {}

    def target_stats(self) -> tuple[dict[str, float], dict[str, float]]:
        """Current ``(mean, std)`` of every regression task."""
        names = [t.name for t in self.tasks if t.kind == "regression"]
        return (
            {n: float(self.target_mean[self.task_index[n]]) for n in names},
            {n: float(self.target_std[self.task_index[n]]) for n in names},
        )

    def physical(self, name: str, raw: torch.Tensor) -> torch.Tensor:
        """Raw network output -> prediction: ``mean + std * raw[:, 0]`` (regression) or logits [B, C]."""
        if self.task_by_name[name].kind == "classification":
            return raw
        i = self.task_index[name]
        return self.target_mean[i] + self.target_std[i] * raw.reshape(raw.shape[0], -1)[:, 0]

    # ----------------------------------------------------------------- labels in the batch
    def known_label(self, batch: Any, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(values [B], present [B] bool)`` of task ``name`` in ``batch.y``/``batch.y_mask``, or ``None``."""
        y, mask = getattr(batch, "y", None), getattr(batch, "y_mask", None)
        if y is None or mask is None:
            return None
        i = self.task_index[name]
        if y.dim() != 2 or y.shape[1] != len(self.tasks):
            raise ValueError(
                f"batch.y has shape {tuple(y.shape)}, expected [B, {len(self.tasks)}] (one column per task)"
            )
        return y[:, i], mask[:, i].bool()

    # ----------------------------------------------------------------- physical range
    def _init_nonnegative(self, names: Sequence[str]) -> None:
        if isinstance(names, str):
            raise ValueError(f"head option nonnegative must be a list of task names, got {names!r}")
        for name in names:
            self.require_task(name, "nonnegative", kind="regression")
            if name not in self.outputs:
                raise ValueError(f"head option nonnegative: {name!r} is not predicted by this head; outputs: "
                                 f"{', '.join(self.outputs)}")
        self.nonnegative = list(dict.fromkeys(str(n) for n in names))
        if self.nonnegative:  # one place for every head: applied to whatever its forward returns
            self.register_forward_hook(_clamp_nonnegative)

    # ----------------------------------------------------------------- losses
    def _init_weighting(self, weighting: str, task_weights: Mapping[str, float] | None) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"head option weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.weighting = weighting
        weights = dict(task_weights or {})
        if weighting == "uncertainty" and weights:
            raise ValueError("head option task_weights applies to weighting='fixed' only")
        for name, w in weights.items():
            if name not in self.outputs:
                raise ValueError(
                    f"head option task_weights: {name!r} is not predicted by this head"
                    f"{close_matches(str(name), self.outputs)}; outputs: {', '.join(self.outputs)}"
                )
            if not (math.isfinite(float(w)) and float(w) >= 0):
                raise ValueError(f"head option task_weights[{name!r}] must be a finite number >= 0, got {w}")
        self.task_weights = {n: float(weights.get(n, 1.0)) for n in self.outputs}
        if weighting == "uncertainty":
            # s_t = log sigma_t^2 of Kendall, Gal & Cipolla (CVPR 2018), one learnable scalar per output
            self.log_vars = nn.ParameterDict({n: nn.Parameter(torch.zeros(())) for n in self.outputs})

    def combine_losses(self, per_task_losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One scalar from per-task losses (as ``masked_loss`` computes them, regression in normalised units).

        ``fixed``: ``sum_t w_t L_t``. ``uncertainty`` (Kendall et al. 2018): ``sum_t 0.5 exp(-s_t) L_t +
        0.5 s_t`` for regression and ``exp(-s_t) L_t + 0.5 s_t`` for classification, ``s_t = log sigma_t^2``
        learned. Pass only tasks with at least one label in the batch: a task left out contributes nothing
        (including its ``s_t`` term, which would otherwise drift).
        """
        if not per_task_losses:
            raise ValueError("combine_losses needs at least one task loss")
        total: torch.Tensor | None = None
        for name, loss in per_task_losses.items():
            if name not in self.task_weights:
                raise ValueError(
                    f"combine_losses: {name!r} is not predicted by this head"
                    f"{close_matches(str(name), self.outputs)}; outputs: {', '.join(self.outputs)}"
                )
            if self.weighting == "fixed":
                term = self.task_weights[name] * loss
            else:
                s = self.log_vars[name]
                scale = 0.5 if self.task_by_name[name].kind == "regression" else 1.0
                term = scale * torch.exp(-s) * loss + 0.5 * s
            total = term if total is None else total + term
        assert total is not None
        return total

    # ----------------------------------------------------------------- forward
    def forward(self, enc: EncoderOutput, batch: Any) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def extras(self, enc: EncoderOutput, batch: Any) -> dict[str, torch.Tensor]:
        """Per-structure values [B] besides the predictions that a head exposes for analysis (physical units),
        keyed by the column name a caller writes them under: ``delta_<task>`` (difference head),
        ``latent_<name>`` (ELV head). ``{}`` for heads with nothing to add."""
        return {}

    def parameters_dict(self) -> dict[str, torch.Tensor]:
        """The head's learned scalar constants by name (0-dim tensors; the ELV head's ``parameters``), else
        ``{}``."""
        return {}


def _clamp_nonnegative(head: Head, args: Any, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward hook of a head with ``nonnegative`` tasks: those outputs become ``max(0, y)`` (physical units).

    A prediction below 0 becomes exactly 0 (a metal's band gap) and passes no gradient; predictions above 0
    are unchanged, so against labels that are >= 0 the clamp never increases an error.
    """
    return {name: value.clamp(min=0.0) if name in head.nonnegative else value for name, value in outputs.items()}
