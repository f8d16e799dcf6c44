"""Fine-tuning: loading from a checkpoint, each freeze mode, per-part learning rates, gradual unfreezing, errors.

Real data: the first 16 Materials Project crystals of the shipped sample ``data/mp_sample`` with their PBE band
gaps and formation energies (origin and licence: data/mp_sample/README.md).
"""

from __future__ import annotations

import copy
import gzip
import json
import warnings
from functools import lru_cache
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from support.paths import ROOT
from tlgnn.data import TaskSpec
from tlgnn.graphs import CrystalGraphBuilder
from tlgnn.training.config import FinetuneConfig, load_run_config
from tlgnn.training.checkpoint import checkpoint_info, export_checkpoint, load_module, read_pretrained
from tlgnn.training.finetune import apply_finetuning, plan_callbacks
from tlgnn.training.module import TransferModule
from tlgnn.training.optim import build_optimizer
from tlgnn.utils.config import ConfigError

SAMPLE = ROOT / "data" / "mp_sample"
SOURCE_TASKS = [TaskSpec("gap_pbe_mp", unit="eV", fidelity="pbe"), TaskSpec("e_form_mp", unit="eV/atom")]
TARGET_TASKS = [TaskSpec("gap_hse", unit="eV", fidelity="hse")]
ENCODER = {"name": "cgcnn", "hidden_channels": 16, "num_layers": 2, "out_channels": 16}  # groups: embed, conv, conv, fc
SOURCE_HEAD = {"name": "multitask", "hidden": [8]}
BUILDER = CrystalGraphBuilder(cutoff=8.0, max_neighbors=12)


@lru_cache(maxsize=None)
def _rows(n: int = 16) -> tuple:
    from pymatgen.core import Structure

    labels = pd.read_csv(SAMPLE / "labels.csv.gz").head(n)
    cifs = {}
    with gzip.open(SAMPLE / "structures.jsonl.gz", "rt") as handle:
        for line in handle:
            rec = json.loads(line)
            if rec["material_id"] in set(labels["material_id"]):
                cifs[rec["material_id"]] = rec["cif"]
            if len(cifs) == n:
                break
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graphs = [BUILDER(Structure.from_str(cifs[m], fmt="cif")) for m in labels["material_id"]]
    return tuple(graphs), labels


def batch(tasks: list[TaskSpec], n: int = 16) -> Batch:
    """Real graphs with their real labels (``gap_hse`` stands in with the PBE gap + 1 eV: an HSE-like target)."""
    graphs, labels = _rows(n)
    columns = {"gap_pbe_mp": labels["band_gap_pbe"], "e_form_mp": labels["formation_energy_per_atom"],
               "gap_hse": labels["band_gap_pbe"] + 1.0}
    data = []
    for i, g in enumerate(graphs):
        g = copy.copy(g)
        g.y = torch.tensor([[float(columns[t.name].iloc[i]) for t in tasks]], dtype=torch.float32)
        g.y_mask = torch.ones_like(g.y, dtype=torch.bool)
        data.append(g)
    return Batch.from_data_list(data)


def module(tasks, head, encoder=ENCODER, seed=0, optim=None) -> TransferModule:
    torch.manual_seed(seed)
    b = batch(tasks)
    mean = {t.name: float(b.y[:, k].mean()) for k, t in enumerate(tasks)}
    std = {t.name: float(b.y[:, k].std()) for k, t in enumerate(tasks)}
    return TransferModule(model={"encoder": dict(encoder), "head": dict(head)}, tasks=tasks,
                          optim=optim or {"optimizer": "adam", "lr": 1e-2}, graph=BUILDER.settings,
                          target_stats={"mean": mean, "std": std})


def train_steps(m: TransferModule, tasks, n_steps: int = 3, lr: float = 1e-2) -> None:
    b = batch(tasks)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    m.train()
    for _ in range(n_steps):
        opt.zero_grad()
        loss = m.model.head.combine_losses(m._losses(m.model(b), b))
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def source_ckpt(tmp_path_factory) -> Path:
    """A pretrained (3 Adam steps on real PBE gaps / formation energies) model as a compact checkpoint."""
    m = module(SOURCE_TASKS, SOURCE_HEAD, seed=1)
    train_steps(m, SOURCE_TASKS)
    path = tmp_path_factory.mktemp("pretrained") / "source.ckpt"
    export_checkpoint(m.eval(), path, info={"data": "16 mp_sample crystals"})
    return path


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


# ------------------------------------------------------------------------------------------------ loading
def test_compact_checkpoint_round_trip(source_ckpt):
    restored = load_module(source_ckpt)
    assert checkpoint_info(source_ckpt) == {"data": "16 mp_sample crystals"}
    assert [t.name for t in restored.tasks] == ["gap_pbe_mp", "e_form_mp"]
    assert source_ckpt.stat().st_size < 200_000  # weights only, no optimiser state
    b = batch(SOURCE_TASKS)
    pre = read_pretrained(source_ckpt)
    with torch.no_grad():
        out = restored(b)
    assert set(out) == {"gap_pbe_mp", "e_form_mp"} and torch.isfinite(out["gap_pbe_mp"]).all()
    assert set(pre.encoder_state) == set(restored.model.encoder.state_dict())


def test_encoder_loaded_new_head_for_new_tasks(source_ckpt):
    pre = read_pretrained(source_ckpt)
    m = module(TARGET_TASKS, {"name": "single", "hidden": [8]}, seed=5)
    before_head = _state(m.model.head)
    plan = apply_finetuning(m, source_ckpt, FinetuneConfig(), log=None)
    for k, v in m.model.encoder.state_dict().items():
        torch.testing.assert_close(v, pre.encoder_state[k], rtol=0, atol=0)
    for k, v in m.model.head.state_dict().items():
        torch.testing.assert_close(v, before_head[k], rtol=0, atol=0)  # new head untouched
    assert not plan.head_loaded and "tasks differ" in plan.head_reason
    # the new head keeps this run's statistics (the target's training mean), not the checkpoint's
    assert m.model.head.target_stats()[0]["gap_hse"] == pytest.approx(float(batch(TARGET_TASKS).y.mean()), rel=1e-5)


def test_head_loaded_when_tasks_match(source_ckpt):
    source = load_module(source_ckpt)
    m = module(SOURCE_TASKS, SOURCE_HEAD, seed=7)
    plan = apply_finetuning(m, source_ckpt, FinetuneConfig(), log=None)
    assert plan.head_loaded and plan.head_reason is None
    b = batch(SOURCE_TASKS)
    m.eval()
    with torch.no_grad():
        ours, theirs = m(b), source(b)
    for task in ("gap_pbe_mp", "e_form_mp"):
        torch.testing.assert_close(ours[task], theirs[task])
    # load_head: never builds a new head even though it would fit
    fresh = module(SOURCE_TASKS, SOURCE_HEAD, seed=7)
    plan = apply_finetuning(fresh, source_ckpt, FinetuneConfig(load_head="never"), log=None)
    assert not plan.head_loaded


# ------------------------------------------------------------------------------------------------ freezing
FROZEN = {"none": 0, "encoder": 4, 1: 1, 3: 3}


@pytest.mark.parametrize("freeze", list(FROZEN))
def test_freeze_modes_freeze_exactly_what_they_say(source_ckpt, freeze):
    m = module(TARGET_TASKS, {"name": "single", "hidden": [8]})
    plan = apply_finetuning(m, source_ckpt, FinetuneConfig(freeze=freeze), log=None)
    k = FROZEN[freeze]
    assert plan.initial_frozen == k
    groups = m.model.encoder.layer_groups()
    assert len(groups) == 4
    before = [_state(g) for g in groups]
    head_before = _state(m.model.head)
    optimizer = build_optimizer(plan.param_groups(m, 1e-2), {"optimizer": "adam", "lr": 1e-2})
    b = batch(TARGET_TASKS)
    m.train()
    optimizer.zero_grad()
    loss = m.model.head.combine_losses(m._losses(m.model(b), b))
    loss.backward()
    optimizer.step()
    for i, group in enumerate(groups):
        frozen = i < k
        for name, p in group.named_parameters():
            assert p.requires_grad is not frozen
            if frozen:
                assert p.grad is None, (i, name)
        after = group.state_dict()
        changed = [n for n, v in after.items() if not torch.equal(v, before[i][n])]
        if frozen:  # weights and batch-norm running statistics unchanged
            assert changed == [], (i, changed)
        else:
            assert any(n.endswith("weight") for n in changed), (i, changed)
    assert any(not torch.equal(v, head_before[n]) for n, v in m.model.head.state_dict().items())


def test_separate_learning_rates_scale_the_update(source_ckpt):
    m = module(TARGET_TASKS, {"name": "single", "hidden": [8]})
    plan = apply_finetuning(m, source_ckpt, FinetuneConfig(encoder_lr=1e-4, head_lr=1e-2), log=None)
    groups = plan.param_groups(m, lr=5e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("encoder", 1e-4), ("head", 1e-2)]
    optimizer = build_optimizer(groups, {"optimizer": "sgd", "lr": 5e-3, "momentum": 0.0})
    enc_w, head_w = m.model.encoder.conv_to_fc.weight, m.model.head.net[0].weight
    enc0, head0 = enc_w.detach().clone(), head_w.detach().clone()
    b = batch(TARGET_TASKS)
    m.train()
    loss = m.model.head.combine_losses(m._losses(m.model(b), b))
    loss.backward()
    optimizer.step()
    torch.testing.assert_close(enc0 - enc_w.detach(), 1e-4 * enc_w.grad)
    torch.testing.assert_close(head0 - head_w.detach(), 1e-2 * head_w.grad)
    # a frozen encoder without unfreezing is left out of the optimiser altogether
    frozen = module(TARGET_TASKS, {"name": "single", "hidden": [8]})
    plan = apply_finetuning(frozen, source_ckpt, FinetuneConfig(freeze="encoder"), log=None)
    assert [g["name"] for g in plan.param_groups(frozen, 1e-3)] == ["head"]


def test_gradual_unfreezing_in_a_lightning_run(source_ckpt, tmp_path):
    m = module(TARGET_TASKS, {"name": "single", "hidden": [8]}, optim={"optimizer": "adam", "lr": 1e-2,
                                                                       "scheduler": "none"})
    plan = apply_finetuning(m, source_ckpt, FinetuneConfig(freeze="encoder", unfreeze_every=1), log=None)
    assert [plan.frozen_at(e) for e in range(6)] == [4, 3, 2, 1, 0, 0]
    groups = m.model.encoder.layer_groups()
    before = [_state(g) for g in groups]
    graphs, _ = _rows()
    data = batch(TARGET_TASKS).to_data_list()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=plan_callbacks(plan))  # as the run builder passes them
    trainer.fit(m, train_dataloaders=DataLoader(data, batch_size=8))
    # epoch 0: whole encoder frozen; epoch 1: only the readout layer (the last group) unfrozen
    assert m.model.frozen_groups == 3
    for i, group in enumerate(groups):
        same = all(torch.equal(v, before[i][n]) for n, v in group.state_dict().items())
        assert same == (i < 3), i


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "encoder, key",
    [({**ENCODER, "hidden_channels": 32}, "model.encoder.hidden_channels"),
     ({**ENCODER, "gaussian_step": 0.25}, "model.encoder.gaussian_step"),
     ({"name": "m3gnet_lite", "hidden_channels": 16, "num_layers": 2, "out_channels": 16}, "model.encoder.name")],
)
def test_encoder_mismatch_names_the_setting(source_ckpt, encoder, key):
    m = module(TARGET_TASKS, {"name": "single", "hidden": [8]}, encoder=encoder)
    with pytest.raises(ConfigError) as err:
        apply_finetuning(m, source_ckpt, FinetuneConfig(), log=None)
    assert err.value.key == key
    assert str(source_ckpt) in str(err.value)


def test_layout_options_may_differ_from_the_checkpoint(source_ckpt):
    """edge_projection only orders the arithmetic: a GPU user may load a per_atom-trained encoder as per_edge."""
    m = module(TARGET_TASKS, {"name": "single", "hidden": [8]}, encoder={**ENCODER, "edge_projection": "per_edge"})
    apply_finetuning(m, source_ckpt, FinetuneConfig(), log=None)
    state = torch.load(source_ckpt, weights_only=True)["state_dict"]
    for name, value in m.model.encoder.state_dict().items():
        assert torch.equal(value, state[f"model.encoder.{name}"]), name


@pytest.mark.parametrize("setting, value", [("cutoff", 6.0), ("max_neighbors", 16)])
def test_graph_mismatch_names_the_setting(source_ckpt, setting, value):
    m = module(TARGET_TASKS, {"name": "single", "hidden": [8]})
    graph = CrystalGraphBuilder(**{"cutoff": 8.0, "max_neighbors": 12, setting: value}).settings
    with pytest.raises(ConfigError) as err:
        apply_finetuning(m, source_ckpt, FinetuneConfig(), graph=graph, log=None)
    assert err.value.key == f"data.graph.{setting}"
    assert f"{setting}={value!r}" in str(err.value)


def test_other_errors(source_ckpt, tmp_path):
    m = module(TARGET_TASKS, {"name": "single", "hidden": [8]})
    with pytest.raises(ConfigError, match="cannot reuse the head") as err:
        apply_finetuning(m, source_ckpt, FinetuneConfig(load_head="always"), log=None)
    assert err.value.key == "model.finetune.load_head"
    with pytest.raises(ConfigError, match="4 layer groups") as err:
        apply_finetuning(m, source_ckpt, FinetuneConfig(freeze=5), log=None)
    assert err.value.key == "model.finetune.freeze"
    with pytest.raises(ConfigError, match="checkpoint not found") as err:
        apply_finetuning(m, tmp_path / "missing.ckpt", FinetuneConfig(), log=None)
    junk = tmp_path / "junk.ckpt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(ConfigError, match="not a tlgnn checkpoint") as err:
        apply_finetuning(m, junk, FinetuneConfig(), log=None)
    assert err.value.key == "model.init_from"


def test_config_section(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg = tmp_path / "sub" / "run.yaml"
    cfg.write_text("data: {aligned: x.parquet}\n"
                   "model: {init_from: ../pre.ckpt, finetune: {freeze: 2, encoder_lr: 1.0e-4, unfreeze_every: 3}}\n")
    config = load_run_config(cfg)
    assert config.model.init_from == str(tmp_path / "pre.ckpt")  # relative to the YAML
    assert config.model.finetune == FinetuneConfig(freeze=2, encoder_lr=1e-4, unfreeze_every=3)
    for override, key in [("model.finetune.freeze=all", "model.finetune.freeze"),
                          ("model.finetune.head_lr=0", "model.finetune.head_lr"),
                          ("model.finetune.freeze=none", "model.finetune.unfreeze_every")]:
        with pytest.raises(ConfigError) as err:
            load_run_config(cfg, [override])
        assert err.value.key == key
