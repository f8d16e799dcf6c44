"""Training with the pretrained ``chgnet`` encoder: a run through ``tlgnn.training.run.fit`` with the encoder
frozen and then gradually unfrozen, its checkpoints loaded back with ``weights_only=True``; a few fine-tuning
steps that move the encoder and lower the loss. Real data: the shipped Materials Project sample (data/mp_sample,
origin and licence in its README), real Lightning, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from support.structures import BUILDER, mp_structures
from support.training import raw_config
from tlgnn.data import TaskSpec
from tlgnn.models import build_encoder
from tlgnn.training.checkpoint import load_module, read_pretrained
from tlgnn.training.config import load_run_config
from tlgnn.training.inference import predict_batches
from tlgnn.training.module import TransferModule
from tlgnn.training.run import fit

pytestmark = pytest.mark.usefixtures("one_thread")

HEAD = {"name": "single", "task": "gap_hse", "hidden": [16]}


def test_fit_with_frozen_then_unfrozen_chgnet_round_trips_through_checkpoints(tmp_path, cache_dir):
    raw = raw_config(tmp_path / "run", cache_dir, HEAD, ["gap_hse"],
                     data={"batch_size": 8},
                     model={"finetune": {"freeze": "encoder", "unfreeze_every": 1}},
                     trainer={"max_epochs": 2, "limit_train_batches": 2, "limit_val_batches": 1})
    raw["model"]["encoder"] = {"name": "chgnet"}
    result = fit(load_run_config(raw=raw), test=False)
    trained = result.module.model
    # epoch 0: the whole encoder frozen; epoch 1: the last group (last atom conv + readout norm) unfrozen
    assert trained.frozen_groups == 4
    pretrained = build_encoder("chgnet").layer_groups()
    for i, group in enumerate(trained.encoder.layer_groups()):
        reference = pretrained[i].state_dict()
        same = all(torch.equal(v, reference[k]) for k, v in group.state_dict().items())
        assert same == (i < 4), i
    last = load_module(result.last_checkpoint)  # weights_only=True loading
    ours = trained.state_dict()
    assert last.model.state_dict().keys() == ours.keys()
    assert all(torch.equal(v, ours[k]) for k, v in last.model.state_dict().items())
    assert read_pretrained(result.last_checkpoint).encoder_spec == {"name": "chgnet"}
    loader = result.module.trainer.datamodule.val_dataloader()
    np.testing.assert_allclose(predict_batches(last, loader).preds["gap_hse"],
                               predict_batches(result.module, loader).preds["gap_hse"], rtol=0, atol=1e-6)


def test_fine_tuning_steps_move_the_encoder_and_lower_the_loss():
    """8 real crystals with a smooth target (mean atomic number / 20): 10 Adam steps on encoder and head."""
    torch.manual_seed(0)
    structures = mp_structures(8)
    graphs = [BUILDER(s) for s in structures]
    for g in graphs:
        g.y = torch.tensor([[float(g.z.float().mean()) / 20.0]])
        g.y_mask = torch.ones_like(g.y, dtype=torch.bool)
    batch = Batch.from_data_list(graphs)
    tasks = [TaskSpec("target", unit="eV")]
    stats = {"mean": {"target": float(batch.y.mean())}, "std": {"target": float(batch.y.std())}}
    module = TransferModule(model={"encoder": {"name": "chgnet"}, "head": {"name": "single", "hidden": [16]}},
                            tasks=tasks, optim={"optimizer": "adam", "lr": 3e-3}, graph=BUILDER.settings,
                            target_stats=stats)
    encoder = module.model.encoder
    before = [{k: v.clone() for k, v in g.state_dict().items()} for g in encoder.layer_groups()]
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    module.train()
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = module.model.head.combine_losses(module._losses(module.model(batch), batch))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.85 * losses[0], losses
    for i, group in enumerate(encoder.layer_groups()):
        changed = [k for k, v in group.state_dict().items() if not torch.equal(v, before[i][k])]
        assert any(k.endswith("weight") for k in changed), i
    assert encoder.graphs.cache.hits >= 9 * 8  # every step after the first reads the cached graphs
