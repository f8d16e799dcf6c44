"""Real crystal graphs for the model and training tests: real crystal graphs from structures shipped in data/.

Structures: CIFs from the CGCNN sample of the Crystallography Open Database under
data/structures/cif/cgcnn_cod_sample (origin and licence: data/structures/README.md).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
import torch
from torch_geometric.data import Batch

from tlgnn.data import TaskSpec
from tlgnn.graphs import CrystalGraphBuilder

from support.paths import ROOT

DATA = ROOT / "data" / "structures" / "cif" / "cgcnn_cod_sample"
BUILDER = CrystalGraphBuilder(cutoff=8.0, max_neighbors=12)


@lru_cache(maxsize=None)
def structures(n: int = 6) -> tuple:
    """The first ``n`` shipped COD structures (pymatgen), sorted by file name."""
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(Structure.from_file(p) for p in sorted(DATA.glob("*.cif"))[:n])


def graphs(n: int = 6) -> list:
    """Crystal graphs of :func:`structures`."""
    return [BUILDER(s) for s in structures(n)]


def labelled_batch(tasks: list[TaskSpec], n: int = 6, seed: int = 0, present: float = 1.0) -> Batch:
    """A batch of real graphs with ``y`` [B, T] / ``y_mask`` [B, T] labels (``present``: fraction labelled).

    Regression labels are a smooth function of the structure (mean distance and composition), so a model
    can fit them; classification labels are whether the structure has more than 4 atoms.
    """
    gen = torch.Generator().manual_seed(seed)
    data = graphs(n)
    for g in data:
        ys, mask = [], []
        for k, task in enumerate(tasks):
            if task.kind == "classification":
                ys.append(float(g.num_nodes > 4))
            else:
                ys.append(float(g.edge_dist.mean()) * (1 + 0.5 * k) + 0.1 * float(g.z.float().mean()) - k)
            mask.append(bool(torch.rand((), generator=gen) < present))
        g.y = torch.tensor([ys], dtype=torch.float32)
        g.y_mask = torch.tensor([mask])
        g.y = torch.where(g.y_mask, g.y, torch.zeros_like(g.y))
    return Batch.from_data_list(data)


MP_STRUCTURES = ROOT / "data" / "mp_structures_sample.jsonl.gz"


@lru_cache(maxsize=None)
def mp_structures(n: int = 150) -> tuple:
    """The first ``n`` of the 150 Materials Project crystals of data/mp_structures_sample.jsonl.gz (pymatgen),
    in file order (origin and licence: data/README.md)."""
    import gzip
    import json

    from pymatgen.core import Structure

    out = []
    with gzip.open(MP_STRUCTURES, "rt") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line in handle:
            out.append(Structure.from_str(json.loads(line)["cif"], fmt="cif"))
            if len(out) == n:
                break
    return tuple(out)
