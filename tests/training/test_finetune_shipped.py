"""The shipped pretrained encoder (data/pretrained/): loads, predicts sensible values, fine-tunes via ``tlgnn fit``.

Structures: the shipped COD sample (data/structures/cif/cgcnn_cod_sample, see data/structures/README.md) and the
Materials Project sample data/mp_sample (see its README). The mp_sample crystals that have an HSE06 gap were
excluded from pretraining (scripts/pretrain.py), so their PBE gaps and formation energies are unseen labels.
"""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from support.paths import ROOT
import tlgnn
from tlgnn.training.config import load_run_config
from tlgnn.training.checkpoint import checkpoint_info, read_pretrained

CKPT = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"
COD = ROOT / "data" / "structures" / "cif" / "cgcnn_cod_sample"
SAMPLE = ROOT / "data" / "mp_sample"


@pytest.fixture(scope="module")
def model():
    return tlgnn.load_model(CKPT)


def _unseen_mp_crystals(n: int = 60):
    """``n`` mp_sample crystals with an HSE gap (never in pretraining), their PBE gaps and formation energies."""
    from pymatgen.core import Structure

    hse = json.load(gzip.open(SAMPLE / "sources" / "megnet_multifidelity_gaps.json.gz", "rt"))["hse"]
    labels = pd.read_csv(SAMPLE / "labels.csv.gz")
    labels = labels[labels["material_id"].isin(set(hse))].head(n)
    wanted = set(labels["material_id"])
    cifs = {}
    with gzip.open(SAMPLE / "structures.jsonl.gz", "rt") as handle:
        for line in handle:
            rec = json.loads(line)
            if rec["material_id"] in wanted:
                cifs[rec["material_id"]] = rec["cif"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(cifs[m], fmt="cif") for m in labels["material_id"]]
    return structures, labels


def test_shipped_checkpoint_is_small_and_described():
    assert CKPT.is_file() and CKPT.stat().st_size < 5_000_000
    info = checkpoint_info(CKPT)
    assert info["kind"] == "tlgnn-pretrained" and info["tasks"] == ["gap_pbe_mp", "e_form_mp"]
    # leakage control recorded: every crystal with a scored high-fidelity label was excluded
    data = info["data"]
    assert data["limit"] is None and data["used"] + data["excluded"] == data["rows_in_source"] == 30125
    assert data["excluded_by"]["gap_hse"] == 3500 and data["excluded_by"]["gap_gllbsc"] == 1597
    assert data["used"] > 20000
    assert (ROOT / "data" / "pretrained" / "MODEL_CARD.md").read_text().count(CKPT.name) >= 1


def test_predict_and_embed_accept_structures_atoms_and_files(model):
    from ase import Atoms
    from pymatgen.core import Structure

    path = sorted(COD.glob("*.cif"))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_file(path)
    atoms = Atoms(numbers=[site.specie.Z for site in structure], positions=structure.cart_coords,
                  cell=structure.lattice.matrix, pbc=True)
    frame = model.predict([structure, atoms, str(path)])
    assert len(frame) == 3 and {"gap_pbe_mp", "e_form_mp"} <= set(frame.columns)
    values = frame[["gap_pbe_mp", "e_form_mp"]].to_numpy()
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values[0], values[1], atol=1e-4)  # the same crystal, three input types
    np.testing.assert_allclose(values[0], values[2], atol=1e-4)
    emb = model.embed([structure, str(path)])
    assert emb.shape == (2, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-4)


def test_predictions_beat_the_mean_on_unseen_crystals(model):
    structures, labels = _unseen_mp_crystals()
    frame = model.predict(structures)
    assert len(frame) == len(labels)
    mean = model.metadata["target_stats"]["mean"]
    for task, column, ratio in (("gap_pbe_mp", "band_gap_pbe", 0.8), ("e_form_mp", "formation_energy_per_atom", 0.6)):
        truth = labels[column].to_numpy()
        mae = np.abs(frame[task].to_numpy() - truth).mean()
        baseline = np.abs(mean[task] - truth).mean()
        assert mae < ratio * baseline, (task, mae, baseline)


def test_fit_fine_tunes_from_the_shipped_encoder(tmp_path):
    """``tlgnn fit`` with configs/finetune_hse.yaml (frozen encoder): the encoder stays the shipped one exactly."""
    from tlgnn.training.checkpoint import load_module
    from tlgnn.training.run import fit

    config = load_run_config(ROOT / "configs" / "finetune_hse.yaml", [
        "model.finetune.freeze=encoder", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false", f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'run'}",
    ])
    result = fit(config)
    tuned = load_module(result.best_checkpoint)
    shipped = read_pretrained(CKPT)
    for name, value in tuned.model.encoder.state_dict().items():
        torch.testing.assert_close(value, shipped.encoder_state[name], rtol=0, atol=0)
    assert set(result.test.scores) == {"gap_hse"} and np.isfinite(result.test.scores["gap_hse"]["mae"])
