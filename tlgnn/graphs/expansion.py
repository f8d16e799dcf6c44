"""Gaussian radial basis for edge distances (CGCNN's ``GaussianDistance``)."""

from __future__ import annotations

import torch
from torch import nn


class GaussianExpansion(nn.Module):
    """Distances [E] (Å) -> [E, num] with ``exp(-(d - mu_k)^2 / width^2)``, ``mu_k = linspace(start, stop, num)``.

    This is CGCNN's formula (``exp(-(d - filter)^2 / var^2)``, where CGCNN's ``var`` defaults to the grid
    step): the defaults (0-8 Å, 41 centres, width 0.2 Å) reproduce CGCNN's ``dmin=0, dmax=8, step=0.2``.
    Note ``width`` is not a standard deviation: sigma = width / sqrt(2).
    """

    def __init__(self, start: float = 0.0, stop: float = 8.0, num: int = 41, width: float = 0.2):
        super().__init__()
        if not stop > start:
            raise ValueError(f"stop: must be greater than start ({start}), got {stop}")
        if int(num) != num or num < 1:
            raise ValueError(f"num: must be a positive integer, got {num}")
        if not width > 0:
            raise ValueError(f"width: must be positive (Å), got {width}")
        self.start, self.stop, self.num, self.width = float(start), float(stop), int(num), float(width)
        self.register_buffer("centers", torch.linspace(self.start, self.stop, self.num), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.num

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        d = distances.reshape(-1, 1).to(self.centers.dtype)
        return torch.exp(-((d - self.centers) ** 2) / self.width**2)

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}, num={self.num}, width={self.width}"
