"""The one road a run is assembled on (``tlgnn.training.run.fit``): a caller's own data module, callbacks and
checkpoint policy, the result carrying the best module; and the model card of pretrained encoders
(``tlgnn.training.model_card``), rendered exactly as the shipped one."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from support.paths import ROOT
from support.training import HEADS, raw_config
from tlgnn.training.checkpoint import load_module, read_checkpoint
from tlgnn.training.config import load_run_config
from tlgnn.training.inference import predict_batches
from tlgnn.training.run import build_datamodule, fit

PRETRAINED = ROOT / "data" / "pretrained"

pytestmark = pytest.mark.usefixtures("one_thread")


class CountEpochs(L.Callback):
    def __init__(self) -> None:
        self.epochs = 0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs += 1


def test_fit_takes_a_callers_data_module_callbacks_and_checkpoint_policy(tmp_path, cache_dir):
    head, tasks = HEADS["single"]
    config = load_run_config(raw=raw_config(tmp_path / "run", cache_dir, head, tasks))
    dm = build_datamodule(config, "fit")
    dm.setup("fit")
    counter = CountEpochs()
    result = fit(config, datamodule=dm, callbacks=[counter], checkpoints="best", test=False)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert result.best_checkpoint == ckpt_dir / "best.ckpt" and not (ckpt_dir / "last.ckpt").exists()
    assert result.last_checkpoint is None
    assert counter.epochs == result.epochs == 2 and result.steps == 8  # limit_train_batches 4, 2 epochs
    best = result.best_module()
    assert not best.training
    loader = dm.test_dataloader()
    again = predict_batches(load_module(result.best_checkpoint), loader).preds[tasks[0]]
    np.testing.assert_array_equal(predict_batches(best, loader).preds[tasks[0]], again)
    assert read_checkpoint(result.best_checkpoint)["epoch"] in (0, 1)
    with pytest.raises(ValueError, match="checkpoints must be one of"):
        fit(config, datamodule=dm, checkpoints="all", overwrite=True)


def test_the_shipped_model_card_is_what_the_package_renders():
    """``scripts/pretrain.py`` writes MODEL_CARD.md through ``tlgnn.training.model_card``: rendering the shipped
    checkpoint's JSON gives the shipped card (which adds a hand-written provenance section at the end)."""
    from tlgnn.training.model_card import render_card

    rendered = render_card(PRETRAINED)
    shipped = (PRETRAINED / "MODEL_CARD.md").read_text()
    assert shipped.startswith(rendered) and "## `cgcnn_mp_pbe_eform.ckpt` (cgcnn)" in rendered
    assert shipped[len(rendered):].startswith("\n## Provenance of the shipped files\n")  # only that is added
    assert "| gap_pbe_mp | eV |" in rendered


def test_write_pretrained_publishes_checkpoint_metadata_and_card(tmp_path):
    from tlgnn.data.tasks import TaskSpec
    from tlgnn.training.model_card import render_card, write_pretrained
    from tlgnn.training.module import TransferModule

    info = json.loads((PRETRAINED / "cgcnn_mp_pbe_eform.json").read_text())
    tasks = [TaskSpec("gap_pbe_mp", unit="eV"), TaskSpec("e_form_mp", unit="eV/atom")]
    torch.manual_seed(0)
    module = TransferModule({"encoder": {"name": "cgcnn", "atom_fea_len": 8, "n_conv": 1, "h_fea_len": 8},
                             "head": {"name": "multitask"}}, tasks)
    path = write_pretrained(module, tmp_path, "tiny", {**info, "status": "in progress"})
    meta = json.loads((tmp_path / "tiny.json").read_text())
    assert path == tmp_path / "tiny.ckpt" and meta["file"] == "tiny.ckpt"
    assert meta["size_bytes"] == path.stat().st_size and meta["status"] == "in progress"
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert card == render_card(tmp_path) and "## `tiny.ckpt` (cgcnn)" in card and "**in progress**" in card
    torch.testing.assert_close(load_module(path).state_dict(), module.state_dict())


def test_pretraining_callbacks_log_each_epoch_and_publish_the_best_so_far(tmp_path, cache_dir):
    """``scripts/pretrain.py``'s callbacks, from the package: a line per epoch, and the best model so far published
    with its card after every improving epoch (so an interrupted run leaves a usable checkpoint)."""
    from tlgnn.training.console import EpochLog
    from tlgnn.training.model_card import PublishBest

    head, tasks = HEADS["multitask"]
    config = load_run_config(raw=raw_config(tmp_path / "run", cache_dir, head, tasks))
    dm = build_datamodule(config, "fit")
    base = json.loads((PRETRAINED / "cgcnn_mp_pbe_eform.json").read_text())
    calls = []

    def make_info(module, epochs, metrics, status, best_epoch=None):
        calls.append((epochs, best_epoch, sorted(metrics["test"])))
        return {**base, "status": status, "metrics": {**metrics, "mean_baseline_mae": {}},
                "training": {**base["training"], "epochs_completed": epochs, "best_epoch": best_epoch}}

    lines = []
    publish = PublishBest(tmp_path / "out", "tiny", lambda: (dm.test_dataloader(), dm.val_dataloader()), make_info)
    (tmp_path / "out").mkdir()
    fit(config, datamodule=dm, callbacks=[EpochLog(len(dm.split.train), tasks, lines.append), publish], test=False)
    assert [line.split(":")[0] for line in lines] == ["epoch 0", "epoch 1"] and "graphs/s" in lines[0]
    assert calls and calls[0][:2] == (1, 0) and calls[0][2] == ["gap_hse", "gap_pbe_mf"]  # regression tasks
    meta = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert meta["status"] == "in progress" and meta["training"]["best_epoch"] == calls[-1][1]
    assert "## `tiny.ckpt` (cgcnn)" in (tmp_path / "out" / "MODEL_CARD.md").read_text()
    assert publish.state_key == "ExportBest.__new__.<locals>._ExportBest"  # pretrain.py's older runs resume
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["callbacks"][publish.state_key] == \
        {"best": publish.best}


def test_resuming_a_onecycle_run_for_longer_than_planned_stops_with_one_line(tmp_path, cache_dir):
    """OneCycleLR's total step count is fixed when the run starts: resumed with a larger max_epochs it ran out of
    steps with torch's bare ValueError; now fit says why and what to do, and the checkpoints stay."""
    from tlgnn.training.run import RunError

    head, tasks = HEADS["single"]
    raw = raw_config(tmp_path / "run", cache_dir, head, tasks, optim={"scheduler": "onecycle"},
                     trainer={"max_epochs": 1})
    fit(load_run_config(raw=raw), test=False)
    raw["trainer"]["max_epochs"] = 3
    with pytest.raises(RunError) as err:
        fit(load_run_config(raw=raw), resume="last", test=False)
    message = str(err.value)
    assert "\n" not in message and "optim.scheduler: onecycle" in message and "trainer.max_epochs" in message
    assert "Tried to step" in message and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
