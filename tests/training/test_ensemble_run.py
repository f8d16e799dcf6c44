"""Ensembles trained on the one road (``tlgnn fit`` with ``model.ensemble``): one checkpoint, calibrated on the
validation split, with uncertainty columns in ``predict``/``test``, on the shipped real data (data/mp_sample: the
205 crystals with an HSE gap; the shipped pretrained CGCNN, frozen)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from support.paths import ROOT
from tlgnn.cli.main import main
from tlgnn.training.checkpoint import load_module, read_checkpoint
from tlgnn.training.config import load_run_config
from tlgnn.training.predict import Predictor
from tlgnn.training.run import fit

CIFS = ROOT / "data" / "structures" / "cif"
TREE = "{name: tree, task: gap_hse, context: {composition: true}, n_estimators: 300, min_child_samples: 5, n_jobs: 1}"


def _config(tmp_path, name: str, *extra: str, config: str = "finetune_hse.yaml", freeze: str = "encoder"):
    return load_run_config(ROOT / "configs" / config, [
        f"model.finetune.freeze={freeze}", "trainer.enable_progress_bar=false", f"data.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / name}", *extra,
    ])


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """5 bootstrapped tree heads on the frozen shipped CGCNN + composition, with the out-of-bag error model."""
    tmp = tmp_path_factory.mktemp("ensemble")
    return fit(_config(tmp, "trees", f"model.head={TREE}", "model.ensemble.members=5",
                       "model.ensemble.bootstrap=true"))


def test_an_ensemble_is_one_calibrated_checkpoint_with_uncertainty_columns(trees):
    state = read_checkpoint(trees.best_checkpoint)["state_dict"]
    assert sum(k.startswith("model.head.members.4.forests.main.") for k in state) > 0
    assert state["model.head.error_models.gap_hse.root"].numel() > 1  # the error model was fitted
    head = load_module(trees.best_checkpoint).model.head
    fitted = head.calibration_of("gap_hse")
    assert fitted["scale"] != 1.0 and fitted["constant_sigma"] > 0  # recalibrated on the validation split
    frame = pd.read_csv(trees.test.predictions_path)
    for column in ("gap_hse_std", "gap_hse_std_raw", "gap_hse_std_error", "gap_hse_lower", "gap_hse_upper"):
        assert column in frame and frame[column].notna().all()
    assert (frame.gap_hse_lower <= frame.gap_hse).all() and (frame.gap_hse <= frame.gap_hse_upper).all()
    assert (frame.gap_hse_lower >= 0).all()  # nonnegative task: the interval stays physical


def test_the_calibrated_interval_covers_unseen_crystals(trees):
    """41 test crystals never used in training or calibration: the 90 % interval covers 0.75..1.0 of them (a
    binomial 90 % share of 41 falls below 0.78 with probability < 3 %), the uncertainty ranks the errors, and it
    beats a constant σ in likelihood."""
    scores = trees.test.scores["gap_hse"]
    frame = pd.read_csv(trees.test.predictions_path)
    inside = (frame.gap_hse_true >= frame.gap_hse_lower) & (frame.gap_hse_true <= frame.gap_hse_upper)
    assert scores["coverage"] == pytest.approx(inside.mean())
    assert 0.75 <= scores["coverage"] <= 1.0
    assert scores["spearman"] > 0.4
    assert scores["nll"] < scores["nll_constant"]
    assert scores["mae"] <= scores["mae_single"] + 1e-6  # |mean error| <= mean |error| (Jensen): never worse
    assert (trees.output_dir / "calibration_gap_hse.png").stat().st_size > 0
    assert (trees.output_dir / "error_std_gap_hse.png").stat().st_size > 0


def test_the_checkpoint_alone_predicts_and_ranks_new_cifs(trees, tmp_path):
    predictor = Predictor.from_checkpoint(trees.best_checkpoint)
    assert predictor.is_ensemble
    frame = predictor.predict(sorted((CIFS / "cgcnn_cod_sample").glob("*.cif")))
    assert {"gap_hse_std", "gap_hse_lower", "gap_hse_upper"} <= set(frame.columns) and len(frame) > 5
    out = tmp_path / "next.csv"
    assert main(["rank", "--checkpoint", str(trees.best_checkpoint), "--input", str(CIFS / "cgcnn_cod_sample"),
                 "--acquisition", "ucb", "--kappa", "1.5", "--top", "4", "--output", str(out)]) == 0
    ranked = pd.read_csv(out, dtype={"id": str})
    expected = (frame.gap_hse + 1.5 * frame.gap_hse_std).sort_values(ascending=False, kind="stable")
    assert ranked["id"].tolist() == frame["id"][expected.index[:4]].tolist()
    assert ranked["rank"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(ranked["score"], expected.to_numpy()[:4], rtol=1e-5)


def test_rank_offers_every_acquisition_of_the_package():
    from tlgnn.cli.rank import CHOICES
    from tlgnn.uncertainty import ACQUISITIONS

    assert CHOICES == ACQUISITIONS


def test_rank_refuses_an_uncertainty_acquisition_for_a_single_model(tmp_path, capsys):
    single = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"
    out = tmp_path / "r.csv"
    args = ["rank", "--checkpoint", str(single), "--input", str(CIFS / "cgcnn_cod_sample"), "--output", str(out)]
    assert main([*args, "--acquisition", "ucb", "--task", "gap_pbe_mp"]) == 2
    assert "single model" in capsys.readouterr().err
    assert main([*args, "--acquisition", "exceed", "--task", "gap_pbe_mp"]) == 2
    assert "--threshold" in capsys.readouterr().err
    assert main([*args, "--acquisition", "mean"]) == 2  # two regression outputs: which one?
    assert "--task is needed" in capsys.readouterr().err
    assert main([*args, "--acquisition", "mean", "--task", "gap_pbe_mp", "--minimize"]) == 0
    ranked = pd.read_csv(out)
    assert ranked["gap_pbe_mp"].is_monotonic_increasing


def test_a_gradient_trained_ensemble_of_difference_heads_with_known_low_values(tmp_path):
    """The quick start's PBE -> HSE difference head, 3 bootstrapped members on the frozen shipped encoder, reading
    the known PBE gap: each member learns from its own rows, the spread is not zero, the calibration is in the
    checkpoint, and ``predict --known`` moves the HSE values with the PBE values given."""
    config = _config(tmp_path, "diff", f"model.init_from={ROOT / 'data' / 'pretrained' / 'cgcnn_mp_pbe_eform.ckpt'}",
                     "model.encoder={name: cgcnn, hidden_channels: 64, num_layers: 3, out_channels: 128}",
                     "model.head={name: difference, chain: [gap_pbe_mf, gap_hse], hidden: [32], use_known_low: true,"
                     " nonnegative: [gap_pbe_mf, gap_hse]}", "model.finetune.load_head=never",
                     "model.ensemble.members=3", "model.ensemble.bootstrap=true", "trainer.max_epochs=4",
                     "trainer.early_stopping.patience=null", config="quickstart.yaml")
    result = fit(config)
    scores = result.test.scores["gap_hse"]
    assert 0.0 < scores["mae_single"] and "coverage" in scores and "coverage" in result.test.scores["gap_pbe_mf"]
    frame = pd.read_csv(result.test.predictions_path)
    assert (frame.gap_hse_std_raw > 0).mean() > 0.5
    predictor = Predictor.from_checkpoint(result.best_checkpoint)
    files = sorted((CIFS / "cgcnn_cod_sample").glob("*.cif"))[:4]
    ids = [f"{f.stem}" for f in files]
    low = predictor.predict(files, known=pd.DataFrame({"id": ids, "gap_pbe_mf": [0.5] * 4}))
    high = predictor.predict(files, known=pd.DataFrame({"id": ids, "gap_pbe_mf": [3.0] * 4}))
    assert (high.gap_hse > low.gap_hse).all() and "gap_hse_std" in high


def test_an_end_to_end_ensemble_trains_separate_encoders(tmp_path):
    config = _config(tmp_path, "e2e", "model.ensemble.members=2", "trainer.max_epochs=1",
                     "trainer.early_stopping.patience=null", freeze="none")
    result = fit(config)
    module = load_module(result.best_checkpoint)
    first, second = module.model.encoder.members
    assert module.hparams["model"]["ensemble"]["shared_encoder"] is False
    # both started from the shipped weights and moved apart in training (their heads, seeds and steps differ)
    assert not all(np.allclose(a.detach(), b.detach()) for a, b in zip(first.parameters(), second.parameters()))
    assert "mae_single" in result.test.scores["gap_hse"]
