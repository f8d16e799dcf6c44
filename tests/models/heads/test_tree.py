"""Tree head (LightGBM trees held as tensors) on real labels: composition features of the 400 Materials Project
rows of data/benchmark_sample (PBE gap for all, HSE gap for 240) and real crystal graphs of data/structures."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from support.paths import ROOT
from support.structures import labelled_batch
from tlgnn.baselines import featurize
from tlgnn.data import TaskSpec
from tlgnn.models import TransferModel, build_encoder, build_head
from tlgnn.models.encoders.base import EncoderOutput

SAMPLE = ROOT / "data" / "benchmark_sample" / "labels.csv.gz"
TASKS = [TaskSpec("gap_pbe", unit="eV", fidelity="pbe"), TaskSpec("gap_hse", unit="eV", fidelity="hse"),
         TaskSpec("is_metal", kind="classification", classes=["metal", "non-metal"])]
FAST = {"n_estimators": 300, "learning_rate": 0.08, "n_jobs": 1}


class Rows:
    """A cached-embedding style batch: labels ``y``/``y_mask`` only (the embedding is passed as EncoderOutput)."""

    def __init__(self, y: np.ndarray, mask: np.ndarray) -> None:
        self.y = torch.as_tensor(np.nan_to_num(y), dtype=torch.float32)
        self.y_mask = torch.as_tensor(mask)


@pytest.fixture(scope="module")
def data():
    """Features with 10 % of the entries NaN, labels [n, 3] (is_metal unlabelled), train/val/test row indices."""
    frame = pd.read_csv(SAMPLE)
    x = featurize(frame.formula_sum.tolist()).astype(np.float32)
    rng = np.random.default_rng(0)
    x[rng.random(x.shape) < 0.1] = np.nan
    y = np.stack([frame.band_gap_pbe, frame.gap_hse, np.full(len(frame), np.nan)], 1)
    order = rng.permutation(len(frame))
    return x, y, np.isfinite(y), (order[:250], order[250:320], order[320:])


def _predict(head, x, y=None, mask=None):
    batch = None if y is None else Rows(y, mask)
    with torch.no_grad():
        return head(EncoderOutput(node_emb=None, graph_emb=torch.as_tensor(x)), batch)


def _fitted(data, **options):
    x, y, mask, (train, val, _) = data
    head = build_head("tree", x.shape[1], TASKS, **{**FAST, **options})
    history = head.fit_arrays(x[train], y[train], mask[train], x[val], y[val], mask[val])
    return head, history


def test_torch_trees_equal_lightgbm_predictions_on_held_out_rows_with_nan(data):
    x, y, mask, (train, val, test) = data
    head, history = _fitted(data, task="gap_pbe")
    assert np.isnan(x[test]).any()
    best = history["best_iteration"]["gap_pbe"]
    assert 0 < best < FAST["n_estimators"]  # early stopping on the validation MAE kept the best round
    assert head.forests["main"].num_trees == best
    expected = head.boosters["main"].predict(x[test].astype(np.float64), num_iteration=best)
    got = _predict(head, x[test])["gap_pbe"]
    assert got.dtype == torch.float32 and got.shape == (len(test),)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5, rtol=0)
    val_pred = head.boosters["main"].predict(x[val].astype(np.float64), num_iteration=best)
    assert history["val_mae"]["gap_pbe"] == pytest.approx(np.abs(val_pred - y[val, 0]).mean(), abs=1e-9)
    assert history["n_train"] == {"gap_pbe": 250} and history["n_val"] == {"gap_pbe": 70}


def test_state_dict_round_trip_into_a_fresh_head(data):
    x, _, _, (_, _, test) = data
    head, _ = _fitted(data, chain=["gap_pbe", "gap_hse"], n_estimators=80)
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_head("tree", x.shape[1], TASKS, chain=["gap_pbe", "gap_hse"])
    with pytest.raises(RuntimeError, match="not fitted"):
        _predict(fresh, x[test])
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    before, after = _predict(head, x[test]), _predict(fresh, x[test])
    assert before.keys() == after.keys() == {"gap_pbe", "gap_hse"}
    for name in before:
        assert torch.equal(before[name], after[name])
    assert fresh.boosters == {} and list(fresh.parameters()) == []
    fresh.half()  # a model cast to another precision keeps the trees' float64 thresholds and leaf values
    assert fresh.forests["low"].threshold.dtype == torch.float64
    assert torch.equal(_predict(fresh, x[test])["gap_hse"], after["gap_hse"])


def test_known_low_difference_beats_single_on_real_pbe_to_hse(data):
    x, y, mask, (_, _, test) = data
    single, _ = _fitted(data, task="gap_hse")
    diff, history = _fitted(data, chain=["gap_pbe", "gap_hse"], use_known_low=True)
    assert history["n_train"] == {"gap_pbe": 250, "delta_gap_hse": int((mask[data[3][0]][:, :2]).all(1).sum())}
    rows = mask[test, 1]
    err_single = np.abs(_predict(single, x[test])["gap_hse"].numpy() - y[test, 1])[rows].mean()
    err_diff = np.abs(_predict(diff, x[test], y[test], mask[test])["gap_hse"].numpy() - y[test, 1])[rows].mean()
    assert err_diff < 0.5 * err_single
    assert history["val_mae"]["gap_hse"] < 0.5 * _fitted(data, task="gap_hse")[1]["val_mae"]["gap_hse"]


def test_chain_arithmetic_high_is_known_low_plus_delta_else_predicted_low(data):
    x, y, mask, (_, _, test) = data
    mask = mask.copy()
    mask[test[::2], 0] = False  # half the test rows without a known PBE gap
    diff, _ = _fitted(data, chain=["gap_pbe", "gap_hse"], use_known_low=True, n_estimators=60)
    batch = Rows(y[test], mask[test])
    enc = EncoderOutput(node_emb=None, graph_emb=torch.as_tensor(x[test]))
    with torch.no_grad():
        out, delta = diff(enc, batch), diff.extras(enc, batch)["delta_gap_hse"]
        low_pred = diff.forests["low"](torch.as_tensor(x[test])).float()
    known = torch.as_tensor(mask[test, 0])
    low_used = torch.where(known, torch.as_tensor(y[test, 0], dtype=torch.float32), low_pred)
    torch.testing.assert_close(out["gap_hse"], low_used + delta, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["gap_pbe"], low_pred, atol=1e-6, rtol=0)
    # the delta trees take the low value as their last feature: a different known low changes delta
    shifted = Rows(y[test] + np.array([2.0, 0.0, 0.0]), mask[test])
    with torch.no_grad():
        moved = diff.extras(enc, shifted)["delta_gap_hse"]
    assert diff.forests["delta"].num_features == x.shape[1] + 1
    assert not torch.equal(moved[known], delta[known]) and torch.equal(moved[~known], delta[~known])
    assert diff.reads_known() == ["gap_pbe"]  # what Predictor checks before saying known values are ignored


def test_structure_only_chain_conditioned_on_the_predicted_low(data):
    """condition_on_low without known values: Δ reads the low trees' own prediction (training and prediction)."""
    x, y, mask, (_, _, test) = data
    plain, _ = _fitted(data, chain=["gap_pbe", "gap_hse"], n_estimators=60)
    cond, _ = _fitted(data, chain=["gap_pbe", "gap_hse"], condition_on_low=True, n_estimators=60)
    assert plain.forests["delta"].num_features == x.shape[1]
    assert cond.forests["delta"].num_features == x.shape[1] + 1
    enc = EncoderOutput(node_emb=None, graph_emb=torch.as_tensor(x[test]))
    with torch.no_grad():
        out, delta = cond(enc, Rows(y[test], mask[test])), cond.extras(enc, None)["delta_gap_hse"]
        low_pred = cond.forests["low"](torch.as_tensor(x[test])).float()
        direct = cond.forests["delta"](torch.cat([torch.as_tensor(x[test]), low_pred.double()[:, None]], 1))
    torch.testing.assert_close(out["gap_hse"], low_pred + delta, atol=1e-5, rtol=0)  # known values unused
    torch.testing.assert_close(delta, direct.float(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="condition_on_low applies to chain mode"):
        _fitted(data, task="gap_hse", condition_on_low=True)


def test_delta_line_fits_the_scaling_between_fidelities_and_helps_with_few_labels(data):
    """delta_line: Δ = α + β·low + trees; α, β are the least-squares line of (HSE − PBE) on the known PBE gap of the
    rows with both labels, stored in the state_dict; with 30 HSE labels the line beats Δ trees alone."""
    x, y, mask, (train, val, test) = data
    both = train[mask[train, :2].all(1)]
    head, _ = _fitted(data, chain=["gap_pbe", "gap_hse"], use_known_low=True, delta_line=True)
    beta, alpha = np.polyfit(y[both, 0], y[both, 1] - y[both, 0], 1)
    np.testing.assert_allclose(head.line.numpy(), [alpha, beta], rtol=1e-9)
    assert beta > 0  # HSE gaps open up faster than PBE ones: (1 + β) > 1
    enc = EncoderOutput(node_emb=None, graph_emb=torch.as_tensor(x[test]))
    batch = Rows(y[test], mask[test])
    known = torch.as_tensor(y[test, 0])
    with torch.no_grad():  # Δ's trees read the known low value too (use_known_low conditions on it)
        out = head(enc, batch)
        trees = head.forests["delta"](torch.cat([torch.as_tensor(x[test]).double(), known[:, None]], 1))
    torch.testing.assert_close(out["gap_hse"].double(), known + alpha + beta * known + trees, atol=1e-4, rtol=0)
    fresh = build_head("tree", x.shape[1], TASKS, chain=["gap_pbe", "gap_hse"], use_known_low=True, delta_line=True)
    fresh.load_state_dict(head.state_dict())  # the line travels in the checkpoint
    assert torch.equal(fresh.line, head.line)
    assert "line" not in _fitted(data, chain=["gap_pbe", "gap_hse"], n_estimators=20)[0].state_dict()
    # few high-fidelity labels: keep 30 of the HSE labels
    few = mask.copy()
    few[np.setdiff1d(train, both[:30]), 1] = False
    errors = {}
    for line in (False, True):
        h = build_head("tree", x.shape[1], TASKS, **FAST, chain=["gap_pbe", "gap_hse"], use_known_low=True,
                       delta_line=line)
        h.fit_arrays(x[train], y[train], few[train], x[val], y[val], mask[val])
        rows = mask[test, 1]
        errors[line] = np.abs(_predict(h, x[test], y[test], mask[test])["gap_hse"].numpy() - y[test, 1])[rows].mean()
    assert errors[True] < errors[False]
    with pytest.raises(ValueError, match="delta_line applies to chain mode"):
        _fitted(data, task="gap_hse", delta_line=True)


def test_a_dense_task_with_few_validation_labels_early_stops_on_a_tenth_of_its_training_rows(data, monkeypatch):
    """The low fidelity's validation labels come from the scarce task's crystals (5 at N = 50 in the benchmark):
    its booster then stops on a fixed tenth of its own training rows; Δ keeps the validation rows."""
    import tlgnn.models.heads.tree as tree

    monkeypatch.setattr(tree, "MIN_STOPPING_ROWS", 20)  # the sample has 250 training rows, not 1,000
    x, y, mask, (train, val, test) = data
    few = val[:5]
    head = build_head("tree", x.shape[1], TASKS, **FAST, chain=["gap_pbe", "gap_hse"])
    history = head.fit_arrays(x[train], y[train], mask[train], x[few], y[few], mask[few])
    assert history["n_train"]["gap_pbe"] == 225 and history["n_val"]["gap_pbe"] == 25
    assert history["n_val"]["delta_gap_hse"] == int(mask[few, :2].all(1).sum())
    again = build_head("tree", x.shape[1], TASKS, **FAST, chain=["gap_pbe", "gap_hse"])
    again.fit_arrays(x[train], y[train], mask[train], x[few], y[few], mask[few])
    torch.testing.assert_close(_predict(again, x[test])["gap_pbe"], _predict(head, x[test])["gap_pbe"])
    full = build_head("tree", x.shape[1], TASKS, **FAST, chain=["gap_pbe", "gap_hse"])
    assert full.fit_arrays(x[train], y[train], mask[train], x[val], y[val], mask[val])["n_val"]["gap_pbe"] == 70


def test_a_two_class_task_gets_a_logistic_booster_whose_logits_are_zero_and_z(data):
    """Metal (PBE gap 0) or not from composition, on the real sample: the head's logits are [0, z] with σ(z) equal to
    LightGBM's own probability, and they rank the test crystals well."""
    from sklearn.metrics import roc_auc_score

    x, y, mask, (train, val, test) = data
    y, mask = y.copy(), mask.copy()
    y[:, 2], mask[:, 2] = (y[:, 0] > 0).astype(float), True  # class 1: a PBE gap above 0 eV
    head = build_head("tree", x.shape[1], TASKS, **FAST, task="is_metal")
    history = head.fit_arrays(x[train], y[train], mask[train], x[val], y[val], mask[val])
    logits = _predict(head, x[test])["is_metal"]
    assert logits.shape == (len(test), 2) and torch.equal(logits[:, 0], torch.zeros(len(test)))
    prob = torch.softmax(logits.double(), 1)[:, 1].numpy()
    np.testing.assert_allclose(prob, head.boosters["main"].predict(x[test], num_iteration=history["best_iteration"]
                                                                   ["is_metal"]), atol=1e-5)
    assert roc_auc_score(y[test, 2], prob) > 0.75  # far above chance (0.5) from 250 compositions (measured 0.84)
    assert 0 < history["val_mae"]["is_metal"] < 0.5  # mean |P(class 1) − label|
    three = [*TASKS[:2], TaskSpec("kind", kind="classification", classes=["a", "b", "c"])]
    with pytest.raises(ValueError, match="has 3 classes"):
        build_head("tree", x.shape[1], three, task="kind")


def test_tree_head_on_real_graph_embeddings_inside_a_transfer_model():
    tasks = TASKS[:2]
    batch = labelled_batch(tasks, n=10, present=0.8)
    torch.manual_seed(0)
    encoder = build_encoder("cgcnn", hidden_channels=16, num_layers=2, out_channels=24)
    head = build_head("tree", encoder.out_dim, tasks, chain=["gap_pbe", "gap_hse"], n_estimators=20,
                      min_child_samples=2, n_jobs=1)
    model = TransferModel(encoder, head).eval()
    assert list(head.parameters()) == []
    with torch.no_grad():
        x = head.tree_inputs(model.encode(batch), batch)
    assert x.shape == (10, encoder.out_dim)
    history = head.fit_arrays(x.numpy(), batch.y.numpy(), batch.y_mask.numpy())
    assert history["best_iteration"] == {"gap_pbe": 20, "delta_gap_hse": 20}  # no validation rows: every round
    assert history["val_mae"] == {"gap_pbe": None, "gap_hse": None}
    with torch.no_grad():
        preds = model(batch)
    assert preds.keys() == {"gap_pbe", "gap_hse"} and all(torch.isfinite(v).all() for v in preds.values())


@pytest.mark.parametrize("option, value, message", [
    ("n_estimators", 0, "n_estimators must be >= 1"),
    ("n_estimators", 2.5, "n_estimators must be an integer"),
    ("learning_rate", 0.0, "learning_rate must be in"),
    ("num_leaves", 1, "num_leaves must be in 2..131072"),
    ("max_depth", 0, "max_depth must be -1"),
    ("min_child_samples", True, "min_child_samples must be an integer"),
    ("subsample", 1.5, "subsample must be in"),
    ("colsample", float("nan"), "colsample must be a finite number"),
    ("reg_lambda", -1.0, "reg_lambda must be in"),
    ("early_stopping_rounds", -1, "early_stopping_rounds must be >= 0"),
    ("objective", "poisson", "objective must be one of"),
    ("n_jobs", -1, "n_jobs must be >= 0"),
    ("seed", "x", "seed must be an integer"),
    ("task", "gap_hsee", "unknown task 'gap_hsee'"),
    ("chain", ["gap_pbe"], "chain must be two different task names"),
    ("chain", ["gap_pbe", "gap_pbe"], "chain must be two different task names"),
    ("use_known_low", True, "use_known_low applies to chain mode only"),
    ("weighting", "uncertainty", "weighting"),
    ("num_leafs", 8, "num_leaves"),
])
def test_options_are_validated_naming_the_option(option, value, message):
    options = {"task": "gap_hse", option: value}
    if option == "chain":
        options.pop("task")
    with pytest.raises(ValueError, match=message):
        build_head("tree", 8, TASKS, **options)


def test_mode_and_array_errors():
    with pytest.raises(ValueError, match="not both"):
        build_head("tree", 8, TASKS, task="gap_hse", chain=["gap_pbe", "gap_hse"])
    with pytest.raises(ValueError, match="option task .or chain. is required"):
        build_head("tree", 8, TASKS)
    head = build_head("tree", 8, TASKS[:1], n_estimators=5)
    assert head.outputs == ["gap_pbe"] and head.fits_directly
    assert not build_head("single", 8, TASKS, task="gap_pbe").fits_directly
    with pytest.raises(ValueError, match=r"y and mask \[n, 1\]"):
        head.fit_arrays(np.zeros((4, 8)), np.zeros((4, 2)), np.ones((4, 2), bool))
    with pytest.raises(ValueError, match="no training rows"):
        head.fit_arrays(np.zeros((4, 8)), np.zeros((4, 1)), np.zeros((4, 1), bool))
    head.fit_arrays(np.arange(32.0).reshape(4, 8), np.arange(4.0)[:, None], np.ones((4, 1), bool))
    with pytest.raises(ValueError, match="grown on 8 features"):
        _predict(head, np.zeros((3, 5), np.float32))
