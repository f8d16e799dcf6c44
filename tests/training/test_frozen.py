"""A frozen encoder trains its head on cached embeddings: same results as running the encoder every batch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tlgnn.training.config import load_run_config
from tlgnn.training.run import fit

from support.paths import ROOT

CKPT = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"


def _config(tmp_path, name: str, *extra: str):
    return load_run_config(ROOT / "configs" / "finetune_hse.yaml", [
        "model.finetune.freeze=encoder", "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
        "trainer.early_stopping.patience=null", f"data.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path / name}", *extra,
    ])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frozen")
    cached = fit(_config(tmp, "cached"))
    direct = fit(_config(tmp, "direct", "model.cache_embeddings=false"))
    again = fit(_config(tmp, "again"))  # the embeddings now come from the cache
    return tmp, cached, direct, again


def test_the_head_trains_on_stored_embeddings_with_the_same_results(runs):
    tmp, cached, direct, again = runs
    shards = list((tmp / "cache" / "embeddings").glob("*/shard-*.npz"))
    assert len(shards) == 1  # computed once, by the first run, for every material of the table
    for a, b in ((cached, direct), (cached, again)):
        pa = pd.read_csv(a.test.predictions_path)
        pb = pd.read_csv(b.test.predictions_path)
        assert pa["material_id"].tolist() == pb["material_id"].tolist()
        np.testing.assert_allclose(pa["gap_hse"], pb["gap_hse"], rtol=1e-4, atol=1e-4)
    assert cached.test.scores["gap_hse"]["mae"] == pytest.approx(direct.test.scores["gap_hse"]["mae"], abs=1e-4)


def test_the_checkpoint_predicts_from_structures_alone(runs):
    """The checkpoint of a cached-embedding run holds the frozen encoder: predict runs encoder then head."""
    from tlgnn.data import TransferDataModule
    from tlgnn.training.predict import Predictor

    _, cached, _, _ = runs
    frame = pd.read_csv(cached.test.predictions_path).head(8)
    predictor = Predictor.from_checkpoint(cached.best_checkpoint)
    config = _config(cached.output_dir.parent, "cached")
    dm = TransferDataModule(config.data)
    dm.setup("test")
    rows = {mid: i for i, mid in enumerate(dm.table.frame["material_id"])}
    structures = [dm.table.structure(rows[mid]) for mid in frame["material_id"]]
    got = predictor.predict(structures)
    np.testing.assert_allclose(got["gap_hse"], frame["gap_hse"], rtol=1e-4, atol=1e-4)


def test_a_tree_head_is_fitted_on_stored_embeddings_and_predicts_from_structures(tmp_path):
    """The tree head is fitted in one go (no epochs) on the frozen encoder's stored embeddings plus composition;
    its checkpoint (trees as tensors) predicts new structures like the run's own test predictions."""
    from tlgnn.data import TransferDataModule
    from tlgnn.training.checkpoint import read_checkpoint
    from tlgnn.training.predict import Predictor

    config = _config(tmp_path, "tree", "model.head={name: tree, task: gap_hse, context: {composition: true}, "
                                       "n_estimators: 200, min_child_samples: 5}")
    result = fit(config)
    assert result.epochs == 0 and result.best_checkpoint.is_file()
    state = read_checkpoint(result.best_checkpoint)["state_dict"]
    assert any(k.startswith("model.head.forests.main.") and v.numel() > 1 for k, v in state.items())
    frame = pd.read_csv(result.test.predictions_path)
    assert result.test.scores["gap_hse"]["mae"] < 0.8 * result.test.scores["gap_hse"]["mae_of_mean"]
    dm = TransferDataModule(config.data)
    dm.setup("test")
    rows = {mid: i for i, mid in enumerate(dm.table.frame["material_id"])}
    structures = [dm.table.structure(rows[mid]) for mid in frame["material_id"].head(8)]
    got = Predictor.from_checkpoint(result.best_checkpoint).predict(structures)["gap_hse"].to_numpy()
    # the embedding of a structure read again differs from the stored one in the last float32 bits, and a tree's
    # threshold can fall in between: equal but for such a flip
    close = np.isclose(got, frame["gap_hse"].head(8).to_numpy(), rtol=1e-4, atol=1e-4)
    assert close.sum() >= 7 and np.abs(got - frame["gap_hse"].head(8).to_numpy()).max() < 0.1


def test_a_tree_head_needs_a_frozen_encoder(tmp_path):
    from tlgnn.utils.config import ConfigError

    config = _config(tmp_path, "tree_unfrozen", "model.head={name: tree, task: gap_hse}")
    config.model.finetune.freeze = "none"
    with pytest.raises(ConfigError, match="model.finetune.freeze"):
        fit(config)
