"""M3GNet-lite: gated graph convolutions with M3GNet three-body (bond-angle) updates, affordable on CPUs.

Three-body interactions after M3GNet (Chen & Ong, Nat. Comput. Sci. 2, 718, 2022): every triplet of edges
(i -> j, i -> k) shorter than ``three_body_cutoff`` updates the bond i -> j with a small angular basis,
gated by the atom k. Atom and bond features are then updated by an edge-gated graph convolution
(Bresson & Laurent 2017, as used by ALIGNN, Choudhary & DeCost 2021). All triplet arithmetic runs in the
``max_n * max_l``-dim basis space (12 by default), never at the full width, so angles cost little.

    h_i  = AtomInput(z_i)                                         CGCNN features or learned embedding
    e_ij = SiLU(LN(W RBF(r_ij)))                                  Gaussians 0..cutoff
    B_ijk[n, l] = R_n(r_ik) P_l(cos θ_jik) f(r_ij) f(r_ik)         R_n = sin(nπ r/r3)/r, f: smooth envelope
  each of num_layers blocks:
    m_ij  = Σ_k B_ijk ⊙ σ(W_a h_k)                                 three-body message, width max_n*max_l
    e_ij += SiLU(W_1 m_ij) ⊙ σ(W_2 m_ij)
    gated convolution, neighbours j -> centre i, w_ij = f_cut(r_ij):
      m_ij = A h_i + B h_j + C e_ij,   σ_ij = sigmoid(m_ij) w_ij
      h_i += SiLU(BN(U h_i + Σ_j σ_ij ⊙ V h_j / (Σ_j σ_ij + ε))),   e_ij += SiLU(BN(m_ij))
  readout: graph_emb = SiLU(W mean_i h_i)

Distances and angles only: invariant to rotations, translations, atom order and periodic images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter

from tlgnn.graphs import GaussianExpansion
from tlgnn.models.encoders.atoms import AtomInput
from tlgnn.models.encoders.base import Encoder, EncoderOutput, graph_index, register_encoder, within_cutoff
from tlgnn.models.encoders.triplets import Triplets, angle_triplets
from tlgnn.models.layers import polynomial_envelope


def legendre(cos: torch.Tensor, max_l: int) -> torch.Tensor:
    """Legendre polynomials P_0..P_{max_l-1} of ``cos`` [T] -> [T, max_l] (Bonnet recursion)."""
    out = [torch.ones_like(cos), cos]
    for l in range(1, max_l - 1):
        out.append(((2 * l + 1) * cos * out[l] - l * out[l - 1]) / (l + 1))
    return torch.stack(out[:max_l], dim=-1)


def sine_basis(dist: torch.Tensor, cutoff: float, max_n: int) -> torch.Tensor:
    """Radial basis ``sqrt(2/c) sin(nπ d/c) / d`` for n = 1..max_n (spherical Bessel j_0 roots) -> [E, max_n]."""
    n = torch.arange(1, max_n + 1, device=dist.device, dtype=dist.dtype)
    d = dist.unsqueeze(-1)
    return math.sqrt(2.0 / cutoff) * torch.sin(n * math.pi * d / cutoff) / d


class GatedConv(nn.Module):
    """Edge-gated graph convolution with residual updates of atom and edge features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dst_gate = nn.Linear(dim, dim)
        self.src_gate = nn.Linear(dim, dim, bias=False)
        self.edge_gate = nn.Linear(dim, dim, bias=False)
        self.dst_update = nn.Linear(dim, dim)
        self.src_update = nn.Linear(dim, dim, bias=False)
        self.bn_nodes = nn.BatchNorm1d(dim)
        self.bn_edges = nn.BatchNorm1d(dim)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nodes ``x`` [n, d], edges ``y`` [m, d] from ``src`` to ``dst``, ``weight`` [m] in [0, 1]."""
        m = self.dst_gate(x)[dst] + self.src_gate(x)[src] + self.edge_gate(y)
        sigma = torch.sigmoid(m) * weight.unsqueeze(-1)
        num = scatter(sigma * self.src_update(x)[src], dst, dim=0, dim_size=x.shape[0], reduce="sum")
        den = scatter(sigma, dst, dim=0, dim_size=x.shape[0], reduce="sum")
        x_new = self.dst_update(x) + num / (den + 1e-6)
        return x + F.silu(self.bn_nodes(x_new)), y + F.silu(self.bn_edges(m))


class ThreeBodyUpdate(nn.Module):
    """M3GNet's three-body-to-bond update, computed in the angular basis space."""

    def __init__(self, dim: int, n_basis: int) -> None:
        super().__init__()
        self.atom_gate = nn.Linear(dim, n_basis)
        self.value = nn.Linear(n_basis, dim)
        self.gate = nn.Linear(n_basis, dim)

    def forward(
        self, h: torch.Tensor, e: torch.Tensor, tri: Triplets, third_atom: torch.Tensor, basis: torch.Tensor
    ) -> torch.Tensor:
        """``basis`` [T, n_basis] (envelopes included), ``third_atom`` [T] = atom k of each triplet."""
        gated = basis * torch.sigmoid(self.atom_gate(h))[third_atom]
        m = scatter(gated, tri.a, dim=0, dim_size=tri.edges.numel(), reduce="sum")
        update = F.silu(self.value(m)) * torch.sigmoid(self.gate(m))
        # under autocast the update may be bf16/fp16 while the bond features stay fp32
        return e.index_add(0, tri.edges, update.to(e.dtype))


class Block(nn.Module):
    """One interaction block: three-body bond update, then a gated convolution."""

    def __init__(self, dim: int, n_basis: int) -> None:
        super().__init__()
        self.three_body = ThreeBodyUpdate(dim, n_basis)
        self.conv = GatedConv(dim)


class InputEmbedding(nn.Module):
    """Initial atom and edge features."""

    def __init__(self, hidden: int, atom_input: str, cutoff: float, num_rbf: int) -> None:
        super().__init__()
        self.atom = AtomInput(hidden, atom_input)
        self.rbf = GaussianExpansion(start=0.0, stop=cutoff, num=num_rbf, width=cutoff / (num_rbf - 1))
        self.edge = nn.Sequential(nn.Linear(num_rbf, hidden), nn.LayerNorm(hidden), nn.SiLU())


@register_encoder("m3gnet_lite")
class M3GNetLiteEncoder(Encoder):
    """Gated graph network with M3GNet three-body updates.

    Options: ``hidden_channels`` (64), ``num_layers`` (3 blocks), ``out_channels`` (128; the former names
    ``hidden``, ``n_blocks``, ``out_dim`` are still read), ``cutoff`` (8.0 Å: edge RBF range and
    envelope), ``three_body_cutoff`` (4.0 Å), ``max_n`` (3 radial) and ``max_l`` (4 angular) basis
    functions, ``num_rbf`` (41 Gaussians), ``atom_input`` ("cgcnn" | "embedding").
    """

    renamed_options = {"hidden": "hidden_channels", "n_blocks": "num_layers", "out_dim": "out_channels"}

    def __init__(
        self,
        hidden_channels: int = 64,
        num_layers: int = 3,
        out_channels: int = 128,
        cutoff: float = 8.0,
        three_body_cutoff: float = 4.0,
        max_n: int = 3,
        max_l: int = 4,
        num_rbf: int = 41,
        atom_input: str = "cgcnn",
    ) -> None:
        super().__init__()
        for field, value, low in (
            ("hidden_channels", hidden_channels, 1), ("num_layers", num_layers, 1), ("out_channels", out_channels, 1),
            ("max_n", max_n, 1), ("max_l", max_l, 1), ("num_rbf", num_rbf, 2),
        ):
            if int(value) < low:
                raise ValueError(f"m3gnet_lite option {field} must be >= {low}, got {value}")
        if not 0 < three_body_cutoff <= cutoff:
            raise ValueError(
                f"m3gnet_lite needs 0 < three_body_cutoff <= cutoff, got {three_body_cutoff} and {cutoff}"
            )
        self.cutoff = float(cutoff)
        self.three_body_cutoff = float(three_body_cutoff)
        self.max_n, self.max_l = int(max_n), int(max_l)
        self.out_dim = int(out_channels)
        self.embed = InputEmbedding(hidden_channels, atom_input, self.cutoff, int(num_rbf))
        self.blocks = nn.ModuleList(Block(hidden_channels, self.max_n * self.max_l) for _ in range(num_layers))
        self.readout = nn.Linear(hidden_channels, out_channels)

    def angular_basis(self, tri: Triplets, dist: torch.Tensor) -> torch.Tensor:
        """``B_ijk`` [T, max_n * max_l] with both edge envelopes applied."""
        d_short = dist[tri.edges]
        env = polynomial_envelope(d_short, self.three_body_cutoff)
        radial = sine_basis(d_short, self.three_body_cutoff, self.max_n)[tri.b]  # R_n(r_ik)
        angular = legendre(tri.cos, self.max_l)
        basis = (radial.unsqueeze(-1) * angular.unsqueeze(1)).flatten(1)
        return basis * (env[tri.a] * env[tri.b]).unsqueeze(-1)

    def forward(self, batch: Any) -> EncoderOutput:
        edge_index, dist, vec = within_cutoff(self.cutoff, batch.edge_index, batch.edge_dist, batch.edge_vec)
        centre, neighbour = edge_index[0], edge_index[1]
        tri = angle_triplets(edge_index, vec, dist, batch.z.shape[0], self.three_body_cutoff)
        basis = self.angular_basis(tri, dist)
        third_atom = neighbour[tri.edges[tri.b]]
        edge_weight = polynomial_envelope(dist, self.cutoff)
        h = self.embed.atom(batch.z)
        e = self.embed.edge(self.embed.rbf(dist))
        for block in self.blocks:
            e = block.three_body(h, e, tri, third_atom, basis)
            h, e = block.conv(h, e, neighbour, centre, edge_weight)
        index, num_graphs = graph_index(batch)
        pooled = scatter(h, index, dim=0, dim_size=num_graphs, reduce="mean")
        return EncoderOutput(node_emb=h, graph_emb=F.silu(self.readout(pooled)))

    def layer_groups(self) -> list[nn.Module]:
        return [self.embed, *self.blocks, self.readout]
