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
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.heads.base import Head, find_task, register_head


@register_head("difference")
class DifferenceHead(Head):
    """Options: ``chain`` (≥ 2 regression task names, lowest fidelity first), ``use_known_low`` (False).

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
        self.base = self.make_mlp(1)
        self.deltas = nn.ModuleList(self.make_mlp(1) for _ in chain[1:])
        self.register_buffer("delta_mean", torch.zeros(len(chain) - 1))
        self.register_buffer("delta_std", torch.ones(len(chain) - 1))

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

    def components(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        """``{low: y_0 [B], "<task_k>__delta": Δ_k [B] for k ≥ 1}`` in physical units."""
        g = enc.graph_emb
        out = {self.chain[0]: self.physical(self.chain[0], self.base(g))}
        for k, net in enumerate(self.deltas):
            out[f"{self.chain[k + 1]}__delta"] = self.delta_mean[k] + self.delta_std[k] * net(g)[:, 0]
        return out

    def extras(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        """``{"delta_<task_k>": Δ_k [B]}`` for every link of the chain (physical units)."""
        parts = self.components(enc, batch)
        return {f"delta_{high}": parts[f"{high}__delta"] for high in self.chain[1:]}

    def forward(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        parts = self.components(enc, batch)
        preds = {self.chain[0]: parts[self.chain[0]]}
        previous = preds[self.chain[0]]
        for k in range(1, len(self.chain)):
            low, high = self.chain[k - 1], self.chain[k]
            if self.use_known_low and batch is not None:
                known = self.known_label(batch, low)
                if known is not None:
                    values, present = known
                    previous = torch.where(present, values.to(previous.dtype), previous)
            preds[high] = previous + parts[f"{high}__delta"]
            previous = preds[high]
        return preds
