"""tlgnn.training.inference: the one inference loop (``predict_batches``) and the heads' extra outputs
(``Head.extras``), on real crystals of the shipped COD sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from support.paths import ROOT
from tlgnn.data.tasks import TaskSpec
from tlgnn.graphs import CrystalGraphBuilder
from tlgnn.io import read_structures
from tlgnn.training.inference import predict_batches
from tlgnn.training.module import TransferModule

COD = ROOT / "data" / "structures" / "cif" / "cgcnn_cod_sample"
ENCODER = {"name": "cgcnn", "hidden_channels": 8, "num_layers": 1, "out_channels": 8}
PBE, HSE = TaskSpec("gap_pbe", unit="eV"), TaskSpec("gap_hse", unit="eV")


@pytest.fixture(scope="module")
def graphs():
    records = read_structures(sorted(COD.glob("*.cif"))[:6]).records
    builder = CrystalGraphBuilder()
    out = []
    for rec in records:
        data = builder(rec.structure)
        data.material_id = rec.id
        out.append(data)
    return out


def module_with(head: dict, tasks=(PBE, HSE), encoder=ENCODER) -> TransferModule:
    torch.manual_seed(0)
    return TransferModule({"encoder": dict(encoder), "head": head}, list(tasks)).eval()


def test_heads_give_their_extra_outputs_through_extras(graphs):
    batch = Batch.from_data_list(graphs)
    single = module_with({"name": "single", "task": "gap_hse"})
    assert single.model.head.extras(single.model.encode(batch), batch) == {}

    diff = module_with({"name": "difference", "chain": ["gap_pbe", "gap_hse"]})
    enc = diff.model.encode(batch)
    preds, extras = diff.model.head(enc, batch), diff.model.head.extras(enc, batch)
    assert set(extras) == {"delta_gap_hse"}
    torch.testing.assert_close(extras["delta_gap_hse"], preds["gap_hse"] - preds["gap_pbe"])

    elv = module_with({"name": "elv", "latents": ["gap_pbe", "shift"], "parameters": {"a": 1.5},
                       "expressions": {"gap_hse": "a * gap_pbe + softplus(shift)"}})
    enc = elv.model.encode(batch)
    preds, extras = elv.model.head(enc, batch), elv.model.head.extras(enc, batch)
    assert set(extras) == {"latent_gap_pbe", "latent_shift"}
    torch.testing.assert_close(extras["latent_gap_pbe"], preds["gap_pbe"])
    torch.testing.assert_close(preds["gap_hse"],
                               1.5 * extras["latent_gap_pbe"] + torch.nn.functional.softplus(extras["latent_shift"]))
    assert {k: float(v.detach()) for k, v in elv.model.head.parameters_dict().items()} == {"a": 1.5}
    assert single.model.head.parameters_dict() == {}


def test_predict_batches_collects_ids_labels_predictions_extras_and_embeddings(graphs):
    module = module_with({"name": "difference", "chain": ["gap_pbe", "gap_hse"]})
    for k, g in enumerate(graphs):
        g.y = torch.tensor([[float(k), 0.0]])
        g.y_mask = torch.tensor([[True, False]])
    loader = [Batch.from_data_list(graphs[:4]), Batch.from_data_list(graphs[4:])]
    got = predict_batches(module, loader, extras=True, embed=True)
    whole = Batch.from_data_list(graphs)
    with torch.no_grad():
        expected = module(module.model.encoder.prepare_batch(whole))
        embeddings = module.model.embed(whole)
    assert got.ids == [g.material_id for g in graphs]
    np.testing.assert_allclose(got.y[:, 0], np.arange(len(graphs)))
    assert got.mask[:, 0].all() and not got.mask[:, 1].any()
    for task in ("gap_pbe", "gap_hse"):
        np.testing.assert_allclose(got.preds[task], expected[task].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.extras["delta_gap_hse"], got.preds["gap_hse"] - got.preds["gap_pbe"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.embeddings, embeddings.numpy(), rtol=1e-5, atol=1e-6)
    only = predict_batches(module, loader, embed=True, predict=False)
    assert only.preds == {} and only.embeddings.shape == (len(graphs), ENCODER["out_channels"])
    empty = predict_batches(module, [])
    assert empty.preds["gap_hse"].shape == (0,) and empty.y.shape == (0, 2)


def test_predict_batches_runs_in_eval_mode_and_restores_the_mode(graphs):
    """Batches go through the encoder's host-side checks (as in training), dropout is off, and a module that was
    training is training again afterwards."""
    encoder = {**ENCODER, "cutoff": 5.0}
    module = module_with({"name": "single", "task": "gap_hse", "dropout": 0.5}, encoder=encoder)
    whole = Batch.from_data_list(graphs)
    with torch.no_grad():
        reference = module(module.model.encoder.prepare_batch(whole.clone()))["gap_hse"].numpy()
    module.train()
    first = predict_batches(module, [whole.clone()]).preds["gap_hse"]
    assert module.training
    second = predict_batches(module, [whole.clone()]).preds["gap_hse"]
    np.testing.assert_allclose(first, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(first, second)
