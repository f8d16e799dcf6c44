"""Head interface: (EncoderOutput, batch) -> {task name: prediction}, with target statistics and loss weighting.

A head is built as ``HEADS[name](in_dim, tasks, **options)`` where ``tasks`` is the dataset's full, ordered task
list (the column order of ``batch.y``; items are :class:`tlgnn.data.TaskSpec` or anything with ``name``,
``kind``, ``classes``, ``fidelity`` and ``unit``). Options name the subset the head predicts
(``head.outputs``). Regression outputs are ``mean + std * raw`` in physical units, with per-task statistics
set from the training split by :meth:`Head.set_target_stats` and stored as buffers (so checkpoints carry
them); classification outputs are logits [B, C]. Option ``nonnegative`` (every head) clamps the named
regression outputs at 0 in physical units, after the head's own arithmetic and before the loss. Option
``context`` (every head, :mod:`tlgnn.models.heads.context`) appends composition features and known values of
other tasks to the graph embedding that every readout MLP reads (:meth:`Head.inputs`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tlgnn.models.composition import CompositionFeatures, counts_of
from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.heads.context import parse_context
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
    and prediction alike; default none, so heads saved before the option behave as they did), ``context``
    (``{"composition": bool, "known": [tasks]}``, default none: see :mod:`tlgnn.models.heads.context`) and
    ``known_dropout`` (0.0: in training only, each known value the head reads, context and a difference head's
    known low alike, is hidden with this probability, as if the crystal had none, so that one model serves
    crystals with and without it).
    Subclasses call ``super().__init__(in_dim, tasks, outputs, **common)`` with the names they predict,
    build their networks with :meth:`make_mlp` (whose default input width is ``in_dim + context_dim``), feed
    them :meth:`inputs` and return :meth:`physical` values from ``forward``.
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
        context: Mapping[str, Any] | None = None,
        known_dropout: float = 0.0,
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
        self._init_context(context, known_dropout)

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
        """A readout MLP with the head's ``hidden``/``activation``/``dropout`` settings; its input width is
        ``in_dim`` if given, else :attr:`input_dim` (the graph embedding plus the context)."""
        return mlp(self.input_dim if in_dim is None else in_dim, self.hidden, out_dim, self.activation, self.dropout)

    @classmethod
    def upgrade_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options of a head config read from a checkpoint, completed so that they rebuild the head the
        checkpoint was trained as (an option added later whose default would change an older head is set to
        its older behaviour). The base class has none; :func:`tlgnn.training.checkpoint.read_checkpoint` calls it."""
        return dict(options)

    def recorded_options(self) -> dict[str, Any]:
        """Options whose default depends on other options (or on when the config was written), as this head
        resolved them; a checkpoint's config records them (:class:`tlgnn.training.module.TransferModule`), so
        :meth:`upgrade_options` never mistakes a new file for an old one. ``{}`` for the base class."""
        return {}

    # ----------------------------------------------------------------- context
    def _init_context(self, context: Mapping[str, Any] | None, known_dropout: float) -> None:
        head = getattr(type(self), "registry_name", type(self).__name__)
        self.context_spec = parse_context(context, self.tasks, self.outputs, head)
        if not (isinstance(known_dropout, (int, float)) and 0.0 <= float(known_dropout) < 1.0):
            raise ValueError(f"{head} head option known_dropout must be a number in [0, 1), got {known_dropout!r}")
        self.known_dropout = float(known_dropout)
        if self.context_spec.composition:  # a submodule only when used: heads without context keep their state_dict
            self.composition = CompositionFeatures()

    @property
    def context_dim(self) -> int:
        """Width of :meth:`context`: F composition features (if any) + 2 per known task (value, presence)."""
        width = self.composition.dim if self.context_spec.composition else 0
        return width + 2 * len(self.context_spec.known)

    @property
    def input_dim(self) -> int:
        """Width of :meth:`inputs`: the graph embedding's ``in_dim`` plus :attr:`context_dim`."""
        return self.in_dim + self.context_dim

    def context_names(self, raw: bool = False) -> list[str]:
        """Column names of :meth:`context` (``raw=False``) or :meth:`raw_context` (``raw=True``)."""
        names = list(self.composition.names) if self.context_spec.composition else []
        for task in self.context_spec.known:
            names += [f"known_{task}"] if raw else [f"known_{task}", f"known_{task}_present"]
        return names

    def reads_known(self) -> list[str]:
        """Tasks whose known values (``batch.y`` where ``batch.y_mask``) this head reads besides its own labels in
        the loss: ``context.known`` (and a difference head's known low values). A predictor says when a table of
        known values can have no effect."""
        return list(self.context_spec.known)

    def known_values(self, batch: Any, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(values [B], present [B] bool)`` of task ``name`` as the head reads them: the batch's labels, with
        ``known_dropout`` applied in training (hidden values: present False). ``None`` if the batch has no labels."""
        known = self.known_label(batch, name) if batch is not None else None
        if known is None or not (self.training and self.known_dropout > 0):
            return known
        values, present = known
        keep = torch.rand(present.shape, device=present.device) >= self.known_dropout
        return values, present & keep

    def _known_columns(self, batch: Any, n: int, like: torch.Tensor, raw: bool) -> list[torch.Tensor]:
        columns = []
        for name in self.context_spec.known:
            known = self.known_label(batch, name) if raw else self.known_values(batch, name)
            if known is None:
                values, present = like.new_zeros(n), torch.zeros(n, dtype=torch.bool, device=like.device)
            else:
                values, present = known[0].to(like.dtype), known[1]
            if raw:
                columns.append(torch.where(present, values, torch.full_like(values, float("nan"))))
                continue
            i = self.task_index[name]
            scaled = (values - self.target_mean[i]) / self.target_std[i]
            columns += [torch.where(present, scaled, torch.zeros_like(scaled)), present.to(like.dtype)]
        return columns

    def _context(self, batch: Any, n: int, like: torch.Tensor, raw: bool) -> torch.Tensor:
        if self.context_dim == 0:
            return like.new_zeros(n, 0)
        if batch is None:
            raise ValueError(f"this head reads a context ({', '.join(self.context_names(raw))}): pass the batch")
        parts = []
        if self.context_spec.composition:
            counts = counts_of(batch).to(like.device)
            parts.append(self.composition(counts) if raw else self.composition.standardized(counts))
        columns = self._known_columns(batch, n, like, raw)
        if columns:
            parts.append(torch.stack(columns, 1))
        return torch.cat([p.to(like.dtype) for p in parts], 1)

    def context(self, batch: Any) -> torch.Tensor:
        """Standardised context [B, context_dim] for MLP inputs (see :mod:`tlgnn.models.heads.context`): composition
        features (``CompositionFeatures.standardized``), then per known task its standardised value (0 where
        absent) and its presence flag. ``known_dropout`` applies in training."""
        return self._context(batch, _num_graphs(batch), self.target_mean, raw=False)

    def raw_context(self, batch: Any) -> torch.Tensor:
        """Raw context [B, F + len(known)] for tree heads: composition features in their units, then each known
        task's value in its unit, NaN where absent (no dropout, no flags)."""
        return self._context(batch, _num_graphs(batch), self.target_mean, raw=True)

    def inputs(self, enc: EncoderOutput, batch: Any) -> torch.Tensor:
        """What the readout MLPs read: ``enc.graph_emb`` [B, in_dim], with :meth:`context` appended when the head
        has one ([B, input_dim])."""
        g = enc.graph_emb
        if self.context_dim == 0:
            return g
        return torch.cat([g, self._context(batch, g.shape[0], g, raw=False)], 1)

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


def _num_graphs(batch: Any) -> int:
    """Number of structures in a batch (``num_graphs``; 0 for ``None``)."""
    if batch is None:
        return 0
    n = getattr(batch, "num_graphs", None)
    if n is None:
        raise ValueError(f"{type(batch).__name__} has no num_graphs")
    return int(n)


def _clamp_nonnegative(head: Head, args: Any, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Forward hook of a head with ``nonnegative`` tasks: those outputs become ``max(0, y)`` (physical units).

    A prediction below 0 becomes exactly 0 (a metal's band gap) and passes no gradient; predictions above 0
    are unchanged, so against labels that are >= 0 the clamp never increases an error.
    """
    return {name: value.clamp(min=0.0) if name in head.nonnegative else value for name, value in outputs.items()}
