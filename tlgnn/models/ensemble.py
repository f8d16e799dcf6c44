"""Deep ensembles as one model: k members that differ by seed (and optionally by bootstrap), one artefact.

``model.ensemble: {members: k, bootstrap: bool, level: 0.9, calibration: conformal | scale | none, error_model}``
builds a :class:`~tlgnn.models.TransferModel` whose encoder and head hold the k members:

- the **encoder** is shared when it stays frozen (``shared_encoder``: the members read one embedding, so a frozen
  encoder runs once per material and its stored embeddings serve every member); otherwise an
  :class:`EnsembleEncoder` holds k encoders and returns their graph embeddings side by side, [B, k * d];
- the :class:`EnsembleHead` holds k heads of the same kind and options (a tree head's member i gets ``seed + i``);
  member i reads embedding slice i (or the shared one). Its ``forward`` is the members' mean, so losses, metrics,
  checkpoints and ``predict`` treat the ensemble as one model.

For regression task t with member predictions ŷ_1..ŷ_k (physical units):

    μ = mean_i ŷ_i,   σ_raw = std_i ŷ_i (population std, 0 for identical members),   σ = √((s_t σ_raw)² + f_t²)

(with an error model, σ gains a third term: see below), and the central interval at ``level`` (default 90 %) is
μ ± z σ with z = Φ⁻¹((1 + level) / 2) (``scale``) or μ ± q_t σ (``conformal``, the default: q_t the
split-conformal quantile of |y - μ| / σ on the validation split). The recalibration (scale s_t, floor f_t, q_t,
the constant σ_c of the baseline, i.e. the validation RMSE, and the error-model scale a_t) is fitted after
training by :func:`tlgnn.training.calibrate.calibrate_module` (:func:`tlgnn.uncertainty.fit_calibration`) and
kept in the ``calibration`` buffer [T, 5] (:data:`CALIBRATION_COLUMNS`), so checkpoints carry it.
Classification: the mean of the members' probabilities (``forward`` returns its log, which softmax maps back to
it) and their std per class.

Bootstrap (``bootstrap: true``): member i is trained on a fixed random ~63.2 % of the training rows (the rows a
bootstrap sample of n out of n contains, 1 - 1/e; chosen by hashing the table row index and i, so the same rows
every epoch, for gradient-trained and tree members alike). Each training row then has out-of-bag members, whose
mean is a prediction for a row they never saw; with ``error_model`` (default: on with bootstrap) a small
gradient-boosted model learns the out-of-bag |error| from the member inputs and the ensemble's mean (the
"jackknife-after-bootstrap plus a model of the residuals" idea of the random-forest uncertainty in lolo), and
the std becomes

    σ = √((s_t σ_raw)² + (a_t σ_err(x))² + f_t²),   σ_err = √(π/2) · E|error|(x, μ)

with (s_t, a_t, f_t) fitted on the validation split. σ_err grows where the ensemble erred on similar training
materials, which the members' spread alone does not say (members that agree can all be wrong). For the upper task
of a difference chain (y_high = ŷ_low + Δ) σ_err also holds the low prediction's: √(σ_err,high² + σ_err,low²)
where the low value is predicted (:meth:`EnsembleHead.chained_error`), since the low error model learns from every
low-fidelity label and the upper one only from the few high-fidelity ones.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from tlgnn.models.boosting import BoosterOptions, fit_booster
from tlgnn.models.encoders.base import Encoder, EncoderOutput
from tlgnn.models.trees import TreeEnsemble, lightgbm_arrays

CALIBRATIONS = ("scale", "conformal", "none")
#: Columns of :attr:`EnsembleHead.calibration`: std scale s, floor f (task unit), conformal quantile q (NaN:
#: unused), constant σ_c of the baseline (task unit, NaN: unknown), error-model scale a (0: unused).
CALIBRATION_COLUMNS = ("scale", "floor", "quantile", "constant_sigma", "error_scale")
#: LightGBM settings of the error models (small: they learn a smooth |error| surface from out-of-bag rows).
ERROR_MODEL_OPTIONS = BoosterOptions(n_estimators=500, learning_rate=0.03, num_leaves=15, min_child_samples=20,
                                     colsample=0.5, early_stopping_rounds=50, objective="regression", n_jobs=1)
#: What :meth:`EnsembleHead.uncertainty` gives per regression output besides the mean (task unit), in the order
#: prediction tables write them as ``<task>_<key>``.
UNCERTAINTY_KEYS = ("std", "std_raw", "std_error", "lower", "upper")
#: Share of the rows a bootstrap sample of n out of n contains (n -> inf): 1 - 1/e.
BOOTSTRAP_SHARE = 1.0 - math.exp(-1.0)


def ensemble_spec(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The checked ensemble spec of a model config (``None`` or ``members <= 1``: no ensemble)."""
    if not spec:
        return None
    known = {"members", "bootstrap", "level", "calibration", "shared_encoder", "error_model"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"model.ensemble: unknown option {unknown[0]!r}; options: {', '.join(sorted(known))}")
    members = spec.get("members", 1)
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise ValueError(f"model.ensemble.members must be an integer >= 1, got {members!r}")
    if members == 1:
        return None
    level = spec.get("level", 0.9)
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(f"model.ensemble.level must be a number in (0, 1), got {level!r}")
    calibration = spec.get("calibration", "conformal")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"model.ensemble.calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    bootstrap = bool(spec.get("bootstrap", False))
    error_model = spec.get("error_model")
    error_model = bootstrap if error_model is None else bool(error_model)
    if error_model and not bootstrap:
        raise ValueError("model.ensemble.error_model learns from out-of-bag errors: it needs bootstrap: true")
    return {"members": members, "bootstrap": bootstrap, "level": float(level), "calibration": calibration,
            "shared_encoder": bool(spec.get("shared_encoder", False)), "error_model": error_model}


class EnsembleEncoder(Encoder):
    """k encoders whose graph embeddings are concatenated, [B, k * d]; ``layer_groups()`` group j holds every
    member's group j (so freezing k groups freezes them in every member)."""

    def __init__(self, members: Sequence[Encoder]) -> None:
        nn.Module.__init__(self)
        self.members = nn.ModuleList(members)
        self.member_dim = int(members[0].out_dim)
        self.out_dim = self.member_dim * len(members)

    def forward(self, batch: Any) -> EncoderOutput:
        outs = [member(batch) for member in self.members]
        return EncoderOutput(node_emb=None, graph_emb=torch.cat([o.graph_emb for o in outs], 1))  # type: ignore

    def layer_groups(self) -> list[nn.Module]:
        groups = [member.layer_groups() for member in self.members]
        return [nn.ModuleList([g[j] for g in groups]) for j in range(len(groups[0]))]

    def prepare_batch(self, batch: Any) -> Any:
        return self.members[0].prepare_batch(batch)


def member_options(head_cls: type, options: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Head options of member ``i``: a head with a ``seed`` option (trees) gets ``seed + i``."""
    options = dict(options)
    if "seed" in inspect.signature(head_cls).parameters:
        options["seed"] = int(options.get("seed", 0)) + i
    return options


def bootstrap_mask(idx: torch.Tensor, member: int) -> torch.Tensor:
    """Whether each row (``idx`` [B], table rows) is in member ``member``'s training rows: a fixed pseudo-random
    ~63.2 % of the rows (a hash of (row, member), the same every epoch and on every machine)."""
    h = (idx.long() * 2654435761 + (member + 1) * 97531) % 4294967296
    h = (h ^ (h >> 13)) * 1274126177 % 4294967296
    return (h.double() / 4294967296.0) < BOOTSTRAP_SHARE


def out_of_bag_mean(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The mean over the members whose bootstrap left each row out: ``values`` [k, B] (member predictions),
    ``idx`` [B] (table rows) -> [B] float64, NaN where every member saw the row."""
    left_out = ~torch.stack([bootstrap_mask(idx.reshape(-1), i) for i in range(values.shape[0])]).to(values.device)
    count = left_out.sum(0)
    total = (values.double() * left_out).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


class EnsembleHead(nn.Module):
    """k heads of one kind predicting together; ``forward`` is their mean (see the module docstring).

    Args:
        members: the member heads (same kind, tasks and options but the seed).
        shared_input: whether every member reads the whole embedding (a shared encoder) or its slice.
        spec: the checked ensemble spec (:func:`ensemble_spec`).
    """

    is_ensemble = True

    def __init__(self, members: Sequence[nn.Module], shared_input: bool, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        first = self.members[0]
        self.shared_input = bool(shared_input)
        self.spec = dict(spec)
        self.level = float(spec["level"])
        self.tasks = first.tasks
        self.outputs = list(first.outputs)
        self.task_index = first.task_index
        self.task_by_name = first.task_by_name
        self.fits_directly = bool(getattr(first, "fits_directly", False))
        self.in_dim = first.in_dim if shared_input else first.in_dim * len(members)
        calibration = torch.zeros(len(self.tasks), len(CALIBRATION_COLUMNS))
        calibration[:, 0] = 1.0
        calibration[:, 2:4] = float("nan")
        self.register_buffer("calibration", calibration)
        regression = [n for n in self.outputs if self.task_by_name[n].kind == "regression"]
        # a model of the out-of-bag |error| per regression output (:mod:`tlgnn.models.trees`, buffers: no pickle)
        self.error_models = nn.ModuleDict({n: TreeEnsemble() for n in regression} if spec["error_model"] else {})

    @property
    def k(self) -> int:
        return len(self.members)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):
                raise
            # what the members share (output labels, context, known values, options) is read from the first
            return getattr(self._modules["members"][0], name)

    # ----------------------------------------------------------------- members
    def member_input(self, enc: EncoderOutput, i: int) -> EncoderOutput:
        """The encoder output member ``i`` reads: the shared embedding or its slice ``i``."""
        if self.shared_input:
            return enc
        d = self.members[0].in_dim
        return EncoderOutput(node_emb=enc.node_emb, graph_emb=enc.graph_emb[:, i * d:(i + 1) * d])

    def member_outputs(self, enc: EncoderOutput, batch: Any = None) -> list[dict[str, torch.Tensor]]:
        """Each member's ``{task: prediction}`` (regression physical units, classification logits)."""
        return [member(self.member_input(enc, i), batch) for i, member in enumerate(self.members)]

    def member_predictions(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        """``{task: [k, B]}`` regression values or ``[k, B, C]`` class probabilities, member by member."""
        outs = self.member_outputs(enc, batch)
        stacked = {}
        for name in self.outputs:
            values = torch.stack([out[name] for out in outs])
            stacked[name] = torch.softmax(values.float(), -1) if values.dim() == 3 else values
        return stacked

    def forward(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        """The ensemble's prediction: the members' mean (classification: the log of the mean probability)."""
        out = {}
        for name, values in self.member_predictions(enc, batch).items():
            out[name] = values.mean(0).clamp_min(1e-12).log() if values.dim() == 3 else values.mean(0)
        return out

    def extras(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        """The members' mean of each extra output (Δ, ELV latents) and its spread ``<name>_std``."""
        outs = [member.extras(self.member_input(enc, i), batch) for i, member in enumerate(self.members)]
        extras: dict[str, torch.Tensor] = {}
        for name in outs[0]:
            values = torch.stack([out[name] for out in outs]).float()
            extras[name] = values.mean(0)
            extras[f"{name}_std"] = values.std(0, unbiased=False)
        return extras

    def uncertainty(self, enc: EncoderOutput, batch: Any = None) -> dict[str, dict[str, torch.Tensor]]:
        """Per output ``{"mean", "std", "std_raw", "lower", "upper"}`` [B] (regression, physical units; with an
        error model also ``"std_error"``, σ_err) or ``{"mean", "std"}`` [B, C] (classification probabilities), and
        ``"members"``: [k, B(, C)]."""
        result = {}
        predictions = {name: values.float() for name, values in self.member_predictions(enc, batch).items()}
        means = {name: values.mean(0) for name, values in predictions.items()}
        errors: dict[str, torch.Tensor] = {}
        if self.error_models:  # regression outputs only: the error models are fitted for those
            errors = self.error_stds(self.error_inputs(enc, batch), means,
                                     {name: self.known_low_rows(name, batch) for name in means})
        for name, values in predictions.items():
            mean, raw = means[name], values.std(0, unbiased=False)
            item = {"mean": mean, "std_raw": raw, "members": values}
            if values.dim() == 2:
                error = errors.get(name)
                if error is not None:
                    item["std_error"] = error
                item.update(self.interval(name, mean, raw, error))
            else:
                item["std"] = raw
            result[name] = item
        return result

    def built_on(self, name: str) -> str | None:
        """The task whose prediction a difference member adds its correction to for output ``name`` (the chain
        task just below it), or ``None``."""
        chain = list(getattr(self.members[0], "chain", None) or ())
        return chain[chain.index(name) - 1] if name in chain[1:] else None

    def known_low_rows(self, name: str, batch: Any = None) -> torch.Tensor | None:
        """[B] bool: the rows where the low value output ``name`` is built on is known and used
        (``use_known_low``), or ``None`` (not the upper task of a chain, not used, or no batch)."""
        low = self.built_on(name)
        if low is None or batch is None or not getattr(self.members[0], "use_known_low", False):
            return None
        known = self.members[0].known_label(batch, low)
        return None if known is None else known[1]

    def chained_error(self, name: str, error: torch.Tensor | None, lower: Mapping[str, torch.Tensor],
                      known_low: torch.Tensor | None = None) -> torch.Tensor | None:
        """σ_err of output ``name`` [B]: its own error model's, and for a difference chain's upper task also the
        σ_err of the low prediction it is built on (in ``lower``), √(σ_err,high² + σ_err,low²), except on rows
        where the low value is known and used (``known_low`` [B] bool, :meth:`known_low_rows`): there it carries
        no error. The low task's error model learns from every low-fidelity label, the upper one's from the few
        high-fidelity ones: measured on HSE / SCAN (docs/uncertainty.md), the sum ranks the upper task's errors
        better than its own model alone."""
        low = self.built_on(name)
        if error is None or low not in lower:
            return error
        low_error = lower[low]
        if known_low is not None:
            low_error = torch.where(known_low, torch.zeros_like(low_error), low_error)
        return torch.sqrt(error ** 2 + low_error ** 2)

    def error_stds(self, inputs: torch.Tensor, means: Mapping[str, torch.Tensor],
                   known_low: Mapping[str, torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
        """σ_err [B] of each regression output in ``means`` (its mean μ [B] there) that has a fitted error model,
        a chain's upper task with its low one's (:meth:`chained_error`); ``inputs`` [B, f] are the error inputs
        (:meth:`error_inputs`), ``known_low`` the rows per output where the low value is known. The one place
        σ_err is formed: predictions, calibration and its held-out training rows all read it."""
        errors: dict[str, torch.Tensor] = {}
        for name in self.outputs:  # a chain's outputs come lowest first
            if name not in means:
                continue
            error = self.chained_error(name, self.error_std(name, inputs, means[name]), errors,
                                       (known_low or {}).get(name))
            if error is not None:
                errors[name] = error
        return errors

    # ----------------------------------------------------------------- error model
    def error_inputs(self, enc: EncoderOutput, batch: Any = None) -> torch.Tensor:
        """What the error models read besides the ensemble's mean: the members' inputs (the embedding and the raw
        context, as a tree head reads them), [B, f]."""
        first = self.members[0]
        if hasattr(first, "tree_inputs"):
            return first.tree_inputs(enc, batch).double()
        g = enc.graph_emb.double()
        return torch.cat([g, first.raw_context(batch).double()], 1) if first.context_dim else g

    def error_std(self, name: str, inputs: torch.Tensor | None, mean: torch.Tensor) -> torch.Tensor | None:
        """σ_err of output ``name`` [B] (task unit): √(π/2) times the error model's E|error| at (inputs, μ), or
        ``None`` without a fitted error model."""
        model = self.error_models[name] if name in self.error_models else None
        if model is None or inputs is None or model.num_trees == 0:
            return None
        x = torch.cat([inputs, mean.double()[:, None]], 1)
        return (model(x).clamp_min(0.0) * math.sqrt(math.pi / 2.0)).to(mean.dtype)

    def fit_error_model(self, name: str, x: Any, abs_error: Any, x_val: Any, abs_error_val: Any) -> dict[str, Any]:
        """Fit output ``name``'s error model on rows ``x`` [n, f + 1] (error inputs and the mean) with targets
        |error| [n] (out-of-bag), early-stopped on the validation rows."""
        booster, info = fit_booster(x, abs_error, x_val, abs_error_val, ERROR_MODEL_OPTIONS,
                                    f"error model of {name!r}")
        self.error_models[name].set_arrays(lightgbm_arrays(booster.dump_model(num_iteration=info["best_iteration"])))
        return info

    # ----------------------------------------------------------------- calibration
    def interval(self, name: str, mean: torch.Tensor, raw_std: torch.Tensor,
                 error_std: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The calibrated std and the central interval at ``level`` of regression output ``name``."""
        scale, floor, quantile, _, error_scale = self.calibration[self.task_index[name]].tolist()
        var = (raw_std * scale) ** 2 + floor ** 2
        if error_std is not None:
            var = var + (error_std * error_scale) ** 2
        std = torch.sqrt(var)
        if math.isnan(quantile):
            quantile = float(torch.special.ndtri(torch.tensor((1.0 + self.level) / 2.0, dtype=torch.float64)))
        lower = mean - quantile * std
        if name in getattr(self.members[0], "nonnegative", ()):  # the interval stays in the physical range
            lower = lower.clamp_min(0.0)
        return {"std": std, "lower": lower, "upper": mean + quantile * std}

    def set_calibration(self, name: str, values: Mapping[str, float | None]) -> None:
        """Store task ``name``'s recalibration: ``values`` has the keys of :data:`CALIBRATION_COLUMNS` (``None``:
        unused / unknown; a missing scale is 1, a missing floor 0)."""
        defaults = {"scale": 1.0, "floor": 0.0, "error_scale": 0.0}
        row = self.calibration[self.task_index[name]]
        for j, key in enumerate(CALIBRATION_COLUMNS):
            value = values.get(key, defaults.get(key))
            row[j] = float("nan") if value is None else float(value)

    def calibration_of(self, name: str) -> dict[str, float | None]:
        """``{"scale", "floor", "quantile", "constant_sigma", "error_scale"}`` of task ``name`` (``None`` where
        unset)."""
        values = self.calibration[self.task_index[name]].tolist()
        return {key: (None if math.isnan(v) else v) for key, v in zip(CALIBRATION_COLUMNS, values)}

    # ----------------------------------------------------------------- training
    def training_loss(self, enc: EncoderOutput, batch: Any,
                      losses_of: Callable[[Mapping[str, torch.Tensor], Any, torch.Tensor], dict[str, torch.Tensor]]
                      ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The mean over members of each member's combined loss (its own predictions; with ``bootstrap`` only
        its rows), and the members' mean per-task losses. ``losses_of(preds, batch, mask)`` is the run's masked
        loss. ``(None, {})`` when no member has a labelled row in the batch."""
        totals, per_task = [], {}
        for i, (member, preds) in enumerate(zip(self.members, self.member_outputs(enc, batch))):
            mask = batch.y_mask.bool()
            if self.spec["bootstrap"]:
                mask = mask & bootstrap_mask(batch.idx.to(mask.device), i)[:, None]
            losses = losses_of(preds, batch, mask)
            if not losses:
                continue
            totals.append(member.combine_losses(losses))
            for name, value in losses.items():
                per_task.setdefault(name, []).append(value)
        if not totals:
            return None, {}
        return torch.stack(totals).mean(), {name: torch.stack(v).mean() for name, v in per_task.items()}

    def combine_losses(self, per_task_losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.members[0].combine_losses(per_task_losses)

    def fit_arrays(self, x, y, mask, x_val=None, y_val=None, mask_val=None, idx=None) -> dict[str, Any]:
        """Fit every member directly (tree heads); with ``bootstrap`` member i on its rows of ``idx`` [n] (table
        rows, :func:`bootstrap_mask`). Returns ``{"members": [history, ...]}``."""
        histories = []
        for i, member in enumerate(self.members):
            rows = slice(None)
            if self.spec["bootstrap"]:
                if idx is None:
                    raise ValueError("a bootstrap ensemble of directly fitted heads needs the rows' table index (idx)")
                rows = bootstrap_mask(torch.as_tensor(idx), i).numpy()
            histories.append(member.fit_arrays(x[rows], y[rows], mask[rows], x_val, y_val, mask_val))
        return {"members": histories}

    # ----------------------------------------------------------------- statistics
    def set_target_stats(self, mean: Mapping[str, float], std: Mapping[str, float],
                         pairs: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> None:
        for member in self.members:
            member.set_target_stats(mean, std, pairs)


def build_ensemble(encoder: Callable[[], Encoder], head: Callable[[int, int], nn.Module],
                   spec: Mapping[str, Any]) -> tuple[Encoder, EnsembleHead]:
    """The encoder (one, shared, or an :class:`EnsembleEncoder`) and :class:`EnsembleHead` of ``spec``:
    ``encoder()`` builds one encoder, ``head(i, in_dim)`` member ``i``'s head."""
    k = int(spec["members"])
    if spec["shared_encoder"]:
        enc = encoder()
        return enc, EnsembleHead([head(i, enc.out_dim) for i in range(k)], True, spec)
    encoders = [encoder() for _ in range(k)]
    return EnsembleEncoder(encoders), EnsembleHead([head(i, encoders[0].out_dim) for i in range(k)], False, spec)


def is_ensemble(head: Any) -> bool:
    """Whether ``head`` is an :class:`EnsembleHead`."""
    return bool(getattr(head, "is_ensemble", False))


__all__ = ["BOOTSTRAP_SHARE", "CALIBRATIONS", "CALIBRATION_COLUMNS", "UNCERTAINTY_KEYS", "EnsembleEncoder",
           "EnsembleHead", "bootstrap_mask", "build_ensemble", "ensemble_spec", "is_ensemble", "member_options",
           "out_of_bag_mean"]
