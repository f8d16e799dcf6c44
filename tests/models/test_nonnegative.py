"""Non-negative regression outputs (head option ``nonnegative``): band gaps cannot be below 0.

Real crystals: the COD sample graphs of ``tests/support/structures.py`` and the Materials Project crystals of
``data/mp_structures_sample.jsonl.gz`` (on which the shipped checkpoint, written before the option existed,
predicts negative PBE gaps for metals).
"""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
import torch
import yaml

from support.heads import EXPECTED_KEYS, HEAD_CONFIGS, TASKS, masked_mse, model_for
from support.paths import ROOT
from support.structures import labelled_batch
from support.training import raw_config
import tlgnn
from tlgnn.models import build_head
from tlgnn.training.config import load_run_config

CKPT = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"


def _gaps(head: str) -> list[str]:
    return sorted(EXPECTED_KEYS[head] - {"is_metal"})


@pytest.mark.parametrize("name", sorted(HEAD_CONFIGS))
def test_listed_outputs_are_clamped_at_zero_in_physical_units_and_the_rest_unchanged(name):
    batch = labelled_batch(TASKS, n=8)
    gaps = _gaps(name)
    plain, clamped = model_for(name), model_for(name, nonnegative=gaps[:-1] or gaps)
    clamped.load_state_dict(plain.state_dict())
    for model in (plain, clamped):  # training means far below zero: many outputs are negative
        model.head.set_target_stats({t: -3.0 for t in gaps}, {t: 2.0 for t in gaps})
        model.eval()
    with torch.no_grad():
        before, after = plain(batch), clamped(batch)
    assert set(after) == set(before) == EXPECTED_KEYS[name]
    negative = 0
    for task, value in before.items():
        if task in clamped.head.nonnegative:
            negative += int((value < 0).sum())
            assert torch.equal(after[task], value.clamp(min=0.0)), task
        else:
            assert torch.equal(after[task], value), task
    assert negative > 0  # the clamp was exercised


def test_the_loss_sees_the_clamped_value_and_gradients_flow_through_it():
    batch = labelled_batch(TASKS, n=8)
    assert (batch.y[:, :3] > 0).all()  # band-gap-like labels, all >= 0
    plain, clamped = model_for("multitask"), model_for("multitask", nonnegative=["gap_pbe", "gap_hse", "gap_scan"])
    clamped.load_state_dict(plain.state_dict())
    for model in (plain, clamped):
        model.head.set_target_stats({t.name: -1.0 for t in TASKS[:3]}, {t.name: 2.0 for t in TASKS[:3]})
        model.eval()
    loss_plain, loss_clamped = masked_mse(plain(batch), batch), masked_mse(clamped(batch), batch)
    assert loss_clamped < loss_plain  # against labels >= 0 the clamp only removes error
    loss_clamped.backward()
    grads = [p.grad for p in clamped.head.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)


def test_option_errors_name_the_option_and_the_task():
    with pytest.raises(ValueError, match="nonnegative.*is_metal.*classification"):
        model_for("multitask", nonnegative=["is_metal"])
    with pytest.raises(ValueError, match="nonnegative: 'gap_pbe' is not predicted by this head"):
        model_for("single", nonnegative=["gap_pbe"])
    with pytest.raises(ValueError, match="nonnegative.*unknown task 'gap_hs'.*did you mean 'gap_hse'"):
        model_for("single", nonnegative=["gap_hs"])
    with pytest.raises(ValueError, match="must be a list of task names"):
        model_for("single", nonnegative="gap_hse")


def _mp_structures(n: int):
    from pymatgen.core import Structure

    rows = [json.loads(line) for line in gzip.open(ROOT / "data" / "mp_structures_sample.jsonl.gz", "rt")][:n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [Structure.from_str(r["cif"], fmt="cif") for r in rows]


def test_shipped_checkpoint_keeps_its_negative_gaps_and_the_option_clamps_them():
    structures = _mp_structures(40)
    model = tlgnn.load_model(CKPT)
    assert model.module.model.head.nonnegative == []  # written before the option: behaviour kept
    old = model.predict(structures)
    assert (old.gap_pbe_mp < 0).sum() >= 5  # metals predicted below 0 eV (data/pretrained/MODEL_CARD.md)
    head = model.module.model.head
    spec = {k: v for k, v in model.module.hparams["model"]["head"].items() if k != "name"}
    clamped = build_head(model.module.hparams["model"]["head"]["name"], head.in_dim, head.tasks,
                         **spec, nonnegative=["gap_pbe_mp"])
    clamped.load_state_dict(head.state_dict())
    model.module.model.head = clamped.eval()
    new = model.predict(structures)
    np.testing.assert_array_equal(new.gap_pbe_mp.to_numpy(), np.maximum(old.gap_pbe_mp.to_numpy(), 0.0))
    np.testing.assert_array_equal(new.e_form_mp.to_numpy(), old.e_form_mp.to_numpy())  # not listed: negative is fine


RUN_CONFIGS = sorted(p for p in [*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/*/*.yaml")]
                     if "model" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_run_configs_make_every_band_gap_output_nonnegative(path):
    config = load_run_config(path)
    gaps = [t for t in config.data.tasks if "gap" in t and not t.startswith("is_")]
    head = config.model.head
    outputs = set(gaps) & ({head["task"]} if "task" in head else set(gaps))
    assert outputs and outputs <= set(head.get("nonnegative", []))


def test_a_run_with_the_option_trains_and_its_checkpoint_predicts_nonnegative_gaps(tmp_path, cache_dir):
    from tlgnn.training.run import build_datamodule, fit

    head = {"name": "single", "task": "gap_hse", "hidden": [16], "nonnegative": ["gap_hse"]}
    config = load_run_config(raw=raw_config(tmp_path / "run", cache_dir, head, ["gap_hse"],
                                            trainer={"max_epochs": 1}))
    result = fit(config, test=False)
    model = tlgnn.load_model(result.best_checkpoint)
    assert model.module.model.head.nonnegative == ["gap_hse"]
    dm = build_datamodule(config)
    structures = [dm.table.structure(i) for i in range(40)]
    assert (model.predict(structures).gap_hse >= 0).all()
