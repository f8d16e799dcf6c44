"""GNN model kinds of the transfer benchmark on real crystals (data/mp_sample): the cell contract, no test row in
training, and the difference head using the given PBE gap in the low-fidelity-known regime."""

from __future__ import annotations

import gzip
import json
import shutil
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from support.paths import ROOT
from tlgnn.benchmark.config import load_experiment
from tlgnn.benchmark.runner import cell_rows, prepare, run_experiment

MP_SAMPLE = ROOT / "data" / "mp_sample"
FAST = {"low_rows": 60, "epochs": 2, "min_steps": 1, "max_epochs": 2, "patience": 2, "batch_size": 32,
        "encoder": {"name": "cgcnn", "hidden_channels": 16, "num_layers": 1, "out_channels": 16}, "hidden": [16]}


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory) -> Path:
    """The shared data's raw layout (labels.csv.gz + structures.jsonl.gz) built from the shipped mp_sample:
    MP PBE gaps of source A joined with the HSE gaps of source B on material_id."""
    folder = tmp_path_factory.mktemp("mp_raw")
    labels = pd.read_csv(MP_SAMPLE / "labels.csv.gz")
    with gzip.open(MP_SAMPLE / "sources" / "megnet_multifidelity_gaps.json.gz", "rt") as handle:
        hse = json.load(handle)["hse"]
    labels["gap_hse"] = labels["material_id"].map(hse)
    formulas = {}
    with gzip.open(MP_SAMPLE / "structures.jsonl.gz", "rt") as handle:
        for line in handle:
            record = json.loads(line)
            block = next(l for l in record["cif"].splitlines() if l.startswith("_chemical_formula_sum"))
            formulas[record["material_id"]] = block.split(None, 1)[1].strip().strip("'")
    labels["formula_sum"] = labels["material_id"].map(formulas)
    labels.to_csv(folder / "labels.csv.gz", index=False)
    shutil.copy(MP_SAMPLE / "structures.jsonl.gz", folder / "structures.jsonl.gz")
    return folder


@pytest.fixture(scope="module")
def experiment(raw_folder, tmp_path_factory):
    options = {**FAST, "cache_dir": str(tmp_path_factory.mktemp("cache"))}
    raw = {
        "name": "hse_gnn_sample",
        "data": {"path": str(raw_folder)},
        "target": "gap_hse",
        "low": "band_gap_pbe",
        "folds": {"n_folds": 3, "seed": 0},
        "train_sizes": ["all"],
        "models": [
            {"kind": "gnn_single", "options": options},
            {"kind": "gnn_difference", "regime": "low_fidelity_known", "options": options},
            {"kind": "gnn_elv", "options": options},
            {"kind": "gnn_elv", "name": "gnn_elv_paired", "options": {**options, "elv_shift_stats": "paired"}},
        ],
    }
    path = tmp_path_factory.mktemp("cfg") / "hse_gnn_sample.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_experiment(path)


@pytest.fixture(scope="module")
def results(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    cwd = os.getcwd()
    os.chdir(out.parent)  # a relative results folder (as `--results results` gives): the runs' cwd differs
    try:
        summary = run_experiment(experiment, Path(out.name), only=["*/*/fold1_*"], keep_going=False,
                                 log=lambda m: None)
    finally:
        os.chdir(cwd)
    assert len(summary.ran) == 4 and not summary.failed
    return out


def _cell(results: Path, model: str) -> tuple[dict, pd.DataFrame, dict]:
    base = results / "hse_gnn_sample" / model
    record = json.loads((base / "fold1_nall_s0.json").read_text())
    predictions = pd.read_csv(base / "fold1_nall_s0.predictions.csv")
    split = json.loads((base / "work" / "fold1_nall_s0" / "split.json").read_text())
    return record, predictions, split


@pytest.mark.parametrize("model", ["gnn_single", "gnn_difference_lowknown", "gnn_elv"])
def test_predicts_exactly_the_test_rows_and_never_trains_on_them(experiment, results, model):
    data = prepare(experiment)
    train, train_target, test = cell_rows(experiment, data, fold=1, size="all", seed=0)
    test_ids = set(data.frame["id"].to_numpy()[test])
    record, predictions, split = _cell(results, model)
    assert list(predictions["id"]) == list(data.frame["id"].to_numpy()[test])
    assert np.isfinite(predictions["y_pred"]).all() and record["n_test"] == len(test)
    assert split["test"] == list(predictions["id"])
    seen = set(split["train"]) | set(split["val"])
    assert not seen & test_ids
    assert seen <= set(data.frame["id"].to_numpy()[train])
    assert record["info"]["n_train_rows"] == len(split["train"])


def test_difference_with_known_low_builds_on_the_given_pbe_gap(results):
    _, predictions, _ = _cell(results, "gnn_difference_lowknown")
    np.testing.assert_allclose(predictions["low_used"], predictions["low_true"], atol=1e-4)
    np.testing.assert_allclose(predictions["y_pred"] - predictions["low_true"], predictions["delta_pred"], atol=1e-4)
    assert "low_pred" not in predictions  # the correction metric belongs to the structure-only regime


def test_structure_only_models_report_their_own_pbe_prediction(results):
    single, single_pred, _ = _cell(results, "gnn_single")
    elv, elv_pred, _ = _cell(results, "gnn_elv")
    assert "correction_mae" in single["metrics"] and "correction_mae" in elv["metrics"]
    assert not np.allclose(single_pred["low_pred"], single_pred["low_true"])  # predicted, not given
    # ELV: HSE = PBE latent + softplus(shift) >= PBE latent
    assert (elv_pred["y_pred"] - elv_pred["low_pred"] > 0).all()
    np.testing.assert_allclose(elv_pred["delta_pred"], elv_pred["y_pred"] - elv_pred["low_pred"], atol=1e-4)
    assert elv["info"]["head"] == "elv" and elv["info"]["tasks"] == ["band_gap_pbe", "gap_hse"]


def test_head_extras_become_the_cells_columns(results):
    """The ELV head's latent that is no task comes through ``Head.extras`` as its own column (HSE = PBE +
    softplus(shift)); the difference head's Δ as ``delta_pred``; no other made-up columns."""
    _, elv_pred, _ = _cell(results, "gnn_elv")
    assert "latent_shift" in elv_pred and "latent_band_gap_pbe" not in elv_pred  # a latent named like a task
    np.testing.assert_allclose(np.logaddexp(0.0, elv_pred["latent_shift"]), elv_pred["delta_pred"], atol=1e-4)
    _, diff_pred, _ = _cell(results, "gnn_difference_lowknown")
    assert not [c for c in diff_pred.columns if "__" in c or ":" in c]


def test_elv_paired_shift_stats_come_from_the_training_rows_with_both_labels(experiment, results):
    from tlgnn.benchmark.gnn import paired_shift_stats
    from tlgnn.benchmark.models import CellInput

    data = prepare(experiment)
    frame = data.frame
    _, _, split = _cell(results, "gnn_elv_paired")
    train = np.flatnonzero(frame["id"].isin(split["train"]).to_numpy())
    delta = (frame["gap_hse"] - frame["band_gap_pbe"]).to_numpy()[train]
    delta = delta[np.isfinite(delta)]
    assert 10 <= len(delta) < len(train)  # some training rows have no HSE label: they must not count
    model = experiment.models[3]
    cell = CellInput(experiment, model, frame, train, train, np.zeros(0, int), np.zeros(0), 1, "all", 0, False,
                     "", Path("."))
    mean, std = paired_shift_stats(cell, train)
    assert np.log1p(np.exp(mean)) == pytest.approx(max(delta.mean(), 0.01))  # softplus(mean latent) = mean Δ
    assert std == pytest.approx(delta.std())
    # the cell trained with exactly these statistics; the default ELV entry has none
    run = yaml.safe_load((results / "hse_gnn_sample" / "gnn_elv_paired" / "work" / "fold1_nall_s0" / "run"
                          / "config.yaml").read_text())
    assert run["model"]["head"]["latent_stats"]["shift"] == pytest.approx([mean, std])
    default = yaml.safe_load((results / "hse_gnn_sample" / "gnn_elv" / "work" / "fold1_nall_s0" / "run"
                              / "config.yaml").read_text())
    assert "latent_stats" not in default["model"]["head"]


def test_gnn_options_are_validated_with_the_model_name(experiment, tmp_path):
    from tlgnn.benchmark.gnn import gnn_options
    from tlgnn.benchmark.models import CellInput
    from tlgnn.utils.config import ConfigError

    model = experiment.models[0]
    bad = type(model)(model.kind, model.name, model.regime, {"low_rows": -1})
    cell = CellInput(experiment, bad, pd.DataFrame(), np.zeros(0, int), np.zeros(0, int), np.zeros(0, int),
                     np.zeros(0), 0, "all", 0, False, "", tmp_path)
    with pytest.raises(ConfigError, match="low_rows"):
        gnn_options(cell)
    for options, message in (({"elv_shift_stats": "pairs"}, "elv_shift_stats.*'target' or 'paired'"),
                             ({"elv_shift_stats": "paired", "head": {"latents": ["a"]}}, "default ELV form")):
        cell.model = type(model)("gnn_elv", "gnn_elv", model.regime, options)
        with pytest.raises(ConfigError, match=message):
            gnn_options(cell)
