"""Explicit-latent-variable (ELV) head (Hutchinson et al., arXiv:1711.05099).

    z = latent_mean + latent_std * MLP(g)          K named latents, physical units
    y_t = f_t(z, θ)                                 f_t: the declared expression of task t
    y_t = z_t                                       a task with no expression that names a latent

θ are learnable scalar parameters with declared initial values. Expressions are parsed safely by
:mod:`tlgnn.models.heads.expressions`. Scale of each latent: a latent named like a regression task is
supervised by it and uses its statistics; ``latent_stats={name: [mean, std]}`` sets a latent's scale;
otherwise mean 0 and std equal to the largest std of the tasks whose expressions use it (1 before
``set_target_stats``).
"""

from __future__ import annotations

import keyword
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tlgnn.models.encoders.base import EncoderOutput
from tlgnn.models.heads.base import Head, find_task, register_head
from tlgnn.models.heads.expressions import FUNCTIONS, CompiledExpression, ExpressionError, compile_expression


def _check_identifier(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"elv head option {what}: {name!r} is not a valid name (letters, digits, _)")
    if name in FUNCTIONS:
        raise ValueError(f"elv head option {what}: {name!r} is a function name and cannot name a variable")
    return name


@register_head("elv")
class ELVHead(Head):
    """Options: ``latents`` (names), ``expressions`` ({task: "expr"}), ``parameters`` ({name: initial value}),
    ``latent_stats`` ({latent: [mean, std]} for latents that are not tasks).

    Predicted tasks (``outputs``): every task with an expression, then every task named like a latent.
    """

    def __init__(
        self,
        in_dim: int,
        tasks: Sequence[Any],
        *,
        latents: Sequence[str],
        expressions: Mapping[str, str] | None = None,
        parameters: Mapping[str, float] | None = None,
        latent_stats: Mapping[str, Sequence[float]] | None = None,
        **common: Any,
    ) -> None:
        tasks = list(tasks)
        task_names = {t.name for t in tasks}
        latents = [_check_identifier(n, "latents") for n in (latents or [])]
        if not latents:
            raise ValueError("elv head option latents must name at least one latent")
        if len(set(latents)) != len(latents):
            raise ValueError(f"elv head option latents lists a name twice: {latents}")
        parameters = dict(parameters or {})
        for name, value in parameters.items():
            _check_identifier(name, "parameters")
            if name in latents:
                raise ValueError(f"elv head: {name!r} is both a latent and a parameter")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"elv head option parameters[{name!r}] must be a finite number, got {value!r}")
        expressions = dict(expressions or {})
        variables = set(latents) | set(parameters)
        compiled: dict[str, CompiledExpression] = {}
        for task, text in expressions.items():
            find_task(tasks, task, f"elv head option expressions[{task!r}]", kind="regression")
            if task in latents:
                raise ValueError(f"elv head: task {task!r} is a latent and also has an expression; keep one")
            compiled[task] = compile_expression(text, task, variables)
            if not compiled[task].names & set(latents):
                raise ExpressionError(task, text, "uses no latent, so it cannot depend on the structure")
        outputs = list(expressions) + [n for n in latents if n in task_names]
        super().__init__(in_dim, tasks, outputs, **common)
        for name in outputs[len(expressions):]:
            self.require_task(name, f"latents ({name!r} is a task)", kind="regression")
        used = set().union(*(c.names for c in compiled.values())) if compiled else set()
        for name in latents:
            if name not in task_names and name not in used:
                raise ValueError(f"elv head: latent {name!r} is neither a task nor used by any expression")
        for name in parameters:
            if name not in used:
                raise ValueError(f"elv head: parameter {name!r} is not used by any expression")
        self.latent_names = latents
        self.parameter_names = list(parameters)
        self.expressions = compiled
        self.latent_stats = {}
        for name, pair in dict(latent_stats or {}).items():
            if name not in latents:
                raise ValueError(f"elv head option latent_stats: {name!r} is not a latent")
            if name in task_names:
                raise ValueError(f"elv head option latent_stats: latent {name!r} is a task and uses its statistics")
            if len(pair) != 2 or not float(pair[1]) > 0:
                raise ValueError(f"elv head option latent_stats[{name!r}] must be [mean, std > 0], got {pair}")
            self.latent_stats[name] = (float(pair[0]), float(pair[1]))
        self.net = self.make_mlp(len(latents))
        self.parameter_values = nn.Parameter(torch.tensor([float(v) for v in parameters.values()]))
        self.register_buffer("latent_mean", torch.zeros(len(latents)))
        self.register_buffer("latent_std", torch.ones(len(latents)))
        self.on_target_stats()

    def on_target_stats(self) -> None:
        with torch.no_grad():
            for k, name in enumerate(self.latent_names):
                if name in self.task_index:
                    i = self.task_index[name]
                    mean, std = float(self.target_mean[i]), float(self.target_std[i])
                elif name in self.latent_stats:
                    mean, std = self.latent_stats[name]
                else:
                    stds = [float(self.target_std[self.task_index[t]]) for t, c in self.expressions.items()
                            if name in c.names]
                    mean, std = 0.0, max(stds, default=1.0)
                self.latent_mean[k] = mean
                self.latent_std[k] = std

    def latents(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        """Named latent values [B] in physical units (``batch``: needed only by a head with a context)."""
        z = self.latent_mean + self.latent_std * self.net(self.inputs(enc, batch))
        return {name: z[:, k] for k, name in enumerate(self.latent_names)}

    def parameters_dict(self) -> dict[str, torch.Tensor]:
        """The learnable scalar parameters by name (0-dim tensors)."""
        return {name: self.parameter_values[k] for k, name in enumerate(self.parameter_names)}

    def output_label(self, name: str) -> str:
        """``task 'name' (expression '...')`` for a task with an expression."""
        expression = self.expressions.get(name)
        return f"task {name!r}" + (f" (expression {expression.text!r})" if expression is not None else "")

    def extras(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        """``{"latent_<name>": z [B]}`` for every latent (physical units)."""
        return {f"latent_{name}": value for name, value in self.latents(enc, batch).items()}

    def forward(self, enc: EncoderOutput, batch: Any = None) -> dict[str, torch.Tensor]:
        latents = self.latents(enc, batch)
        env = {**latents, **self.parameters_dict()}
        preds = {task: expr(env) for task, expr in self.expressions.items()}
        for name in self.outputs:
            if name not in preds:
                preds[name] = latents[name]
        return preds
