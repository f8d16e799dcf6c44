"""Stacked encoders (tlgnn.models.encoders.stack): side by side on the same real crystal graphs, each with its own
weights (one checkpoint per encoder through model.init_from), frozen into the embedding cache and predicting from
structures alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from support.paths import ROOT
from support.structures import labelled_batch
from tlgnn.data import TaskSpec
from tlgnn.models import build_encoder
from tlgnn.utils.config import ConfigError

CKPT = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"
SHIPPED = {"name": "cgcnn", "hidden_channels": 64, "num_layers": 3, "out_channels": 128}
SMALL = {"name": "m3gnet_lite", "hidden_channels": 16, "num_layers": 2, "out_channels": 24}
TASKS = [TaskSpec("gap_hse", unit="eV")]


def test_the_stack_concatenates_each_encoders_own_embedding_on_the_same_batch():
    torch.manual_seed(0)
    stack = build_encoder("stack", encoders=[SHIPPED, SMALL]).eval()
    assert stack.out_dim == 128 + 24
    batch = labelled_batch(TASKS, n=5)
    with torch.no_grad():
        got = stack(stack.prepare_batch(batch)).graph_emb
        parts = [e(e.prepare_batch(labelled_batch(TASKS, n=5))).graph_emb for e in stack.encoders]
    assert got.shape == (5, 152)
    torch.testing.assert_close(got[:, :128], parts[0])
    torch.testing.assert_close(got[:, 128:], parts[1])
    assert not torch.allclose(parts[0][:, :24], parts[1])  # two different encoders, not one copied


def test_layer_groups_cover_every_parameter_once_aligned_at_the_output_end():
    stack = build_encoder("stack", encoders=[SHIPPED, {**SMALL, "num_layers": 1}])
    groups = stack.layer_groups()
    own = [e.layer_groups() for e in stack.encoders]
    assert len(groups) == max(len(g) for g in own)
    ids = [id(p) for g in groups for p in g.parameters()]
    assert sorted(ids) == sorted(id(p) for p in stack.parameters())  # each parameter exactly once
    for g in own:  # every encoder's last group sits in the stack's last group
        assert {id(p) for p in g[-1].parameters()} <= {id(p) for p in groups[-1].parameters()}
    # freezing all but the last group leaves each encoder's top layers, and only those, trainable
    assert set(id(p) for p in groups[0].parameters()) == set(id(p) for p in own[0][0].parameters())


@pytest.mark.parametrize("encoders, message", [
    ([SHIPPED], "at least two"),
    ([SHIPPED, {"hidden_channels": 4}], r"encoders\[1\] must be a mapping with a 'name'"),
    ([SHIPPED, {"name": "stack", "encoders": [SHIPPED, SMALL]}], "itself a stack"),
    ([SHIPPED, {**SMALL, "hiden_channels": 3}], "hiden_channels"),
])
def test_bad_stacks_are_refused_naming_the_problem(encoders, message):
    with pytest.raises(ValueError, match=message):
        build_encoder("stack", encoders=encoders)


def _config(tmp_path, name: str, init_from: list[str | None], *extra: str):
    from tlgnn.training.config import load_run_config
    from tlgnn.utils.config import load_yaml

    path = ROOT / "configs" / "finetune_hse.yaml"
    raw = load_yaml(path)
    raw["model"]["encoder"] = {"name": "stack", "encoders": [SHIPPED, SMALL]}
    raw["model"]["init_from"] = init_from
    raw["data"]["sources"] = str(path.parent / raw["data"]["sources"])
    return load_run_config(raw=raw, overrides=[
        "model.finetune.freeze=encoder", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
        "trainer.early_stopping.patience=null", f"data.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / name}", *extra,
    ])


def test_a_frozen_stack_loads_one_checkpoint_per_encoder_and_predicts_from_structures(tmp_path):
    from tlgnn.data import TransferDataModule
    from tlgnn.training.checkpoint import read_checkpoint, read_pretrained
    from tlgnn.training.predict import Predictor
    from tlgnn.training.run import fit

    result = fit(_config(tmp_path, "stack", [str(CKPT), None]))
    state = read_checkpoint(result.best_checkpoint)["state_dict"]
    shipped = read_pretrained(CKPT).encoder_state
    for key, value in shipped.items():  # encoder 0 is the shipped CGCNN, untouched by the frozen run
        torch.testing.assert_close(state[f"model.encoder.encoders.0.{key}"], value)
    # the head trained on stored vectors, each encoder's under its own identity (shared with single-encoder runs)
    folders = sorted(p.parent.name for p in (tmp_path / "cache" / "embeddings").glob("*/shard-*.npz"))
    assert len(folders) == 2
    from tlgnn.embeddings.cache import encoder_identity
    from tlgnn.models import build_encoder as build

    alone = build(**SHIPPED)
    alone.load_state_dict(shipped)
    graph = read_checkpoint(result.best_checkpoint)["hyper_parameters"]["graph"]
    assert encoder_identity(alone, SHIPPED, graph)[:16] in folders
    frame = pd.read_csv(result.test.predictions_path).head(6)
    dm = TransferDataModule(_config(tmp_path, "stack", [str(CKPT), None]).data)
    dm.setup("test")
    rows = {mid: i for i, mid in enumerate(dm.table.frame["material_id"])}
    got = Predictor.from_checkpoint(result.best_checkpoint).predict(
        [dm.table.structure(rows[mid]) for mid in frame["material_id"]])
    np.testing.assert_allclose(got["gap_hse"], frame["gap_hse"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("init_from, key", [
    ([str(CKPT)], "model.init_from"),          # one checkpoint for two encoders
    ([None, str(CKPT)], "model.encoder.name"),  # the CGCNN checkpoint given to the M3GNet encoder
])
def test_a_list_of_checkpoints_must_fit_the_stack(tmp_path, init_from, key):
    from tlgnn.training.run import fit

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        fit(_config(tmp_path, "bad", init_from))
