"""Heads on embeddings of real crystals: outputs, statistics, losses, difference/fidelity/ELV semantics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from support.heads import EXPECTED_KEYS, HEAD_CONFIGS, TASKS, masked_mse, model_for
from support.structures import labelled_batch
from tlgnn.data import TaskSpec
from tlgnn.models import HEADS, ExpressionError, build_head


@pytest.mark.parametrize("name", sorted(HEAD_CONFIGS))
def test_output_keys_and_shapes(name):
    batch = labelled_batch(TASKS, n=5)
    preds = model_for(name).eval()(batch)
    assert set(preds) == EXPECTED_KEYS[name]
    assert set(preds) == set(model_for(name).head.outputs)
    for key, value in preds.items():
        expected = (5, 2) if key == "is_metal" else (5,)
        assert value.shape == expected, key
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("name", sorted(HEAD_CONFIGS))
def test_loss_falls_with_a_few_steps(name):
    batch = labelled_batch(TASKS, n=6, present=0.8)
    model = model_for(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = masked_mse(model(batch), batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_target_stats_give_physical_units_and_live_in_state_dict():
    model = model_for("multitask").eval()
    batch = labelled_batch(TASKS, n=4)
    raw = model(batch)
    model.head.set_target_stats({"gap_pbe": 1.5, "is_metal": 0.3}, {"gap_pbe": 2.0})
    scaled = model(batch)
    assert torch.allclose(scaled["gap_pbe"], 1.5 + 2.0 * raw["gap_pbe"], atol=1e-6)
    assert torch.equal(scaled["gap_hse"], raw["gap_hse"])
    assert torch.equal(scaled["is_metal"], raw["is_metal"])  # classification logits ignore stats
    state = model.state_dict()
    assert float(state["head.target_mean"][0]) == 1.5 and float(state["head.target_std"][0]) == 2.0
    fresh = model_for("multitask", seed=1)
    fresh.load_state_dict(state)
    assert fresh.head.target_stats()[0]["gap_pbe"] == 1.5
    with pytest.raises(ValueError, match="unknown task 'gap_hes'.*did you mean 'gap_hse'"):
        model.head.set_target_stats({"gap_hes": 1.0}, {})
    with pytest.raises(ValueError, match=r"std\['gap_pbe'\] must be > 0"):
        model.head.set_target_stats({}, {"gap_pbe": 0.0})


def test_difference_is_low_plus_delta_exactly():
    model = model_for("difference").eval()
    model.head.set_target_stats({"gap_pbe": 1.0, "gap_hse": 1.6, "gap_scan": 1.3},
                                {"gap_pbe": 1.2, "gap_hse": 1.5, "gap_scan": 1.1})
    assert torch.allclose(model.head.delta_mean, torch.tensor([0.6, -0.3]))
    assert torch.allclose(model.head.delta_std, torch.tensor([1.5, 1.1]))
    batch = labelled_batch(TASKS, n=5)
    enc = model.encoder(batch)
    parts = model.head.components(enc, batch)
    preds = model.head(enc, batch)
    assert set(parts) == {"gap_pbe", "gap_hse__delta", "gap_scan__delta"}
    assert torch.equal(preds["gap_pbe"], parts["gap_pbe"])
    assert torch.equal(preds["gap_hse"], parts["gap_pbe"] + parts["gap_hse__delta"])
    assert torch.equal(preds["gap_scan"], preds["gap_hse"] + parts["gap_scan__delta"])


def test_difference_normalises_delta_with_the_paired_statistics():
    model = model_for("difference").eval()
    mean, std = {"gap_pbe": 1.0, "gap_hse": 1.6, "gap_scan": 1.3}, {"gap_pbe": 1.2, "gap_hse": 1.5, "gap_scan": 1.1}
    model.head.set_target_stats(mean, std, {"gap_hse": {"gap_pbe": [0.9, 0.4]}, "gap_pbe": {"gap_hse": [-0.9, 0.4]}})
    # the link pbe -> hse takes its pair; hse -> scan has none and falls back to the difference of means
    assert torch.allclose(model.head.delta_mean, torch.tensor([0.9, -0.3]))
    assert torch.allclose(model.head.delta_std, torch.tensor([0.4, 1.1]))
    assert model.head.paired_stats() == {"gap_hse": {"gap_pbe": pytest.approx([0.9, 0.4])},
                                         "gap_scan": {"gap_hse": pytest.approx([-0.3, 1.1])}}
    model.head.set_target_stats({"gap_hse": 5.0}, {})  # pairs not named keep their values
    assert torch.allclose(model.head.delta_mean, torch.tensor([0.9, 1.3 - 5.0]))
    with pytest.raises(ValueError, match=r"pairs\['gap_hse'\]\['gap_pbe'\] must be \[mean, std > 0\]"):
        model.head.set_target_stats({}, {}, {"gap_hse": {"gap_pbe": [0.9, 0.0]}})
    with pytest.raises(ValueError, match="pairs: unknown task 'gap_hes'"):
        model.head.set_target_stats({}, {}, {"gap_hes": {"gap_pbe": [0.9, 0.4]}})


def test_difference_uses_known_low_where_present():
    model = model_for("difference", use_known_low=True).eval()
    batch = labelled_batch(TASKS, n=6, present=0.5, seed=3)
    enc = model.encoder(batch)
    parts = model.head.components(enc, batch)
    preds = model.head(enc, batch)
    pbe_known = batch.y_mask[:, 0]
    assert pbe_known.any() and (~pbe_known).any()
    expected_hse = torch.where(pbe_known, batch.y[:, 0], parts["gap_pbe"]) + parts["gap_hse__delta"]
    assert torch.equal(preds["gap_hse"], expected_hse)
    hse_known = batch.y_mask[:, 1]
    expected_scan = torch.where(hse_known, batch.y[:, 1], expected_hse) + parts["gap_scan__delta"]
    assert torch.equal(preds["gap_scan"], expected_scan)
    assert torch.equal(preds["gap_pbe"], parts["gap_pbe"])  # the low prediction itself is still learned


def test_difference_missing_high_labels_give_zero_delta_gradient():
    model = model_for("difference")
    batch = labelled_batch(TASKS, n=5)
    batch.y_mask[:, 1:] = False  # only the low-fidelity labels are present
    masked_mse(model(batch), batch).backward()
    for delta in model.head.deltas:
        for p in delta.parameters():
            assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.base.parameters())


def test_fidelity_head_differs_between_fidelities():
    model = model_for("fidelity").eval()
    preds = model(labelled_batch(TASKS, n=4))
    assert model.head.fidelities == ["pbe", "hse", "scan"]
    assert (preds["gap_pbe"] - preds["gap_hse"]).abs().min() > 1e-6
    assert (preds["gap_hse"] - preds["gap_scan"]).abs().min() > 1e-6
    # with equal embeddings the fidelities coincide: the difference comes from E_f alone
    with torch.no_grad():
        model.head.embedding.weight[:] = model.head.embedding.weight[0]
    same = model(labelled_batch(TASKS, n=4))
    assert torch.allclose(same["gap_pbe"], same["gap_scan"])


def test_fidelity_head_rejects_shared_fidelity():
    tasks = [TaskSpec("gap_a", fidelity="pbe"), TaskSpec("gap_b", fidelity="pbe")]
    with pytest.raises(ValueError, match="share fidelity 'pbe'"):
        build_head("fidelity", 8, tasks)


def test_elv_head_evaluates_its_expressions():
    model = model_for("elv").eval()
    model.head.set_target_stats({"gap_pbe": 1.0, "gap_hse": 2.0}, {"gap_pbe": 0.5, "gap_hse": 1.5})
    assert model.head.latent_std.tolist() == [0.5, 1.5]  # shift takes the std of gap_hse, which uses it
    batch = labelled_batch(TASKS, n=4)
    enc = model.encoder(batch)
    z = model.head.latents(enc)
    preds = model.head(enc, batch)
    assert torch.allclose(preds["gap_hse"], z["gap_pbe"] + F.softplus(z["shift"]))
    assert torch.allclose(preds["gap_scan"], 1.0 * z["gap_pbe"] + 0.3)
    assert torch.equal(preds["gap_pbe"], z["gap_pbe"])
    with torch.no_grad():
        model.head.parameter_values[0] = 2.0
    assert torch.allclose(model.head(enc, batch)["gap_scan"], 2.0 * z["gap_pbe"] + 0.3)


def test_elv_parameters_learn_from_data():
    model = model_for("elv")
    batch = labelled_batch(TASKS, n=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model.head.parameter_values[0].item()
    for _ in range(5):
        opt.zero_grad()
        masked_mse(model(batch), batch).backward()
        assert model.head.parameter_values.grad is not None and model.head.parameter_values.grad.abs() > 0
        opt.step()
    assert model.head.parameter_values[0].item() != start


def test_elv_errors_name_task_and_token():
    with pytest.raises(ExpressionError, match=r"task 'gap_hse'.*unknown name 'shfit'.*did you mean 'shift'"):
        build_head("elv", 8, TASKS, latents=["gap_pbe", "shift"], expressions={"gap_hse": "gap_pbe + shfit"})
    with pytest.raises(ValueError, match=r"expressions\['gap_hes'\].*did you mean 'gap_hse'"):
        build_head("elv", 8, TASKS, latents=["gap_pbe"], expressions={"gap_hes": "gap_pbe"})
    with pytest.raises(ExpressionError, match="uses no latent"):
        build_head("elv", 8, TASKS, latents=["gap_pbe"], parameters={"c": 1.0}, expressions={"gap_hse": "2 * c"})
    with pytest.raises(ValueError, match="latent 'spare' is neither a task nor used"):
        build_head("elv", 8, TASKS, latents=["gap_pbe", "spare"])
    with pytest.raises(ValueError, match="is_metal' is classification"):
        build_head("elv", 8, TASKS, latents=["gap_pbe"], expressions={"is_metal": "gap_pbe"})


def test_elv_reaction_barrier_from_two_latent_energies():
    tasks = [TaskSpec("barrier", unit="eV")]
    head = build_head("elv", 8, tasks, latents=["z_ts", "z_int"], expressions={"barrier": "z_ts - z_int"},
                      latent_stats={"z_int": [-1.0, 0.5]})
    head.set_target_stats({"barrier": 0.8}, {"barrier": 0.4})
    assert head.latent_mean.tolist() == [0.0, -1.0]
    assert head.latent_std.tolist() == pytest.approx([0.4, 0.5])
    assert head.outputs == ["barrier"]


def test_combine_losses_fixed_and_uncertainty():
    losses = {"gap_pbe": torch.tensor(2.0), "is_metal": torch.tensor(0.5)}
    fixed = build_head("multitask", 8, TASKS, task_weights={"gap_pbe": 3.0})
    assert float(fixed.combine_losses(losses)) == pytest.approx(3.0 * 2.0 + 0.5)
    unc = build_head("multitask", 8, TASKS, weighting="uncertainty")
    with torch.no_grad():
        unc.log_vars["gap_pbe"].fill_(math.log(4.0))
        unc.log_vars["is_metal"].fill_(0.0)
    total = unc.combine_losses(losses)
    expected = 0.5 / 4.0 * 2.0 + 0.5 * math.log(4.0) + 1.0 * 0.5 + 0.0
    assert total.item() == pytest.approx(expected)
    total.backward()
    # d/ds [0.5 e^-s L + 0.5 s] = -0.5 e^-s L + 0.5
    assert float(unc.log_vars["gap_pbe"].grad) == pytest.approx(-0.5 / 4.0 * 2.0 + 0.5)
    with pytest.raises(ValueError, match="'gap_hse' is not predicted"):
        build_head("single", 8, TASKS, task="gap_pbe").combine_losses({"gap_hse": torch.tensor(1.0)})


def test_head_registry_errors():
    with pytest.raises(ValueError, match=r"unknown head 'diference'.*did you mean 'difference'"):
        build_head("diference", 8, TASKS, chain=["gap_pbe", "gap_hse"])
    with pytest.raises(ValueError, match=r"head 'difference' has no option 'use_known_lo'.*'use_known_low'"):
        build_head("difference", 8, TASKS, chain=["gap_pbe", "gap_hse"], use_known_lo=True)
    with pytest.raises(ValueError, match=r"chain\[1\].*'is_metal' is classification"):
        build_head("difference", 8, TASKS, chain=["gap_pbe", "is_metal"])
    with pytest.raises(ValueError, match="option task is required"):
        build_head("single", 8, TASKS)
    assert sorted(HEADS) == ["difference", "elv", "fidelity", "multitask", "single", "tree"]


def test_one_mlp_builder_shared_by_all_heads():
    from tlgnn.models.layers import mlp

    net = mlp(8, [16, 4], 3, "softplus", dropout=0.1)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 4), (4, 3)]
    head = build_head("multitask", 8, TASKS, hidden=[16, 4], activation="softplus", shared_hidden=True)
    assert [m.out_features for m in head.net if isinstance(m, torch.nn.Linear)] == [16, 4, 3 + 2]
