"""One option vocabulary for every encoder (hidden_channels, num_layers, out_channels); old names still read.

Real crystals (the COD sample of ``tests/support/structures.py``) and the shipped checkpoint
``data/pretrained/cgcnn_mp_pbe_eform.ckpt``, whose encoder spec records CGCNN's old names.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch_geometric.data import Batch

from support.paths import ROOT
from support.structures import graphs
from tlgnn.models import ENCODERS, build_encoder
from tlgnn.training.checkpoint import read_pretrained
from tlgnn.training.config import check_model_options, load_run_config
from tlgnn.training.finetune import check_encoder
from tlgnn.utils.config import ConfigError

CKPT = ROOT / "data" / "pretrained" / "cgcnn_mp_pbe_eform.ckpt"
OLD = {"cgcnn": {"atom_fea_len": 16, "n_conv": 2, "h_fea_len": 24},
       "m3gnet_lite": {"hidden": 16, "n_blocks": 2, "out_dim": 24}}
NEW = {"hidden_channels": 16, "num_layers": 2, "out_channels": 24}


@pytest.mark.parametrize("name", sorted(OLD))
def test_every_encoder_takes_the_shared_names_and_reads_its_old_ones_as_them(name):
    assert {"hidden_channels", "num_layers", "out_channels", "cutoff"} <= set(
        __import__("inspect").signature(ENCODERS[name]).parameters)
    torch.manual_seed(0)
    new = build_encoder(name, **NEW)
    torch.manual_seed(0)
    old = build_encoder(name, **OLD[name])
    assert new.out_dim == old.out_dim == 24 and len(new.layer_groups()) == len(old.layer_groups()) == 4
    assert new.state_dict().keys() == old.state_dict().keys()
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in new.state_dict().items())
    batch = Batch.from_data_list(graphs(4))
    new.eval(), old.eval()
    assert torch.equal(new(batch).graph_emb, old(batch).graph_emb)
    assert ENCODERS.canonical(name, {**OLD[name], "cutoff": 6.0}) == {**NEW, "cutoff": 6.0}


def test_both_names_of_one_option_are_an_error():
    with pytest.raises(ValueError, match="'n_conv' and 'num_layers' are one option"):
        build_encoder("cgcnn", n_conv=2, num_layers=3)


def test_a_config_with_old_names_gets_a_one_line_note_per_name_and_is_saved_with_the_new_ones(tmp_path):
    raw = {"data": {"sources": str(ROOT / "configs" / "data" / "mp_sample.yaml"), "tasks": ["gap_hse"]},
           "model": {"encoder": {"name": "cgcnn", "atom_fea_len": 16, "n_conv": 1, "cutoff": 8.0},
                     "head": {"name": "single", "task": "gap_hse"}},
           "output_dir": str(tmp_path)}
    config = load_run_config(raw=raw)
    log = io.StringIO()
    check_model_options(config.model, log=log)
    assert log.getvalue().splitlines() == [
        "tlgnn: note: model.encoder.atom_fea_len is now called model.encoder.hidden_channels (read as such; rename "
        "it in the config)",
        "tlgnn: note: model.encoder.n_conv is now called model.encoder.num_layers (read as such; rename it in the "
        "config)"]
    assert config.model.encoder == {"name": "cgcnn", "hidden_channels": 16, "num_layers": 1, "cutoff": 8.0}
    raw["model"]["encoder"]["num_layers"] = 2
    with pytest.raises(ConfigError) as err:
        check_model_options(load_run_config(raw=raw).model, log=None)
    assert err.value.key == "model.encoder.n_conv" and "one option" in str(err.value)


def test_the_shipped_checkpoint_with_old_names_matches_configs_in_either_vocabulary():
    pretrained = read_pretrained(CKPT)
    assert pretrained.encoder_spec["atom_fea_len"] == 64  # written before the rename
    check_encoder(pretrained, {"name": "cgcnn", "hidden_channels": 64, "num_layers": 3, "out_channels": 128})
    check_encoder(pretrained, {"name": "cgcnn", "atom_fea_len": 64, "n_conv": 3, "h_fea_len": 128})
    with pytest.raises(ConfigError) as err:
        check_encoder(pretrained, {"name": "cgcnn", "hidden_channels": 32})
    assert err.value.key == "model.encoder.hidden_channels" and "hidden_channels=64" in str(err.value)


def test_a_config_built_in_python_with_old_names_is_renamed_by_the_run_builder(tmp_path, cache_dir, capsys):
    """``run.build_module`` (the one road of ``tlgnn fit`` and of Python callers) renames old option names and says
    so, so the module — and every checkpoint it writes — describes its encoder in the current vocabulary."""
    from support.training import raw_config
    from tlgnn.training.run import build_datamodule, build_module

    head = {"name": "single", "task": "gap_hse"}
    raw = raw_config(tmp_path, cache_dir, head, ["gap_hse"])
    raw["model"]["encoder"] = {"name": "cgcnn", "atom_fea_len": 16, "n_conv": 1, "h_fea_len": 16}
    config = load_run_config(raw=raw)
    module = build_module(config, build_datamodule(config))
    assert module.describe()["model"]["encoder"] == {"name": "cgcnn", "hidden_channels": 16, "num_layers": 1,
                                                     "out_channels": 16}
    err = capsys.readouterr().err
    assert "model.encoder.atom_fea_len is now called model.encoder.hidden_channels" in err
    assert "model.encoder.h_fea_len is now called model.encoder.out_channels" in err
