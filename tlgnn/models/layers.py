"""Building blocks shared by encoders and heads: the one MLP builder, activations, smooth envelope."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from tlgnn.models.registry import close_matches

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}{close_matches(name, list(ACTIVATIONS))}; "
            f"choose from {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]()


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation_name: str = "silu",
    dropout: float = 0.0,
) -> nn.Sequential:
    """``Linear -> act -> Dropout`` for each hidden width, then a final ``Linear`` to ``out_dim``.

    ``hidden=[]`` gives a single linear layer. Every head builds its readout networks here.
    """
    if in_dim <= 0 or out_dim <= 0 or any(int(h) <= 0 for h in hidden):
        raise ValueError(f"mlp widths must be positive: in_dim={in_dim}, hidden={list(hidden)}, out_dim={out_dim}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"mlp dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers.append(nn.Linear(width, int(h)))
        layers.append(activation(activation_name))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def polynomial_envelope(dist: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Smooth cutoff ``1 - 10x^3 + 15x^4 - 6x^5`` for ``x = d / cutoff`` (0 beyond ``cutoff``).

    Value, first and second derivative go to zero at the cutoff, so neighbours entering or leaving
    the cutoff sphere change the output continuously. ``dist`` in Å.
    """
    x = (dist / cutoff).clamp(max=1.0)
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x**2)
