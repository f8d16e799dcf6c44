"""Ensembles as one model (tlgnn.models.ensemble): members, their spread, bootstrap rows, shared or separate
encoders, on real structures (support.structures.labelled_batch)."""

from __future__ import annotations

import math

import pytest
import torch

from support.structures import labelled_batch
from tlgnn.data import TaskSpec
from tlgnn.models import build_model
from tlgnn.models.ensemble import (BOOTSTRAP_SHARE, EnsembleEncoder, bootstrap_mask, ensemble_spec,
                                   out_of_bag_mean)

TASKS = [TaskSpec("gap_pbe", unit="eV", fidelity="pbe"), TaskSpec("gap_hse", unit="eV", fidelity="hse")]
ENCODER = {"name": "cgcnn", "hidden_channels": 16, "num_layers": 2, "out_channels": 24}
HEAD = {"name": "difference", "chain": ["gap_pbe", "gap_hse"], "hidden": [16]}


def ensemble(k: int = 3, shared: bool = True, **spec):
    torch.manual_seed(0)
    return build_model(ENCODER, HEAD, TASKS, {"members": k, "shared_encoder": shared, **spec}).eval()


def test_identical_members_have_zero_spread_and_a_point_interval():
    model = ensemble(3)
    head = model.head
    for member in head.members[1:]:
        member.load_state_dict(head.members[0].state_dict())
    batch = labelled_batch(TASKS, n=6)
    got = head.uncertainty(model.encode(batch), batch)
    single = head.members[0](model.encode(batch), batch)
    for name in ("gap_pbe", "gap_hse"):
        assert torch.allclose(got[name]["mean"], single[name], atol=1e-6)
        assert torch.equal(got[name]["std_raw"], torch.zeros(6))
        assert torch.allclose(got[name]["lower"], got[name]["upper"])  # scale 1, floor 0: no width at all


def test_different_members_spread_and_the_calibration_scales_it():
    model = ensemble(4)
    batch = labelled_batch(TASKS, n=6)
    enc = model.encode(batch)
    head = model.head
    values = head.member_predictions(enc, batch)["gap_hse"]
    got = head.uncertainty(enc, batch)["gap_hse"]
    assert torch.allclose(got["mean"], values.mean(0)) and torch.allclose(model(batch)["gap_hse"], values.mean(0))
    assert torch.allclose(got["std_raw"], values.std(0, unbiased=False)) and bool((got["std_raw"] > 0).all())
    head.set_calibration("gap_hse", {"scale": 2.0, "floor": 0.1})
    again = head.uncertainty(enc, batch)["gap_hse"]
    expected = torch.sqrt((2.0 * got["std_raw"]) ** 2 + 0.01)
    assert torch.allclose(again["std"], expected, atol=1e-6)
    z = 1.6448536269514722  # the central 90 % interval
    assert torch.allclose(again["upper"] - again["mean"], z * expected, atol=1e-5)
    head.set_calibration("gap_hse", {"scale": 2.0, "floor": 0.1, "quantile": 3.0})  # conformal: mean ± q σ
    assert torch.allclose(head.uncertainty(enc, batch)["gap_hse"]["upper"] - got["mean"], 3.0 * expected, atol=1e-5)


def test_a_difference_chain_adds_the_low_error_to_the_upper_one_unless_the_low_value_is_known():
    """y_high = ŷ_low + Δ: the upper task's σ_err is √(σ_high² + σ_low²) where the low value is predicted, and
    its own σ_high where the member adds Δ to a known low value (``use_known_low``)."""
    head = ensemble(3).head
    assert head.built_on("gap_hse") == "gap_pbe" and head.built_on("gap_pbe") is None
    own, low = torch.tensor([0.3, 0.4, 0.0]), torch.tensor([0.4, 0.3, 0.2])
    assert torch.allclose(head.chained_error("gap_hse", own, {"gap_pbe": low}), torch.tensor([0.5, 0.5, 0.2]))
    assert torch.equal(head.chained_error("gap_pbe", low, {}), low)
    assert head.chained_error("gap_hse", None, {"gap_pbe": low}) is None  # no error model of its own: none added
    torch.manual_seed(0)
    known = build_model(ENCODER, {**HEAD, "use_known_low": True}, TASKS, {"members": 3}).eval().head
    batch = labelled_batch(TASKS, n=3, present=0.5, seed=1)  # PBE known on rows 1 and 2
    present = batch.y_mask[:, 0]
    assert 0 < int(present.sum()) < 3
    assert torch.equal(known.known_low_rows("gap_hse", batch), present.bool())
    assert known.known_low_rows("gap_pbe", batch) is None and head.known_low_rows("gap_hse", batch) is None
    got = known.chained_error("gap_hse", own, {"gap_pbe": low}, known.known_low_rows("gap_hse", batch))
    assert torch.allclose(got, torch.where(present, own, torch.sqrt(own ** 2 + low ** 2)))


def test_bootstrap_rows_are_fixed_differ_by_member_and_cover_the_share():
    idx = torch.arange(20000)
    first, second = bootstrap_mask(idx, 0), bootstrap_mask(idx, 1)
    assert torch.equal(first, bootstrap_mask(idx.flip(0), 0).flip(0))  # a row's membership, not its position
    assert abs(first.double().mean().item() - BOOTSTRAP_SHARE) < 0.01
    assert abs((first & second).double().mean().item() - BOOTSTRAP_SHARE ** 2) < 0.01  # independent members


def test_out_of_bag_mean_averages_only_the_members_that_left_the_row_out():
    idx = torch.arange(200)
    values = torch.stack([torch.full((200,), float(i)) for i in range(5)])
    left_out = ~torch.stack([bootstrap_mask(idx, i) for i in range(5)])
    got = out_of_bag_mean(values, idx)
    for j in range(200):
        members = [i for i in range(5) if left_out[i, j]]
        if members:
            assert got[j].item() == pytest.approx(sum(members) / len(members))
        else:
            assert math.isnan(got[j].item())


def test_separate_encoders_side_by_side_and_freezing_every_member():
    model = ensemble(2, shared=False)
    assert isinstance(model.encoder, EnsembleEncoder) and model.encoder.out_dim == 48
    batch = labelled_batch(TASKS, n=3)
    emb = model.encode(batch).graph_emb
    assert emb.shape == (3, 48) and not torch.allclose(emb[:, :24], emb[:, 24:])  # two differently seeded encoders
    model.freeze_encoder(1)
    for member in model.encoder.members:
        groups = member.layer_groups()
        assert not any(p.requires_grad for p in groups[0].parameters())
        assert all(p.requires_grad for g in groups[1:] for p in g.parameters())


def test_a_tree_head_member_gets_its_own_seed():
    tasks = [TaskSpec("gap_hse", unit="eV")]
    model = build_model(ENCODER, {"name": "tree", "seed": 7}, tasks, {"members": 3, "shared_encoder": True})
    assert [m.options.seed for m in model.head.members] == [7, 8, 9]


@pytest.mark.parametrize("spec, message", [
    ({"members": 0}, "members must be an integer >= 1"),
    ({"members": 3, "level": 1.5}, "level must be a number in"),
    ({"members": 3, "calibration": "isotonic"}, "calibration must be one of"),
    ({"members": 3, "error_model": True}, "needs bootstrap: true"),
    ({"members": 3, "memberz": 2}, "unknown option 'memberz'"),
])
def test_bad_ensemble_specs_name_the_option(spec, message):
    with pytest.raises(ValueError, match=message):
        ensemble_spec(spec)
    assert ensemble_spec({"members": 1}) is None  # one member: a plain model


METAL = TaskSpec("metal", kind="classification", classes=["no", "yes"])
EVERY_HEAD = {
    "single": ({"name": "single", "task": "gap_hse", "hidden": [16]}, TASKS),
    "multitask": ({"name": "multitask", "hidden": [16]}, TASKS),
    "fidelity": ({"name": "fidelity", "hidden": [16]}, TASKS),
    "difference": (HEAD, TASKS),
    "difference, known low": ({**HEAD, "use_known_low": True}, TASKS),
    "elv": ({"name": "elv", "latents": ["gap_pbe", "shift"], "expressions": {"gap_hse": "gap_pbe + softplus(shift)"}},
            TASKS),
    "tree": ({"name": "tree", "chain": ["gap_pbe", "gap_hse"], "n_estimators": 20, "min_child_samples": 2}, TASKS),
    "classification": ({"name": "multitask", "hidden": [16]}, [TASKS[0], METAL]),
}


@pytest.mark.parametrize("kind", list(EVERY_HEAD))
def test_every_head_as_an_ensemble_gives_the_uncertainty_columns(kind):
    """The issue's "predict writes the uncertainty columns for every head": per regression output the std, raw
    spread and the interval; a class's probability spread; the extra outputs (Δ, ELV latents) with their spread."""
    from tlgnn.training.outputs import prediction_frame

    spec, tasks = EVERY_HEAD[kind]
    torch.manual_seed(0)
    model = build_model(ENCODER, spec, tasks, {"members": 3, "shared_encoder": True}).eval()
    batch = labelled_batch(tasks, n=8, present=0.5 if "known" in kind else 1.0)
    enc = model.encode(batch)
    head = model.head
    if head.fits_directly:  # tree members: fitted on the embeddings, each with its own seed
        x, y, mask = enc.graph_emb.detach().double().numpy(), batch.y.numpy(), batch.y_mask.numpy()
        head.fit_arrays(x, y, mask, x, y, mask)
    with torch.no_grad():
        got = head.uncertainty(enc, batch)
        extras = head.extras(enc, batch)
    uncertainty = {f"{name}_{key}": value.numpy() for name, item in got.items()
                   for key, value in item.items() if key in ("std", "std_raw", "lower", "upper")}
    preds = {name: item["mean"].numpy() for name, item in got.items()}
    frame = prediction_frame([str(i) for i in range(8)], preds, tasks, uncertainty=uncertainty)
    for task in tasks:
        if task.name not in head.outputs:
            continue
        if task.kind == "classification":
            assert {f"metal_prob_{c}_std" for c in METAL.classes} <= set(frame.columns)
            assert got["metal"]["std"].shape == (8, 2) and bool((got["metal"]["std"] > 0).any())
        else:
            columns = [f"{task.name}_{k}" for k in ("std", "std_raw", "lower", "upper")]
            assert set(columns) <= set(frame.columns) and frame[columns].notna().all().all()
            assert (frame[f"{task.name}_lower"] <= frame[task.name]).all()
            assert (frame[task.name] <= frame[f"{task.name}_upper"]).all()
            assert (frame[f"{task.name}_std_raw"] > 0).any()  # members differ by seed
    if kind == "elv":
        assert {"latent_gap_pbe_std", "latent_shift_std"} <= set(extras)
    if kind.startswith("difference"):
        assert "delta_gap_hse_std" in extras
