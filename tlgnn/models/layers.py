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


def polynomial_envelope(dist: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """Smooth cutoff of DimeNet/M3GNet: ``1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)``.

    ``x = dist / cutoff`` (``dist`` in Å), 0 beyond the cutoff. Value, first and second derivative vanish
    at the cutoff, so neighbours crossing it change the output continuously; with ``p = 6`` the envelope
    stays above 0.85 up to half the cutoff.
    """
    x = (dist / cutoff).clamp(max=1.0)
    return 1.0 - 0.5 * (p + 1) * (p + 2) * x**p + p * (p + 2) * x ** (p + 1) - 0.5 * p * (p + 1) * x ** (p + 2)
