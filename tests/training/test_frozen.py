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
