"""``tlgnn embed``: Parquet of embeddings equal to the checkpoint's own, bad files reported, the cache reused."""

from __future__ import annotations

import numpy as np
import pytest
import pandas as pd

from tlgnn.cli.main import main

from support.paths import ROOT

CKPT = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"
CIFS = ROOT / "data" / "structures" / "cif"


def test_embed_writes_the_checkpoint_embeddings_and_reports_bad_files(tmp_path, capsys):
    from tlgnn.training.predict import Predictor

    out = tmp_path / "emb.parquet"
    args = ["embed", "--checkpoint", str(CKPT), "--input", str(CIFS), "--recursive", "--output", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]
    assert main(args) == 0
    frame = pd.read_parquet(out)
    ids, expected = Predictor.from_checkpoint(CKPT).embed(sorted(CIFS.rglob("*.cif")), return_ids=True)
    by_id = frame.set_index("id")
    assert len(frame) == 16 and frame.shape[1] == 2 + expected.shape[1]
    # Predictor ids are file stems, embed ids are paths relative to the input folder
    stems = [i.split("/")[-1] for i in by_id.index]
    ours = by_id.to_numpy()[:, 1:].astype(np.float32)
    order = [stems.index(i) for i in ids]
    np.testing.assert_allclose(ours[order], expected, rtol=1e-5, atol=1e-5)
    errors = (tmp_path / "emb.parquet.errors.txt").read_text()
    assert "bad_superflat_inf_loop.cif" in errors and "partial occupancy" in errors
    capsys.readouterr()
    assert main(args) == 0  # again: everything from the cache, one shard
    assert "16/16 from the cache" in capsys.readouterr().err
    assert len(list((tmp_path / "cache" / "embeddings").glob("*/shard-*.npz"))) == 1


def test_embed_option_needs_an_encoder_name(tmp_path, capsys):
    args = ["embed", "--checkpoint", str(CKPT), "--option", "pooling=blocks", "--input", str(CIFS),
            "--output", str(tmp_path / "x.parquet")]
    assert main(args) == 2
    assert "--option applies to --encoder only" in capsys.readouterr().err


def test_embed_an_aligned_table(tmp_path):
    """``--table``: every material of an aligned table, ids from ``material_id``, the same vectors as the
    checkpoint's own ``embed`` on those structures."""
    from tlgnn.data import MaterialTable
    from tlgnn.training.predict import Predictor

    aligned = tmp_path / "aligned"
    assert main(["align", "--config", str(ROOT / "configs" / "data" / "mp_sample.yaml"), "--out", str(aligned)]) == 0
    out = tmp_path / "table.parquet"
    assert main(["embed", "--checkpoint", str(CKPT), "--table", str(aligned), "--output", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    frame = pd.read_parquet(out)
    table = MaterialTable.load(aligned)
    assert frame["id"].tolist() == table.frame["material_id"].tolist()
    assert frame["structure_key"].tolist() == table.frame["structure_key"].tolist()
    rows = [0, 7, 123]
    expected = Predictor.from_checkpoint(CKPT).embed([table.structure(i) for i in rows])
    np.testing.assert_allclose(frame.iloc[rows, 2:].to_numpy(np.float32), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--encoder", "chgnett"], "--encoder: unknown encoder 'chgnett' (did you mean 'chgnet'"),
    (["--encoder", "chgnet", "--option", "pooling=maxx"], "--encoder/--option: chgnet pooling must be one of"),
])
def test_a_bad_encoder_or_option_is_one_config_error_line(tmp_path, capsys, extra, message):
    out = tmp_path / "x.parquet"
    assert main(["embed", *extra, "--input", str(CIFS), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not out.exists()
