"""CGCNN: crystal graph convolutional neural network (Xie & Grossman, PRL 120, 145301, 2018).

Per interaction layer, for every edge i <- j with Gaussian-expanded distance u_ij:

    z_ij = [v_i, v_j, u_ij]
    [f_ij, c_ij] = BN(W z_ij + b)                  (split into two halves of width hidden_channels)
    v_i' = softplus(v_i + BN(sum_j sigmoid(f_ij) * softplus(c_ij)))

Atoms start from ``Linear(ATOM_FEATURES[z])`` (92-dim CGCNN elemental features). After ``num_layers`` layers the
atom vectors are mean-pooled and passed through ``softplus -> conv_to_fc -> softplus``; that vector
(width ``out_channels``) is ``graph_emb``: the transfer seam sits after ``conv_to_fc``, where the reference
model's ``fc_out`` would start.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter

from tlgnn.graphs import GaussianExpansion
from tlgnn.models.encoders.atoms import AtomInput
from tlgnn.models.encoders.base import Encoder, EncoderOutput, graph_index, register_encoder, within_cutoff


EDGE_PROJECTIONS = ("auto", "per_atom", "per_edge")


class CGCNNConv(nn.Module):
    """One gated CGCNN convolution with batch norm and residual softplus.

    ``W z_ij`` (``z_ij = [v_i, v_j, u_ij]``) is computed one of two ways, the same function up to float
    rounding: ``"per_atom"`` projects every atom once (``W_i v``, ``W_j v``) and gathers the projections per
    edge, plus ``W_u u_ij`` (about 4x fewer multiply-adds: fastest on CPUs); ``"per_edge"`` gathers the atom
    vectors and applies one ``Linear`` to the concatenation, as CGCNN and PyG's ``CGConv`` do (less memory
    traffic: fastest on GPUs, where these small models are memory-bound). ``"auto"`` picks per device.
    """

    def __init__(self, atom_fea_len: int, nbr_fea_len: int, edge_projection: str = "auto",
                 edge_batch_norm: bool = True) -> None:
        super().__init__()
        if edge_projection not in EDGE_PROJECTIONS:
            raise ValueError(f"cgcnn option edge_projection must be one of {EDGE_PROJECTIONS}, got {edge_projection!r}")
        self.atom_fea_len = atom_fea_len
        self.edge_projection = edge_projection
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        # CGCNN normalises the gate pre-activations of every edge; PyG's CGConv (edge_batch_norm=False) does not
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len) if edge_batch_norm else None
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, atom: torch.Tensor, nbr: torch.Tensor, edge_index: torch.Tensor,
                degree: int | None = None) -> torch.Tensor:
        """``atom`` [N, d], ``nbr`` (expanded distances) [E, g], ``edge_index`` [2, E] (centre, neighbour).

        ``degree``: every atom has exactly this many edges, grouped by centre in order
        (:func:`~tlgnn.models.encoders.base.uniform_degree`); the messages are then summed densely.
        """
        centre = edge_index[0]
        mode = self.edge_projection
        if mode == "auto":
            mode = "per_atom" if atom.device.type == "cpu" else "per_edge"
        if mode == "per_atom":
            d, w = self.atom_fea_len, self.fc_full.weight
            gated = (F.linear(atom, w[:, :d])[centre] + F.linear(atom, w[:, d : 2 * d])[edge_index[1]]
                     + F.linear(nbr, w[:, 2 * d :], self.fc_full.bias))
        else:
            # one gather for both ends: rows [v_i, v_j] of width 2d
            pair = atom.index_select(0, edge_index.t().reshape(-1)).view(-1, 2 * atom.shape[1])
            gated = self.fc_full(torch.cat([pair, nbr], dim=1))
        if self.bn1 is not None:
            gated = self.bn1(gated)
        nbr_filter, nbr_core = gated.chunk(2, dim=1)
        message = torch.sigmoid(nbr_filter) * F.softplus(nbr_core)
        if degree:
            summed = message.view(atom.shape[0], degree, message.shape[1]).sum(1)
        else:
            summed = scatter(message, centre, dim=0, dim_size=atom.shape[0], reduce="sum")
        return F.softplus(atom + self.bn2(summed))


@register_encoder("cgcnn")
class CGCNNEncoder(Encoder):
    """CGCNN encoder (defaults of the reference implementation).

    Options: ``hidden_channels`` (64, the reference's ``atom_fea_len``), ``num_layers`` (3 convolutions,
    ``n_conv``), ``out_channels`` (128 = ``out_dim``, ``h_fea_len``; the reference names are still read),
    ``cutoff`` (8.0 Å: end of the Gaussian expansion; edges longer than this are ignored), ``gaussian_step``
    (0.2 Å: centre spacing and width), ``atom_input`` ("cgcnn" features or a learned "embedding" by Z), ``edge_projection``
    ("auto", "per_atom" or "per_edge": how ``W [v_i, v_j, u_ij]`` is evaluated, see :class:`CGCNNConv`),
    ``edge_batch_norm`` (True: the paper's batch norm of every edge's gate pre-activations; False: without it,
    which is PyG's ``CGConv(batch_norm=True)`` layer exactly — less work per edge, see docs/performance.md).
    """

    layout_options = ("edge_projection",)  # same function, other arithmetic order: free when fine-tuning
    renamed_options = {"atom_fea_len": "hidden_channels", "n_conv": "num_layers", "h_fea_len": "out_channels"}

    def __init__(
        self,
        hidden_channels: int = 64,
        num_layers: int = 3,
        out_channels: int = 128,
        cutoff: float = 8.0,
        gaussian_step: float = 0.2,
        atom_input: str = "cgcnn",
        edge_projection: str = "auto",
        edge_batch_norm: bool = True,
    ) -> None:
        super().__init__()
        for field, value in (("hidden_channels", hidden_channels), ("num_layers", num_layers),
                             ("out_channels", out_channels)):
            if int(value) < 1:
                raise ValueError(f"cgcnn option {field} must be >= 1, got {value}")
        if cutoff <= 0 or gaussian_step <= 0 or gaussian_step >= cutoff:
            raise ValueError(f"cgcnn needs 0 < gaussian_step < cutoff, got cutoff={cutoff}, gaussian_step={gaussian_step}")
        self.cutoff = float(cutoff)
        self.out_dim = int(out_channels)
        num = int(round(cutoff / gaussian_step)) + 1
        self.expansion = GaussianExpansion(start=0.0, stop=float(cutoff), num=num, width=float(gaussian_step))
        self.embedding = AtomInput(hidden_channels, atom_input)
        self.convs = nn.ModuleList(CGCNNConv(hidden_channels, num, edge_projection, bool(edge_batch_norm))
                                   for _ in range(num_layers))
        self.conv_to_fc = nn.Linear(hidden_channels, out_channels)

    def forward(self, batch: Any) -> EncoderOutput:
        edge_index, dist = within_cutoff(self.cutoff, batch.edge_index, batch.edge_dist)
        nbr = self.expansion(dist)
        atom = self.embedding(batch.z)
        degree = getattr(batch, "uniform_degree", None)  # set on the host by prepare_batch
        if degree and edge_index.shape[1] != degree * atom.shape[0]:
            degree = None  # edges were dropped here (CPU, cutoff): the flag no longer describes them
        for conv in self.convs:
            atom = conv(atom, nbr, edge_index, degree)
        index, num_graphs = graph_index(batch)
        crystal = scatter(atom, index, dim=0, dim_size=num_graphs, reduce="mean")
        crystal = F.softplus(self.conv_to_fc(F.softplus(crystal)))
        return EncoderOutput(node_emb=atom, graph_emb=crystal)

    def layer_groups(self) -> list[nn.Module]:
        return [self.embedding, *self.convs, self.conv_to_fc]
