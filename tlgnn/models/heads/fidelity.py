"""Fidelity-embedding head (multi-fidelity MEGNet, Chen et al., Nat. Comput. Sci. 1, 46, 2021).

    y_f = mean_f + std_f * MLP([g, E_f])

One property measured at several fidelities; each predicted task is one fidelity, identified by its
``fidelity`` attribute (or its name when that is empty), with a learned embedding vector ``E_f``.
Every graph gets a prediction at every fidelity.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.heads.base import Head, find_task, register_head


@register_head("fidelity")
class FidelityHead(Head):
    """Options: ``targets`` (regression task names, default every regression task), ``embedding_dim`` (16)."""

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[Any],
        *,
        targets: Sequence[str] | None = None,
        embedding_dim: int = 16,
        **common: Any,
    ) -> None:
        tasks = list(tasks)
        names = [t.name for t in tasks if t.kind == "regression"] if targets is None else list(targets)
        if len(names) < 1 or len(set(names)) != len(names):
            raise ValueError(f"fidelity head option targets needs distinct task names, got {names}")
        if int(embedding_dim) < 1:
            raise ValueError(f"fidelity head option embedding_dim must be >= 1, got {embedding_dim}")
        found = [find_task(tasks, n, f"fidelity head option targets[{k}]", "regression") for k, n in enumerate(names)]
        super().__init__(in_dim, tasks, names, **common)
        self.fidelities: list[str] = []
        for name, task in zip(names, found):
            fidelity = getattr(task, "fidelity", None) or task.name
            if fidelity in self.fidelities:
                other = names[self.fidelities.index(fidelity)]
                raise ValueError(
                    f"fidelity head: tasks {other!r} and {name!r} share fidelity {fidelity!r}; "
                    "each task must be a distinct fidelity of one property"
                )
            self.fidelities.append(fidelity)
        self.embedding = nn.Embedding(len(names), int(embedding_dim))
        self.net = self.make_mlp(1, in_dim=self.input_dim + int(embedding_dim))

    def forward(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        g = self.inputs(enc, batch)
        b, f = g.shape[0], len(self.outputs)
        emb = self.embedding.weight
        joint = torch.cat([g.unsqueeze(1).expand(b, f, -1), emb.unsqueeze(0).expand(b, f, -1)], dim=-1)
        raw = self.net(joint)[..., 0]  # [B, F]
        return {n: self.physical(n, raw[:, k : k + 1]) for k, n in enumerate(self.outputs)}
