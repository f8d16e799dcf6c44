"""The simulated sequential-learning campaign on real labels: the 240 HSE-labelled crystals of
data/benchmark_sample, composition features only, a short campaign (20 initial, 5 per round, 4 rounds)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml

from support.paths import ROOT
from tlgnn.baselines.composition import featurize
from tlgnn.benchmark.campaign import (CampaignConfig, campaign_figure, exceed_threshold, fit_round_model,
                                      fold_pool_rows, initial_rows, predict, run_campaign, speedup,
                                      stored_embeddings, summarize, top_mask)
from tlgnn.benchmark.config import load_experiment
from tlgnn.benchmark.runner import prepare
from tlgnn.models.boosting import BoosterOptions

SAMPLE = ROOT / "data" / "benchmark_sample"
#: Seed of the short campaign. Over seeds 0-9 of this setting, mean / ucb / exceed / random found 55 / 57 / 59 / 10
#: top crystals beyond the initial ones in all; ucb beat random at every seed but 2 (0 vs 1 found).
SEED = 1
SHORT = CampaignConfig(initial=20, batch=5, rounds=4, members=3, seeds=(SEED,),
                       booster=BoosterOptions(n_estimators=50, min_child_samples=5, n_jobs=1))


@pytest.fixture(scope="module")
def pool() -> tuple[np.ndarray, np.ndarray]:
    """Composition features [240, f] and HSE gaps [240] (eV)."""
    frame = pd.read_csv(SAMPLE / "labels.csv.gz")
    frame = frame[frame.gap_hse.notna()].reset_index(drop=True)
    return featurize(frame.formula_sum.tolist()), frame.gap_hse.to_numpy(dtype=np.float64)


@pytest.fixture(scope="module")
def campaign(pool) -> dict:
    x, y = pool
    return run_campaign(x, y, SHORT, SEED)


def test_every_acquisition_labels_distinct_crystals_from_a_shared_initial_set(pool, campaign):
    x, y = pool
    top = top_mask(y, SHORT.top_fraction)
    assert campaign["n_top"] == top.sum() == 12 and campaign["top_threshold"] == y[top].min()
    assert campaign["initial"] == initial_rows(len(y), 20, SEED).tolist()
    assert set(campaign["acquisitions"]) == set(SHORT.acquisitions)
    for name, run in campaign["acquisitions"].items():
        acquired = run["acquired"]
        assert len(acquired) == len(set(acquired)) == 20 + 5 * 4, name
        assert sorted(acquired[:20]) == campaign["initial"], name
        assert len(run["found"]) == 5 and run["found"][-1] == top[acquired].sum()
        assert np.all(np.diff(run["found"]) >= 0)
        assert run["found"][0] == top[campaign["initial"]].sum()
        assert (run["val_mae"][0] is None) == (name == "random")


def test_mean_and_ucb_find_more_top_crystals_than_random(campaign):
    found = {name: run["found"][-1] for name, run in campaign["acquisitions"].items()}
    assert found["mean"] > found["random"] and found["ucb"] > found["random"], found
    summary = summarize([campaign], SHORT)
    assert summary["labelled"] == [20, 25, 30, 35, 40]
    assert summary["speedup"]["ucb"]["final_ratio"] > 1.0
    assert summary["curves"]["ucb"]["mean"] == [float(v) for v in campaign["acquisitions"]["ucb"]["found"]]


def test_hidden_labels_never_enter_the_choice(pool, campaign):
    """Garbage in every label the campaign never acquired changes no choice (only the counting of top crystals)."""
    x, y = pool
    config = replace(SHORT, acquisitions=("exceed", "ucb"))
    acquired = set(campaign["acquisitions"]["exceed"]["acquired"]) | set(campaign["acquisitions"]["ucb"]["acquired"])
    hidden = np.setdiff1d(np.arange(len(y)), sorted(acquired))
    garbage = y.copy()
    garbage[hidden] = np.random.default_rng(0).uniform(-50.0, 50.0, len(hidden))
    again = run_campaign(x, garbage, config, SEED)
    for name in config.acquisitions:
        assert again["acquisitions"][name]["acquired"] == campaign["acquisitions"][name]["acquired"], name
    labelled = np.asarray(campaign["initial"])
    assert exceed_threshold(y[labelled], SHORT) == np.quantile(y[labelled], 0.95)


def test_round_model_is_a_calibrated_ensemble_with_an_error_model(pool):
    x, y = pool
    rows = initial_rows(len(y), 80, 0)
    train, val = rows[8:], rows[:8]
    head, facts = fit_round_model(x[train], y[train], train, x[val], y[val], SHORT)
    assert head.k == 3 and facts["error_model"] and facts["val_mae"] < np.abs(y[val] - y[train].mean()).mean() + 1
    assert facts["calibration"]["scale"] > 0 and facts["calibration"]["error_scale"] > 0
    mean, std = predict(head, x[:30], SHORT.task)
    assert mean.shape == std.shape == (30,) and np.all(std > 0) and np.isfinite(mean).all()


def test_speedup_counts_rounds_to_random_final_count(tmp_path):
    random_curve = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    ucb = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    got = speedup(ucb, random_curve, batch=10)
    assert got["rounds"] == 5 and got["rounds_random"] == 10 and got["speedup"] == 2.0 and got["final_ratio"] == 2.0
    assert got["acquired"] == 50 and got["acquired_random"] == 100
    assert speedup([0, 1, 1], [0, 1, 2], batch=10)["speedup"] is None  # never reaches random's count
    runs = [{"n_top": 10, "acquisitions": {"random": {"found": c}, "ucb": {"found": u}}}
            for c, u in (([0, 1, 2], [0, 2, 5]), ([1, 1, 3], [1, 3, 6]))]
    config = CampaignConfig(initial=20, batch=5, rounds=2, acquisitions=("random", "ucb"))
    summary = summarize(runs, config)
    assert summary["curves"]["ucb"]["mean"] == [0.5, 2.5, 5.5] and summary["curves"]["ucb"]["min"] == [0, 2, 5]
    assert summary["ideal"] == [0.5, 5.5, 10.0]
    assert summary["speedup"]["ucb"]["rounds"] == 1 and summary["speedup"]["ucb"]["per_seed"] == [2.0, 2.0]
    path = campaign_figure(summary, tmp_path / "campaign.png", "test")
    assert path.stat().st_size > 1000


def test_pool_is_the_labelled_training_part_and_embeddings_are_never_computed(tmp_path):
    raw = {"name": "hse_sample", "data": {"path": str(SAMPLE)}, "target": "gap_hse", "low": "band_gap_pbe",
           "folds": {"n_folds": 3, "seed": 0}, "train_sizes": ["all"], "models": [{"kind": "affine"}]}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    experiment = load_experiment(tmp_path / "exp.yaml")
    data = prepare(experiment)
    rows = fold_pool_rows(experiment, data, 1)
    assert data.has_target[rows].all() and np.all(data.folds[rows] != 1)
    assert len(rows) == int((data.has_target & (data.folds != 1)).sum())
    with pytest.raises(ValueError, match="fold"):
        fold_pool_rows(experiment, data, 3)
    from tlgnn.embeddings.structures import encoder_by_name

    frozen = encoder_by_name("cgcnn", {"atom_fea_len": 8, "n_conv": 1, "h_fea_len": 8})
    with pytest.raises(LookupError, match="does not compute"):
        stored_embeddings(frozen, ["key-a", "key-b"], tmp_path / "embeddings")
