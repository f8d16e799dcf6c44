"""Real graphs for the training and memory benchmarks: MP structures -> crystal graphs -> one packed file.

Used by ``scripts/bench_train.py`` and ``scripts/bench_memory.py`` (not part of the ``tlgnn`` package).

* :func:`load_mp_structures` samples structures (and a label) from ``structures.jsonl.gz`` of
  ``mp_multifidelity_bandgap`` (see its SOURCE.md).
* :func:`build_graphs` builds their graphs with :class:`tlgnn.graphs.GraphCache` on all cores, with a
  progress bar, and reports structures/s.
* :func:`save_packed` / :func:`load_packed` write and read the graphs as one ``torch.save`` file of
  concatenated arrays (compact dtypes, a few MB per thousand graphs), so a machine without pymatgen/vesin can
  run the training benchmark on exactly the same graphs.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mp_multifidelity_bandgap" / "structures.jsonl.gz"
PACKED_FORMAT = "tlgnn-bench-graphs-v1"
TARGET = "band_gap_pbe"  # eV, MP PBE band gap from labels.csv.gz beside structures.jsonl.gz
_FIELDS = ("z", "pos", "cell", "edge_index", "edge_vec", "edge_dist", "cell_offset")


def available_cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class BuildStats:
    """How long reading and graph building took (seconds) for ``n`` structures on ``n_jobs`` processes."""

    n: int
    parse_s: float
    build_s: float
    n_jobs: int

    @property
    def structures_per_s(self) -> float:
        """Graph building throughput (structures/s, CIF parsing excluded)."""
        return self.n / self.build_s if self.build_s > 0 else float("inf")


def load_mp_structures(path: str | Path, limit: int, seed: int = 0) -> tuple[list[str], list[Any], list[float]]:
    """``(material_ids, structures, band_gap_pbe eV)`` for ``limit`` structures drawn with ``seed``.

    ``path`` is ``structures.jsonl.gz``; the labels come from ``labels.csv.gz`` in the same folder.
    """
    import pandas as pd

    from tlgnn.io import parse_structure_text

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: structures file not found (give --data PATH to structures.jsonl.gz)")
    labels_file = path.parent / "labels.csv.gz"
    if not labels_file.is_file():
        raise FileNotFoundError(f"{labels_file}: labels file not found next to {path.name}")
    labels = pd.read_csv(labels_file, usecols=["material_id", TARGET]).set_index("material_id")[TARGET]
    with gzip.open(path, "rt") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    rows = [r for r in rows if r["material_id"] in labels.index and np.isfinite(labels[r["material_id"]])]
    if limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    ids, structures, targets = [], [], []
    for row in rows:
        structures.append(parse_structure_text(row["cif"], fmt="cif", name=f"{path.name}[{row['material_id']}]"))
        ids.append(row["material_id"])
        targets.append(float(labels[row["material_id"]]))
    return ids, structures, targets


def build_graphs(structures: Sequence[Any], cutoff: float = 8.0, max_neighbors: int = 12,
                 n_jobs: int | None = None, progress: bool = True) -> tuple[list, BuildStats]:
    """Graphs of ``structures`` built by ``GraphCache`` in a temporary folder on ``n_jobs`` processes."""
    from tlgnn.graphs import CrystalGraphBuilder, GraphCache

    n_jobs = n_jobs or available_cores()
    builder = CrystalGraphBuilder(cutoff=cutoff, max_neighbors=max_neighbors)
    with tempfile.TemporaryDirectory(prefix="tlgnn-bench-") as tmp:
        cache = GraphCache(tmp, builder, mmap=False)
        start = time.perf_counter()
        store = cache.get_many(structures, n_jobs=n_jobs, progress=progress)
        build_s = time.perf_counter() - start
        graphs = [store[i] for i in range(len(store))]
    return graphs, BuildStats(len(structures), 0.0, build_s, n_jobs)


def pack(graphs: Sequence[Any], ids: Sequence[str], targets: Sequence[float], settings: dict) -> dict:
    """Concatenate graphs into compact arrays (uint8 z, int32 edge_index, int8 cell_offset)."""
    cat = {f: [] for f in _FIELDS}
    for g in graphs:
        for f in _FIELDS:
            cat[f].append(getattr(g, f))
    n_nodes = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
    n_edges = torch.tensor([g.edge_index.shape[1] for g in graphs], dtype=torch.long)
    offsets = torch.cat(cat["cell_offset"])
    if offsets.numel() and int(offsets.abs().max()) > 127:
        raise ValueError("cell_offset beyond int8 range; cannot pack")
    return {
        "format": PACKED_FORMAT,
        "builder": dict(settings),
        "target": TARGET,
        "material_id": list(ids),
        "y": torch.tensor(targets, dtype=torch.float32),
        "z": torch.cat(cat["z"]).to(torch.uint8),
        "pos": torch.cat(cat["pos"]),
        "cell": torch.cat(cat["cell"]),
        "edge_index": torch.cat(cat["edge_index"], dim=1).to(torch.int32),
        "edge_vec": torch.cat(cat["edge_vec"]),
        "edge_dist": torch.cat(cat["edge_dist"]),
        "cell_offset": offsets.to(torch.int8),
        "node_ptr": torch.cat([torch.zeros(1, dtype=torch.long), n_nodes.cumsum(0)]),
        "edge_ptr": torch.cat([torch.zeros(1, dtype=torch.long), n_edges.cumsum(0)]),
    }


def save_packed(path: str | Path, packed: dict) -> int:
    """Write ``packed`` with ``torch.save``; returns the file size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(packed, path)
    return path.stat().st_size


def load_packed(path: str | Path) -> dict:
    """Read a file written by :func:`save_packed` (checks the format tag)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: graphs file not found (write one with --save-graphs)")
    try:
        packed = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file, or one asking to run code
        raise ValueError(f"{path}: not a {PACKED_FORMAT} graph file ({str(err).strip().splitlines()[0]})") from err
    if not isinstance(packed, dict) or packed.get("format") != PACKED_FORMAT:
        raise ValueError(f"{path}: not a {PACKED_FORMAT} graph file (write one with --save-graphs)")
    return packed


def unpack(packed: dict) -> list:
    """List of PyG ``Data`` (contract fields and dtypes of docs/architecture.md, plus ``y``/``y_mask`` [1, 1])."""
    from torch_geometric.data import Data

    npt, ept = packed["node_ptr"].tolist(), packed["edge_ptr"].tolist()
    z, pos, cell = packed["z"].long(), packed["pos"], packed["cell"]
    ei, ev, ed, co = packed["edge_index"].long(), packed["edge_vec"], packed["edge_dist"], packed["cell_offset"].long()
    y = packed["y"]
    graphs = []
    for g in range(len(y)):
        n0, n1, e0, e1 = npt[g], npt[g + 1], ept[g], ept[g + 1]
        graphs.append(Data(
            z=z[n0:n1], pos=pos[n0:n1], cell=cell[g : g + 1], edge_index=ei[:, e0:e1], edge_vec=ev[e0:e1],
            edge_dist=ed[e0:e1], cell_offset=co[e0:e1], num_nodes=n1 - n0,
            y=y[g].view(1, 1), y_mask=torch.ones(1, 1, dtype=torch.bool),
        ))
    return graphs


def graph_arrays(graphs: Sequence[Any]) -> list:
    """:func:`unpack`'s ``Data`` items as ``tlgnn.graphs.GraphArrays`` (the graph-pack input; no copies)."""
    from tlgnn.graphs import GraphArrays

    return [GraphArrays(z=g.z.numpy(), pos=g.pos.numpy(), cell=g.cell.numpy(), edge_index=g.edge_index.numpy(),
                        edge_vec=g.edge_vec.numpy(), edge_dist=g.edge_dist.numpy(), cell_offset=g.cell_offset.numpy())
            for g in graphs]


def describe(packed: dict) -> str:
    """One line: graphs, atoms and edges per graph."""
    n = len(packed["y"])
    return (f"{n} graphs, {len(packed['z']) / n:.1f} atoms/graph, {packed['edge_index'].shape[1] / n:.1f} "
            f"edges/graph (cutoff {packed['builder'].get('cutoff')} Å, max_neighbors "
            f"{packed['builder'].get('max_neighbors')})")
