"""Atom input layers: CGCNN elemental features or a learned embedding by atomic number."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tlgnn.graphs import ATOM_FEATURES

ATOM_INPUTS = ("cgcnn", "embedding")


class AtomInput(nn.Module):
    """Atomic numbers [N] -> initial atom features [N, dim].

    ``"cgcnn"``: the 92-dim CGCNN one-hot elemental features (``tlgnn.graphs.ATOM_FEATURES[z]``) through a
    linear layer, as in Xie & Grossman (2018). ``"embedding"``: a learned vector per element.
    """

    def __init__(self, dim: int, kind: str = "cgcnn") -> None:
        super().__init__()
        if kind not in ATOM_INPUTS:
            raise ValueError(f"atom_input must be one of {ATOM_INPUTS}, got {kind!r}")
        self.kind = kind
        self.max_z = ATOM_FEATURES.shape[0] - 1
        if kind == "cgcnn":
            # not persistent: a fixed table, kept out of checkpoints but moved with .to(device)
            self.register_buffer("features", ATOM_FEATURES.clone().float(), persistent=False)
            self.linear = nn.Linear(ATOM_FEATURES.shape[1], dim)
        else:
            self.embedding = nn.Embedding(self.max_z + 1, dim)

    def check(self, z: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the atomic numbers outside 1..max_z (reads ``z``: a host sync on a GPU).

        On the host it works in numpy: one thread, so it stays cheap next to busy DataLoader workers (torch's
        intra-op threads would contend with them).
        """
        values = z.cpu().numpy()
        if values.size and (values.max() > self.max_z or values.min() < 1):
            bad = np.unique(values[(values > self.max_z) | (values < 1)]).tolist()
            raise ValueError(f"atomic numbers {bad} have no atom features (supported: 1..{self.max_z})")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` long [N] -> float [N, dim].

        On the CPU ``z`` is checked here. On an accelerator the check would stop the host until the GPU
        catches up, so it runs on the host batch instead (``Encoder.prepare_batch``, called by the training
        module and the predictor) and the forward pass only asserts asynchronously.
        """
        if z.device.type == "cpu":
            self.check(z)
        elif z.numel():
            low, high = torch.aminmax(z)
            torch._assert_async((low >= 1) & (high <= self.max_z))
        if self.kind == "cgcnn":
            return self.linear(self.features[z])
        return self.embedding(z)
