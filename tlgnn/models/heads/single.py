"""Single-task head: ``y = mean + std * MLP(g)`` (``g``: the graph embedding and the head's context) (regression) or logits ``MLP(g)`` (classification)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.heads.base import Head, find_task, register_head


@register_head("single")
class SingleHead(Head):
    """One task. Option ``task``: its name (may be omitted when the dataset has exactly one task)."""

    def __init__(self, in_dim: int, tasks: Sequence[Any], *, task: str | None = None, **common: Any) -> None:
        tasks = list(tasks)
        if task is None:
            if len(tasks) != 1:
                raise ValueError(
                    f"single head: option task is required when there are {len(tasks)} tasks "
                    f"({', '.join(t.name for t in tasks)})"
                )
            task = tasks[0].name
        find_task(tasks, task, "single head option task")
        super().__init__(in_dim, tasks, [task], **common)
        self.task = task
        self.net = self.make_mlp(self.out_size(task))

    def forward(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        return {self.task: self.physical(self.task, self.net(self.inputs(enc, batch)))}
