"""tlgnn.training: masked loss, metrics, run config, and training with the real Lightning Trainer on the shipped
Materials Project sample (data/mp_sample via configs/data/mp_sample.yaml): every head learns, checkpoints
round-trip through ``tlgnn.load_model``, an interrupted run resumes to the same weights, W&B runs offline."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from support.paths import ROOT
from support.training import HEADS, TINY_ENCODER, deep_update, raw_config
from tlgnn.data.tasks import TaskSpec
from tlgnn.training.config import check_model_options, load_run_config
from tlgnn.training.losses import masked_loss
from tlgnn.training.metrics import TaskMetrics
from tlgnn.training.checkpoint import CHECKPOINT_KEY, read_checkpoint
from tlgnn.training.run import build_datamodule, build_module, fit
from tlgnn.training.trainer import build_trainer, training_callbacks
from tlgnn.utils.config import ConfigError

GAP = TaskSpec("gap", unit="eV")
METAL = TaskSpec("metal", kind="classification", classes=[0, 1, 2])


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ masked loss
def test_missing_labels_get_exactly_zero_loss_and_gradient():
    pred = torch.tensor([1.0, float("nan"), 3.0, float("inf")], requires_grad=True)
    logits = torch.tensor([[2.0, 0.0, -1.0], [float("nan"), 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 9.0]],
                          requires_grad=True)
    y = torch.tensor([[2.0, 1.0], [123.0, 0.0], [1.0, 2.0], [-5.0, 2.0]])
    mask = torch.tensor([[True, True], [False, False], [True, True], [False, True]])
    losses = masked_loss({"gap": pred, "metal": logits}, y, mask, [GAP, METAL], std={"gap": 2.0})
    assert set(losses) == {"gap", "metal"} and all(torch.isfinite(v) for v in losses.values())
    # MSE in units of std over the two present labels: ((1-2)/2)^2, ((3-1)/2)^2
    assert losses["gap"].item() == pytest.approx((0.25 + 1.0) / 2)
    expected_ce = torch.nn.functional.cross_entropy(logits.detach()[[0, 2, 3]], torch.tensor([1, 2, 2]))
    assert losses["metal"].item() == pytest.approx(expected_ce.item())
    (losses["gap"] + losses["metal"]).backward()
    assert pred.grad[1].item() == 0.0 and pred.grad[3].item() == 0.0  # missing: exactly zero, not NaN
    assert pred.grad[0].item() == pytest.approx(2 * (1 - 2) / 4 / 2)
    assert pred.grad[2].item() == pytest.approx(2 * (3 - 1) / 4 / 2)
    assert torch.equal(logits.grad[1], torch.zeros(3))
    assert torch.all(logits.grad[[0, 2, 3]] != 0)


def test_task_without_labels_in_batch_is_left_out_not_nan():
    pred = torch.randn(3, requires_grad=True)
    logits = torch.randn(3, 3, requires_grad=True)
    y = torch.zeros(3, 2)
    mask = torch.tensor([[True, False], [True, False], [False, False]])
    losses = masked_loss({"gap": pred, "metal": logits}, y, mask, [GAP, METAL])
    assert list(losses) == ["gap"] and torch.isfinite(losses["gap"])
    assert masked_loss({"gap": pred, "metal": logits}, y, torch.zeros(3, 2, dtype=torch.bool), [GAP, METAL]) == {}


def test_huber_and_l1_are_on_the_standardised_error():
    pred, y, mask = torch.tensor([0.0, 10.0]), torch.tensor([[4.0], [10.0]]), torch.tensor([[True], [True]])
    l1 = masked_loss({"gap": pred}, y, mask, [GAP], std={"gap": 2.0}, regression="l1")["gap"]
    huber = masked_loss({"gap": pred}, y, mask, [GAP], std={"gap": 2.0}, regression="huber", huber_delta=1.0)["gap"]
    assert l1.item() == pytest.approx((2.0 + 0.0) / 2)
    assert huber.item() == pytest.approx((1.0 * (2.0 - 0.5) + 0.0) / 2)


# ------------------------------------------------------------------------------------------------ metrics
def test_epoch_metrics_equal_sklearn_on_the_gathered_present_labels():
    rng = np.random.default_rng(0)
    metric = TaskMetrics([GAP, TaskSpec("binary", kind="classification", classes=["no", "yes"])])
    all_pred, all_true, all_prob, all_cls = [], [], [], []
    for _ in range(3):
        n = 20
        true = rng.normal(2.0, 1.0, n)
        pred = true + rng.normal(0, 0.5, n)
        cls = rng.integers(0, 2, n)
        logits = np.stack([np.zeros(n), cls * 1.5 + rng.normal(0, 1.0, n)], axis=1)
        mask = rng.random((n, 2)) > 0.3
        y = torch.tensor(np.stack([true, cls], axis=1), dtype=torch.float32)
        metric.update({"gap": torch.tensor(pred, dtype=torch.float32), "binary": torch.tensor(logits, dtype=torch.float32)},
                      y, torch.tensor(mask))
        all_pred.append(pred[mask[:, 0]]), all_true.append(true[mask[:, 0]])
        prob = torch.softmax(torch.tensor(logits), dim=1).numpy()
        all_prob.append(prob[mask[:, 1]]), all_cls.append(cls[mask[:, 1]])
    scores = metric.compute()
    p, t = np.concatenate(all_pred), np.concatenate(all_true)
    assert scores["gap"]["n"] == len(t)
    assert scores["gap"]["mae"] == pytest.approx(skm.mean_absolute_error(t, p), rel=1e-5)
    assert scores["gap"]["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(t, p)), rel=1e-5)
    assert scores["gap"]["r2"] == pytest.approx(skm.r2_score(t, p), rel=1e-5)
    prob, cls = np.concatenate(all_prob), np.concatenate(all_cls)
    assert scores["binary"]["accuracy"] == pytest.approx(skm.accuracy_score(cls, prob.argmax(1)))
    assert scores["binary"]["f1"] == pytest.approx(skm.f1_score(cls, prob.argmax(1)))
    assert scores["binary"]["roc_auc"] == pytest.approx(skm.roc_auc_score(cls, prob[:, 1]), rel=1e-6)


def test_undefined_metrics_are_nan_not_numbers():
    metric = TaskMetrics([GAP])
    metric.update({"gap": torch.tensor([1.0, 2.0])}, torch.tensor([[1.5], [0.0]]), torch.tensor([[True], [False]]))
    scores = metric.compute()["gap"]
    assert scores["n"] == 1 and scores["mae"] == pytest.approx(0.5) and math.isnan(scores["r2"])


# ------------------------------------------------------------------------------------------------ config
def test_run_config_errors_name_the_key(tmp_path, monkeypatch):
    yaml_dir = tmp_path / "cfg"
    yaml_dir.mkdir()
    good = raw_config(Path("out"), Path("cache"), {"name": "single", "task": "gap_hse"}, ["gap_hse"])
    good["data"]["sources"] = "../data.yaml"
    import yaml

    (yaml_dir / "run.yaml").write_text(yaml.safe_dump(good))
    config = load_run_config(yaml_dir / "run.yaml", ["trainer.max_epochs=7", "output_dir=here"],
                             cwd=tmp_path / "elsewhere")
    assert config.trainer.max_epochs == 7
    assert config.data.sources == str((tmp_path / "data.yaml").resolve())  # relative to the YAML
    assert config.data.cache_dir == str((yaml_dir / "cache").resolve())
    assert config.output_dir == str((tmp_path / "elsewhere" / "here").resolve())  # command line: relative to cwd

    bad = copy.deepcopy(good)
    bad["trainer"]["early_stopping"]["patiense"] = 3
    (yaml_dir / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"trainer\.early_stopping\.patiense: unknown key; did you mean 'patience'"):
        load_run_config(yaml_dir / "bad.yaml")
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        load_run_config(yaml_dir / "run.yaml", ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"trainer\.precision: '16-mixed' needs a GPU"):
        load_run_config(yaml_dir / "run.yaml", ["trainer.precision=16-mixed"])
    assert load_run_config(yaml_dir / "run.yaml", ["trainer.precision=32"]).trainer.precision == "32"
    with pytest.raises(ConfigError, match=r"trainer\.compile"):
        load_run_config(yaml_dir / "run.yaml", ["trainer.compile=fast"])
    assert load_run_config(yaml_dir / "run.yaml", ["trainer.compile=true"]).trainer.compile is True
    config = load_run_config(yaml_dir / "run.yaml", ["model.head.tsk=gap_hse"])
    with pytest.raises(ConfigError, match=r"model\.head\.tsk: head 'single' has no option 'tsk' \(did you mean 'task'"):
        check_model_options(config.model)
    config = load_run_config(yaml_dir / "run.yaml", ["model.encoder.name=cgcn"])
    with pytest.raises(ConfigError, match=r"model\.encoder\.name: unknown encoder 'cgcn'"):
        check_model_options(config.model)


# ------------------------------------------------------------------------------------------------ training
@torch.no_grad()
def training_set_loss(module, dm) -> float:
    """Sum over tasks of the masked loss (normalised units) on the whole training split, eval mode."""
    module.eval()
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for batch in dm._loader(dm.train_set, shuffle=False):
        losses = masked_loss(module(batch), batch.y, batch.y_mask, module.tasks, std=module.loss_std)
        for name, value in losses.items():
            n = int(batch.y_mask[:, [t.name for t in module.tasks].index(name)].sum())
            totals[name] = totals.get(name, 0.0) + value.item() * n
            counts[name] = counts.get(name, 0) + n
    return sum(totals[k] / counts[k] for k in totals)


@pytest.mark.parametrize("name", list(HEADS))
def test_each_head_trains_with_the_lightning_trainer_and_its_loss_falls(name, tmp_path, cache_dir):
    head, tasks = HEADS[name]
    config = load_run_config(raw=raw_config(tmp_path / name, cache_dir, head, tasks,
                                            trainer={"max_epochs": 4, "limit_train_batches": 6}))
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(config)
    module = build_module(config, dm)
    stats_mean, stats_std = module.model.head.target_stats()
    labels = dm.dataset.y[dm.split.train, 0][dm.dataset.y_mask[dm.split.train, 0]].double()
    assert stats_mean[tasks[0]] == pytest.approx(labels.mean().item(), rel=1e-5)  # from the training split
    if name == "difference":  # Δ is normalised with the statistics of the paired labels, which checkpoints keep
        low, high = module.model.head.chain
        assert module.model.head.paired_stats()[high][low] == pytest.approx(dm.pair_stats()[high][low])
        assert module.describe()["target_stats"]["pairs"] == module.model.head.paired_stats()
    before = training_set_loss(module, dm)
    module.train()
    callbacks, _ = training_callbacks(config, tmp_path / name)
    trainer = build_trainer(config, tmp_path / name, [], callbacks)
    trainer.fit(module, datamodule=dm)
    after = training_set_loss(module, dm)
    assert trainer.global_step == 24
    assert math.isfinite(after) and after < 0.95 * before, (before, after)


def test_fit_outputs_and_checkpoint_round_trip_through_load_model(tmp_path, cache_dir):
    import tlgnn

    head, tasks = HEADS["multitask"]
    config = load_run_config(raw=raw_config(tmp_path / "run", cache_dir, head, tasks))
    result = fit(config)
    out = tmp_path / "run"
    assert result.best_checkpoint == out / "checkpoints" / "best.ckpt" and result.best_checkpoint.is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "config.yaml").is_file()
    assert (out / "logs" / "version_0" / "metrics.csv").is_file()
    assert {p.name for p in out.glob("parity_*.png")} == {"parity_gap_pbe_mf.png", "parity_gap_hse.png"}
    assert "gap_hse" in result.test.table and "is_metal_exp" in result.test.table

    # metrics.json agrees with the written test predictions
    saved = json.loads((out / "metrics.json").read_text())["test"]
    frame = pd.read_csv(out / "predictions_test.csv")
    rows = frame.dropna(subset=["gap_pbe_mf_true"])
    assert saved["gap_pbe_mf"]["n"] == len(rows)
    assert saved["gap_pbe_mf"]["mae"] == pytest.approx((rows.gap_pbe_mf - rows.gap_pbe_mf_true).abs().mean(), rel=1e-4)
    cls = frame.dropna(subset=["is_metal_exp_true"])
    assert saved["is_metal_exp"]["accuracy"] == pytest.approx((cls.is_metal_exp == cls.is_metal_exp_true).mean())

    # the checkpoint describes itself
    meta = read_checkpoint(result.best_checkpoint)[CHECKPOINT_KEY]
    # the baseline to beat: always predicting the training mean
    train_mean = meta["target_stats"]["mean"]["gap_pbe_mf"]
    assert saved["gap_pbe_mf"]["mae_of_mean"] == pytest.approx((rows.gap_pbe_mf_true - train_mean).abs().mean(),
                                                              rel=1e-5)
    assert "mae_of_mean" in result.test.table
    assert [t["name"] for t in meta["tasks"]] == tasks and meta["version"] == tlgnn.__version__
    assert meta["graph"]["cutoff"] == 8.0 and meta["model"]["encoder"] == TINY_ENCODER
    assert set(meta["target_stats"]["std"]) == {"gap_pbe_mf", "gap_hse"}

    # load_model(...).predict on the test structures gives the numbers the run wrote
    dm = build_datamodule(config)
    row_of = {m: i for i, m in enumerate(dm.table.frame.material_id)}
    structures = [dm.table.structure(row_of[m]) for m in frame.material_id]  # read from the aligned file
    model = tlgnn.load_model(result.best_checkpoint)
    predicted = model.predict(structures)
    assert list(predicted.columns) == ["id", "gap_pbe_mf", "gap_hse", "is_metal_exp", "is_metal_exp_prob_0",
                                       "is_metal_exp_prob_1"]
    np.testing.assert_allclose(predicted.gap_hse.to_numpy(), frame.gap_hse.to_numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(predicted.is_metal_exp_prob_1.to_numpy(), frame.is_metal_exp_prob_1.to_numpy(),
                               atol=1e-5)
    assert (predicted.is_metal_exp.to_numpy() == frame.is_metal_exp.to_numpy()).all()
    emb = model.embed(structures[:5])
    assert emb.shape == (5, TINY_ENCODER["out_channels"]) and np.isfinite(emb).all()


class Crash(L.Callback):
    """Simulates a killed process at the start of an epoch (after last.ckpt of the previous one was written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resumed_run_ends_at_the_weights_of_an_uninterrupted_run(tmp_path, cache_dir):
    head = {"name": "difference", "chain": ["gap_pbe_mf", "gap_hse"], "hidden": [16], "dropout": 0.1}
    extra = {"optim": {"scheduler": "cosine", "warmup_epochs": 0.5}, "trainer": {"max_epochs": 3}}
    straight = load_run_config(raw=raw_config(tmp_path / "straight", cache_dir, head, ["gap_pbe_mf", "gap_hse"], **extra))
    fit(straight, resume="auto", test=False)  # nothing to resume yet: a fresh start
    broken = load_run_config(raw=raw_config(tmp_path / "broken", cache_dir, head, ["gap_pbe_mf", "gap_hse"], **extra))
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(broken, test=False, callbacks=[Crash(epoch=1)])
    assert read_checkpoint(tmp_path / "broken" / "checkpoints" / "last.ckpt")["global_step"] == 4
    shutil.copytree(tmp_path / "broken", tmp_path / "moved")  # the same killed run, copied elsewhere
    fit(broken, resume="last", test=False)
    a = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(tmp_path / "broken" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    # resumed in its new place, the copy keeps its best score and best.ckpt (no best-v1.ckpt) and ends the same
    moved = load_run_config(raw=raw_config(tmp_path / "moved", cache_dir, head, ["gap_pbe_mf", "gap_hse"], **extra))
    result = fit(moved, resume="auto", test=False)
    assert sorted(p.name for p in (tmp_path / "moved" / "checkpoints").iterdir()) == [
        "best.ckpt", "best.ckpt.xxh3", "last.ckpt", "last.ckpt.xxh3"]  # each with its checksum sidecar
    assert result.best_checkpoint == tmp_path / "moved" / "checkpoints" / "best.ckpt"
    c = read_checkpoint(tmp_path / "moved" / "checkpoints" / "last.ckpt")
    for key, value in b["state_dict"].items():
        torch.testing.assert_close(c["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    best_b = read_checkpoint(tmp_path / "broken" / "checkpoints" / "best.ckpt")
    best_c = read_checkpoint(tmp_path / "moved" / "checkpoints" / "best.ckpt")
    assert best_c["global_step"] == best_b["global_step"]
    # a fresh run into a directory that holds one is refused unless resumed or overwritten
    from tlgnn.training.run import RunError

    with pytest.raises(RunError, match="--resume"):
        fit(broken, test=False)
    # a damaged checkpoint is refused by name before anything starts: truncated, or one flipped byte
    from tlgnn.training.run import resume_checkpoint

    data = (tmp_path / "broken" / "checkpoints" / "last.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match=r"cut.ckpt is damaged \(not a complete checkpoint"):
        resume_checkpoint(str(tmp_path / "cut.ckpt"), tmp_path)
    import struct
    import zipfile

    with zipfile.ZipFile(tmp_path / "broken" / "checkpoints" / "last.ckpt") as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)  # the largest tensor's bytes
    name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26 : member.header_offset + 30])
    start = member.header_offset + 30 + name_len + extra_len
    flipped = bytearray(data)
    flipped[start + member.file_size // 2] ^= 0x40
    (tmp_path / "flip.ckpt").write_bytes(bytes(flipped))
    with pytest.raises(RunError, match=r"flip.ckpt is damaged \(CRC mismatch in "):
        resume_checkpoint(str(tmp_path / "flip.ckpt"), tmp_path)
    # --overwrite starts over: old checkpoints, CSV logs and W&B run id go, the new run is alone
    (tmp_path / "broken" / "wandb_run_id").write_text("oldrun12\n")
    assert len(list((tmp_path / "broken" / "logs").iterdir())) == 2  # the crashed attempt and the resumed one
    fit(broken, test=False, overwrite=True)
    assert not (tmp_path / "broken" / "wandb_run_id").exists()
    assert [p.name for p in (tmp_path / "broken" / "logs").iterdir()] == ["version_0"]


ELV_HEAD = {"name": "elv", "latents": ["gap_pbe_mf", "shift"], "expressions": {"gap_hse": "gap_pbe_mf + softplus(shift)"}}
WATCHED = {"early_stopping": {"monitor": "val/gap_hse/mae", "patience": 5}}


def test_an_overflowing_expression_stops_the_run_naming_task_expression_epoch_and_keeps_the_last_good_checkpoint(
        tmp_path, cache_dir):
    """Issue 19 item 9: an ELV expression that overflows used to end in Lightning's "Early stopping conditioned on
    metric ... which is not available"; now one line names the task, its expression and the epoch, and
    ``last.ckpt`` keeps the weights of the last epoch that ended well."""
    from tlgnn.training.run import RunError

    tasks, out = ["gap_pbe_mf", "gap_hse"], tmp_path / "run"
    fit(load_run_config(raw=raw_config(out, cache_dir, ELV_HEAD, tasks, trainer={**WATCHED, "max_epochs": 1})),
        test=False)
    last = out / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    head = {**ELV_HEAD, "expressions": {"gap_hse": "exp(1000 + shift) + gap_pbe_mf"}}
    config = load_run_config(raw=raw_config(out, cache_dir, head, tasks, trainer={**WATCHED, "max_epochs": 3}))
    with pytest.raises(RunError) as info:
        fit(config, resume="last", test=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("training stopped: non-finite training loss (inf or nan) in epoch 1 for task "
                              "'gap_hse' (expression 'exp(1000 + shift) + gap_pbe_mf')"), message
    assert f"the last good checkpoints are kept: {last}" in message
    assert last.read_bytes() == good
    weights = read_checkpoint(last)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_a_diverging_learning_rate_stops_in_the_first_epoch_without_a_checkpoint(tmp_path, cache_dir):
    from tlgnn.training.run import RunError

    raw = raw_config(tmp_path / "run", cache_dir, ELV_HEAD, ["gap_pbe_mf", "gap_hse"], optim={"lr": 1e4},
                     trainer=WATCHED)
    with pytest.raises(RunError, match=r"non-finite training loss \(inf or nan\) in epoch 0 for task .*"
                                       r"; no checkpoint was written before it"):
        fit(load_run_config(raw=raw), test=False)


def test_wandb_offline_run_is_written_inside_output_dir(tmp_path, cache_dir, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    head, tasks = HEADS["difference"]
    config = load_run_config(raw=raw_config(tmp_path / "run", cache_dir, head, tasks,
                                            logger={"kind": "wandb", "wandb": {"project": "tlgnn-test"}},
                                            trainer={"max_epochs": 1}))
    result = fit(config)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "run").rglob("*"))
    run_dir = runs[0]
    # the run's binary log holds the per-epoch history and the config
    log = next(run_dir.glob("run-*.wandb")).read_bytes()
    for key in (b"train/loss_epoch", b"val/loss", b"val/gap_hse/mae", b"test/gap_hse/mae", b"max_epochs"):
        assert key in log, key
    # per-task test metrics as a W&B table, parity plots as images, run files saved with the run
    table = json.loads(next((run_dir / "files" / "media" / "table" / "test").glob("metrics_*.table.json")).read_text())
    values = {(task, metric): value for task, metric, value in table["data"]}
    assert values[("gap_hse", "mae")] == pytest.approx(result.test.scores["gap_hse"]["mae"])
    images = sorted(p.parent.name for p in (run_dir / "files" / "media" / "images" / "test").rglob("*.png"))
    assert images == ["gap_hse", "gap_pbe_mf"]  # one parity plot per regression task
    assert (tmp_path / "run" / "parity_gap_hse.png").is_file()
    assert "gap_hse" in (run_dir / "files" / "alignment_report.md").read_text()
    assert json.loads((run_dir / "files" / "metrics.json").read_text())["test"]["gap_hse"]["n"] > 0


def test_host_side_checks_run_before_the_batch_moves_to_the_device():
    """``on_before_batch_transfer`` (host) rejects unknown elements and drops edges beyond the encoder cutoff,
    so the GPU forward pass needs no host synchronisation for either check."""
    from support.structures import structures
    from torch_geometric.data import Batch

    from tlgnn.graphs import ATOM_FEATURES, CrystalGraphBuilder
    from tlgnn.training.module import TransferModule

    module = TransferModule({"encoder": {"name": "cgcnn", "hidden_channels": 8, "num_layers": 1, "out_channels": 8,
                                         "cutoff": 6.0},
                             "head": {"name": "single"}}, [TaskSpec(name="gap")])
    batch = Batch.from_data_list([CrystalGraphBuilder(cutoff=8.0, max_neighbors=None)(s) for s in structures(2)])
    n_edges = batch.edge_index.shape[1]
    batch = module.on_before_batch_transfer(batch, 0)
    assert 0 < batch.edge_index.shape[1] < n_edges and float(batch.edge_dist.max()) <= 6.0
    batch.z[0] = ATOM_FEATURES.shape[0]
    with pytest.raises(ValueError, match="no atom features"):
        module.on_before_batch_transfer(batch, 0)


def test_compiled_model_keeps_its_parameter_names(tmp_path):
    """``trainer.compile`` compiles the model in place: checkpoints of compiled and eager runs are interchangeable."""
    from tlgnn.training.module import TransferModule
    from tlgnn.training.trainer import compile_model

    raw = raw_config(tmp_path / "out", tmp_path / "cache", {"name": "single", "task": "gap_hse"}, ["gap_hse"])
    for flag, compiled in ((False, False), (True, True)):
        module = TransferModule({"encoder": {"name": "cgcnn", "hidden_channels": 8, "num_layers": 1, "out_channels": 8},
                                 "head": {"name": "single"}}, [TaskSpec(name="gap")])
        names = list(module.state_dict())
        compile_model(load_run_config(raw=deep_update(raw, {"trainer": {"compile": flag}})), module)
        assert (module.model._compiled_call_impl is not None) == compiled  # what fit() runs
        assert list(module.state_dict()) == names and not any("_orig_mod" in n for n in names)


def test_predict_builds_on_known_low_fidelity_values(tmp_path):
    """A difference head trained with use_known_low takes the low-fidelity value a user knows (e.g. the computed
    PBE gap of a new crystal) instead of predicting it: high = known low + Δ where known, the model's own low +
    Δ elsewhere; the low column stays the prediction."""
    from tlgnn.graphs import CrystalGraphBuilder
    from tlgnn.training.module import TransferModule
    from tlgnn.training.predict import Predictor

    cod = ROOT / "data" / "structures" / "cif" / "cgcnn_cod_sample"
    files = [str(cod / name) for name in ("1000041.cif", "9000046.cif", "9011050.cif")]
    tasks = [TaskSpec("gap_pbe", unit="eV"), TaskSpec("gap_hse", unit="eV")]
    torch.manual_seed(0)
    module = TransferModule({"encoder": TINY_ENCODER, "head": {"name": "difference", "chain": ["gap_pbe", "gap_hse"],
                                                                 "use_known_low": True, "hidden": [8],
                                                                 # Δ(g) alone: Δ(g, y_low) is tested with the heads
                                                                 "condition_on_known_low": False}},
                            tasks, optim={}, loss={}, graph=CrystalGraphBuilder().settings)
    predictor = Predictor(module)
    plain = predictor.predict(files)
    known = pd.DataFrame({"id": ["1000041", "9011050"], "gap_pbe": [5.0, None]})  # one known, one empty cell
    given = predictor.predict(files, known=known).set_index("id")
    plain = plain.set_index("id")
    np.testing.assert_allclose(given.gap_pbe, plain.gap_pbe, rtol=1e-6)  # the low output stays predicted
    delta = plain.gap_hse - plain.gap_pbe
    assert given.gap_hse["1000041"] == pytest.approx(5.0 + delta["1000041"], rel=1e-5)
    for other in ("9000046", "9011050"):
        assert given.gap_hse[other] == pytest.approx(plain.gap_hse[other], rel=1e-6)
    # a CSV works the same; bad files name the problem
    (tmp_path / "known.csv").write_text("id,gap_pbe\n1000041,5.0\n")
    via_csv = predictor.predict(files, known=tmp_path / "known.csv").set_index("id")
    assert via_csv.gap_hse["1000041"] == pytest.approx(given.gap_hse["1000041"], rel=1e-6)
    with pytest.raises(ValueError, match=r"column 'gap_pbx' is not a task of this model; did you mean 'gap_pbe'"):
        predictor.predict(files, known=pd.DataFrame({"id": ["1000041"], "gap_pbx": [1.0]}))
    with pytest.raises(ValueError, match=r"row 0 \(id '1000041'\): non-numeric value '1.2 eV'"):
        predictor.predict(files, known=pd.DataFrame({"id": ["1000041"], "gap_pbe": ["1.2 eV"]}))
    with pytest.warns(UserWarning, match="known values for 1 id"):
        predictor.predict(files, known={"nope": {"gap_pbe": 1.0}})
