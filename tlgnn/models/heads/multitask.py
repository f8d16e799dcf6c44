"""Multi-task head: ``y_t = MLP_t(g)`` for every predicted task t (regression and classification mixed)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.heads.base import Head, find_task, register_head


@register_head("multitask")
class MultiTaskHead(Head):
    """One output per task.

    Options: ``targets`` (task names to predict, default all), ``shared_hidden`` (False: a separate MLP
    per task; True: one MLP whose last layer has one output block per task). Loss weighting comes from the
    common ``weighting``/``task_weights`` options (``"uncertainty"``: Kendall et al. 2018 learned
    log-variances ``head.log_vars``, combined by :meth:`Head.combine_losses`).
    """

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[Any],
        *,
        targets: Sequence[str] | None = None,
        shared_hidden: bool = False,
        **common: Any,
    ) -> None:
        tasks = list(tasks)
        names = [t.name for t in tasks] if targets is None else list(targets)
        if len(set(names)) != len(names):
            raise ValueError(f"multitask head option targets lists a task twice: {names}")
        for k, name in enumerate(names):
            find_task(tasks, name, f"multitask head option targets[{k}]")
        super().__init__(in_dim, tasks, names, **common)
        self.shared_hidden = bool(shared_hidden)
        sizes = [self.out_size(n) for n in self.outputs]
        self.sizes = sizes
        if self.shared_hidden:
            self.net = self.make_mlp(sum(sizes))
        else:
            self.nets = nn.ModuleDict({n: self.make_mlp(s) for n, s in zip(self.outputs, sizes)})

    def forward(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        g = self.inputs(enc, batch)
        if self.shared_hidden:
            raws = dict(zip(self.outputs, self.net(g).split(self.sizes, dim=1)))
        else:
            raws = {n: net(g) for n, net in self.nets.items()}
        return {n: self.physical(n, raws[n]) for n in self.outputs}
