"""Difference (Δ-learning) head along a fidelity chain ``[low, ..., high]`` of regression tasks.

    y_0 = mean_0 + std_0 * MLP_0(g)
    Δ_k = dmean_k + dstd_k * MLP_Δk(g)
    y_k = ŷ_{k-1} + Δ_k                          k = 1..K

``dmean_k``, ``dstd_k`` are the mean and std of ``y_k - y_{k-1}`` over the training rows labelled with both
(the ``pairs`` statistics of :meth:`Head.set_target_stats`, which the data module computes). Only where no
such rows exist do they fall back to ``mean_k - mean_{k-1}`` and ``std_k``: the two tasks' labels usually
cover different crystals (e.g. PBE for all, GLLB-SC for the wide-gap ones), so that difference of means can
be off by the better part of an eV and their spread several times that of the difference.

``ŷ_{k-1}`` is the predicted ``y_{k-1}``, or, with ``use_known_low=True``, the label of task k-1 wherever the
batch has it (``batch.y_mask``), in training and prediction alike. All arithmetic is in physical units.

With ``condition_on_known_low`` (default: equal to ``use_known_low``) the correction also sees the known value:

    Δ_k = dmean_k + dstd_k * MLP_Δk([g, (y_{k-1} - mean_{k-1}) / std_{k-1} · m, m])

where ``m`` is 1 where the batch has the label of task k-1 and 0 where it has not (then the net sees "unknown":
value 0, flag 0, and ``ŷ_{k-1}`` is the prediction). So Δ can be a nonlinear function of the low-fidelity value
(e.g. a gap that opens only above some PBE gap), not only of the structure. ``known_dropout`` (every head) hides
a known value in training with the given probability, so one model learns both cases. ``g`` is the graph
embedding with the head's ``context`` appended.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.heads.base import Head, find_task, register_head


@register_head("difference")
class DifferenceHead(Head):
    """Options: ``chain`` (≥ 2 regression task names, lowest fidelity first), ``use_known_low`` (False),
    ``condition_on_known_low`` (``None``: equal to ``use_known_low``; needs ``use_known_low``).

    ``forward`` returns one prediction per chain task; :meth:`components` returns ``y_0`` and every Δ_k,
    :meth:`extras` every Δ_k as ``delta_<task_k>``.
    """

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[Any],
        *,
        chain: Sequence[str],
        use_known_low: bool = False,
        condition_on_known_low: bool | None = None,
        **common: Any,
    ) -> None:
        chain = list(chain)
        if len(chain) < 2:
            raise ValueError(f"difference head option chain needs at least 2 tasks (low ... high), got {chain}")
        if len(set(chain)) != len(chain):
            raise ValueError(f"difference head option chain lists a task twice: {chain}")
        for k, name in enumerate(chain):
            find_task(tasks, name, f"difference head option chain[{k}]", kind="regression")
        super().__init__(in_dim, tasks, chain, **common)
        self.chain = chain
        self.use_known_low = bool(use_known_low)
        if condition_on_known_low is None:
            condition_on_known_low = self.use_known_low
        if condition_on_known_low and not self.use_known_low:
            raise ValueError("difference head option condition_on_known_low needs use_known_low: true (the known "
                             "low values it conditions on are read only then)")
        self.condition_on_known_low = bool(condition_on_known_low)
        self.base = self.make_mlp(1)
        extra = 2 if self.condition_on_known_low else 0  # standardised known y_{k-1} and its presence flag
        self.deltas = nn.ModuleList(self.make_mlp(1, in_dim=self.input_dim + extra) for _ in chain[1:])
        self.register_buffer("delta_mean", torch.zeros(len(chain) - 1))
        self.register_buffer("delta_std", torch.ones(len(chain) - 1))

    @classmethod
    def upgrade_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """A checkpoint's head config written before ``condition_on_known_low`` existed: with ``use_known_low``
        and no ``condition_on_known_low`` it gets ``False`` (its Δ nets read the graph embedding only)."""
        options = dict(options)
        if options.get("use_known_low") and "condition_on_known_low" not in options:
            options["condition_on_known_low"] = False
        return options

    def recorded_options(self) -> dict[str, Any]:
        """``{"condition_on_known_low": ...}`` with ``use_known_low`` (whose default follows it), else ``{}``."""
        return {"condition_on_known_low": self.condition_on_known_low} if self.use_known_low else {}

    def on_target_stats(self) -> None:
        idx = [self.task_index[n] for n in self.chain]
        with torch.no_grad():
            for k in range(1, len(idx)):
                paired = self._pair_stats.get((self.chain[k - 1], self.chain[k]))
                if paired is not None:
                    self.delta_mean[k - 1], self.delta_std[k - 1] = paired
                else:
                    self.delta_mean[k - 1] = self.target_mean[idx[k]] - self.target_mean[idx[k - 1]]
                    self.delta_std[k - 1] = self.target_std[idx[k]]

    def paired_stats(self) -> dict[str, dict[str, list[float]]]:
        """``{high: {low: [dmean, dstd]}}`` of every link of the chain, read from the buffers."""
        return {self.chain[k + 1]: {self.chain[k]: [float(self.delta_mean[k]), float(self.delta_std[k])]}
                for k in range(len(self.chain) - 1)}

    def reads_known(self) -> list[str]:
        """``context.known`` plus, with ``use_known_low``, every chain task below the top."""
        return [*super().reads_known(), *(self.chain[:-1] if self.use_known_low else [])]

    def known_lows(self, batch: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{task_{k-1}: (values [B], present [B] bool)}`` of the known low values the head uses (``{}`` without
        ``use_known_low`` or labels); drawn once per forward, so ``known_dropout`` hides a value consistently."""
        if not self.use_known_low or batch is None:
            return {}
        out = {}
        for low in self.chain[:-1]:
            known = self.known_values(batch, low)
            if known is not None:
                out[low] = known
        return out

    def _delta_inputs(self, g: torch.Tensor, k: int, known: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
                      ) -> torch.Tensor:
        """Input of Δ_k's net: ``g``, then (if conditioned) the standardised known y_{k-1} (0 where absent) and
        its presence flag."""
        if not self.condition_on_known_low:
            return g
        low = self.chain[k - 1]
        if low in known:
            values, present = known[low]
            i = self.task_index[low]
            scaled = (values.to(g.dtype) - self.target_mean[i]) / self.target_std[i]
            value, flag = torch.where(present, scaled, torch.zeros_like(scaled)), present.to(g.dtype)
        else:
            value = flag = g.new_zeros(g.shape[0])
        return torch.cat([g, value.unsqueeze(1), flag.unsqueeze(1)], 1)

    def components(self, enc: EncoderOutput, batch: Any = None,
                   known: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """``{low: y_0 [B], "<task_k>__delta": Δ_k [B] for k ≥ 1}`` in physical units (``known``: the
        :meth:`known_lows` to condition on; read from ``batch`` when not given)."""
        g = self.inputs(enc, batch)
        known = self.known_lows(batch) if known is None else known
        out = {self.chain[0]: self.physical(self.chain[0], self.base(g))}
        for k, net in enumerate(self.deltas, start=1):
            raw = net(self._delta_inputs(g, k, known))
            out[f"{self.chain[k]}__delta"] = self.delta_mean[k - 1] + self.delta_std[k - 1] * raw[:, 0]
        return out

    def extras(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        """``{"delta_<task_k>": Δ_k [B]}`` for every link of the chain (physical units)."""
        parts = self.components(enc, batch)
        return {f"delta_{high}": parts[f"{high}__delta"] for high in self.chain[1:]}

    def forward(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        known = self.known_lows(batch)
        parts = self.components(enc, batch, known)
        preds = {self.chain[0]: parts[self.chain[0]]}
        previous = preds[self.chain[0]]
        for k in range(1, len(self.chain)):
            low, high = self.chain[k - 1], self.chain[k]
            if low in known:
                values, present = known[low]
                previous = torch.where(present, values.to(previous.dtype), previous)
            preds[high] = previous + parts[f"{high}__delta"]
            previous = preds[high]
        return preds
