"""Checkpoints written before an option existed load as the model they were trained as (``upgrade_model_config``
in ``read_checkpoint``), and a checkpoint whose head reads a context predicts from structures alone or with known
values (``Predictor``: composition from the atoms, known values from the table)."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch

from support.mp import sample_150
from tlgnn.data import TaskSpec
from tlgnn.training.checkpoint import CHECKPOINT_KEY, export_checkpoint, load_module, read_checkpoint
from tlgnn.training.module import TransferModule
from tlgnn.training.predict import Predictor
from tlgnn.utils.files import checksum_path, write_checksum

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = [TaskSpec("gap_pbe", unit="eV"), TaskSpec("gap_hse", unit="eV"), TaskSpec("e_form", unit="eV/atom")]
ENCODER = {"name": "cgcnn", "hidden_channels": 16, "num_layers": 1, "out_channels": 16}
STATS = {"mean": {"gap_pbe": 1.2, "gap_hse": 1.9, "e_form": -1.5}, "std": {"gap_pbe": 1.3, "gap_hse": 1.6,
                                                                            "e_form": 1.0}}


def _module(head: dict) -> TransferModule:
    torch.manual_seed(0)
    return TransferModule(model={"encoder": ENCODER, "head": head}, tasks=TASKS, target_stats=STATS)


def _as_old_file(path, drop: str) -> None:
    """Rewrite a checkpoint as one written before head option ``drop`` existed (its config lacks the key)."""
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint[CHECKPOINT_KEY]["model"]["head"][drop]
    torch.save(checkpoint, path)
    checksum_path(path).unlink(missing_ok=True)
    write_checksum(path)


def _known_batch(n: int = 8):
    from torch_geometric.data import Batch

    from tlgnn.graphs import CrystalGraphBuilder

    graphs = [g.to_data() for g in CrystalGraphBuilder(cutoff=8.0, max_neighbors=12).build_many(sample_150()[1][:n])]
    for k, g in enumerate(graphs):
        g.y = torch.tensor([[0.5 * k, 0.0, -0.2 * k]])
        g.y_mask = torch.tensor([[k % 2 == 0, False, k % 3 == 0]])
    return Batch.from_data_list(graphs)


def test_a_known_low_checkpoint_without_the_conditioning_key_loads_unconditioned(tmp_path):
    head = {"name": "difference", "chain": ["gap_pbe", "gap_hse"], "use_known_low": True,
            "condition_on_known_low": False, "hidden": [16]}
    module = _module(head).eval()
    path = export_checkpoint(module, tmp_path / "old.ckpt")
    _as_old_file(path, "condition_on_known_low")
    meta = read_checkpoint(path)[CHECKPOINT_KEY]
    assert meta["model"]["head"]["condition_on_known_low"] is False  # upgraded where checkpoints are read
    loaded = load_module(path)  # strict state_dict load: the Δ nets have their old width
    assert loaded.model.head.condition_on_known_low is False
    batch = _known_batch()
    with torch.no_grad():
        expected, got = module(batch), loaded(batch)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    fresh = {k: v for k, v in head.items() if k not in ("name", "condition_on_known_low")}
    assert _module({"name": "difference", **fresh}).model.head.condition_on_known_low  # a new config: True


def test_a_checkpoint_without_known_low_is_left_as_written(tmp_path):
    head = {"name": "difference", "chain": ["gap_pbe", "gap_hse"], "hidden": [16]}
    path = export_checkpoint(_module(head), tmp_path / "plain.ckpt")
    assert read_checkpoint(path)[CHECKPOINT_KEY]["model"]["head"] == head


def test_a_context_checkpoint_predicts_from_structures_and_known_values(tmp_path):
    head = {"name": "difference", "chain": ["gap_pbe", "gap_hse"], "use_known_low": True, "hidden": [16],
            "context": {"composition": True, "known": ["e_form"]}}
    module = _module(head)
    path = export_checkpoint(module, tmp_path / "context.ckpt")
    assert read_checkpoint(path)[CHECKPOINT_KEY]["model"]["head"]["condition_on_known_low"] is True  # recorded
    predictor = Predictor.from_checkpoint(path)
    ids, structures = sample_150()
    n = 8
    plain = predictor.predict(list(structures[:n]))
    assert plain.shape == (n, 3) and plain[["gap_pbe", "gap_hse"]].notna().all().all()
    batch = _known_batch(n)
    known = pd.DataFrame({"id": list(plain["id"]), "gap_pbe": [0.5 * k if k % 2 == 0 else None for k in range(n)],
                          "e_form": [-0.2 * k if k % 3 == 0 else None for k in range(n)]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a model that reads known values has no note about them
        given = predictor.predict(list(structures[:n]), known=known)
    with torch.no_grad():
        expected = predictor.module.eval()(batch)
    assert torch.allclose(torch.tensor(given["gap_hse"].to_numpy(), dtype=torch.float32), expected["gap_hse"],
                          atol=1e-5)
    changed = given["gap_hse"].to_numpy() != plain["gap_hse"].to_numpy()
    assert changed[[0, 2, 3, 4, 6]].all()  # rows with a known PBE gap or a known e_form
    assert (given["gap_hse"].to_numpy()[[1, 5, 7]] == plain["gap_hse"].to_numpy()[[1, 5, 7]]).all()

