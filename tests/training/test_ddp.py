"""Distributed data parallel: ``tlgnn fit`` with ``trainer.strategy: ddp_spawn``, 2 CPU processes (gloo).

Real data: the shipped Materials Project sample ``data/mp_sample`` (origin and licence: data/mp_sample/README.md),
aligned by ``configs/data/mp_sample.yaml``. Checks that both ranks end with identical weights and that the
validation metric Lightning logs is the one of the WHOLE validation set (reduced across ranks), not of one
rank's shard.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist

from support.paths import ROOT
from tlgnn.training.config import load_run_config
from tlgnn.training.metrics import regression_metrics
from tlgnn.training.run import build_datamodule, fit

TASK = "gap_pbe_mf"


def _can_spawn() -> bool:
    try:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=int)
        proc.start()
        proc.join(30)
        return proc.exitcode == 0
    except (OSError, RuntimeError):
        return False


pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available() and _can_spawn()),
    reason="this platform cannot spawn worker processes or lacks torch.distributed gloo",
)


class RecordRank(L.Callback):
    """Each rank writes its final weights and the validation metrics it logged to ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        Path(self.directory, f"metrics_rank{trainer.global_rank}.json").write_text(json.dumps(metrics))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state": state, "world_size": trainer.world_size, "steps": trainer.global_step},
                   Path(self.directory, f"weights_rank{trainer.global_rank}.pt"))


def _config(tmp_path: Path):
    raw = {
        "data": {
            "sources": str(ROOT / "configs" / "data" / "mp_sample.yaml"),
            "tasks": [TASK],
            # an odd validation set (41 of 468 materials): a padding sampler would count one twice on 2 ranks
            "split": {"kind": "random", "val_fraction": 0.088, "test_fraction": 0.1, "seed": 0},
            "batch_size": 16,
            "cache_dir": str(tmp_path / "cache"),
            "n_jobs": 1,
        },
        "model": {"encoder": {"name": "cgcnn", "hidden_channels": 8, "num_layers": 1, "out_channels": 8},
                  "head": {"name": "single", "hidden": [8]}},
        "optim": {"lr": 0.01, "scheduler": "none"},
        "trainer": {"max_epochs": 1, "limit_train_batches": 3, "accelerator": "cpu", "devices": 2,
                    "strategy": "ddp_spawn", "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "early_stopping": {"patience": None}, "seed": 0},
        "logger": {"kind": "csv"},
        "output_dir": str(tmp_path / "run"),
    }
    return load_run_config(raw=raw, cwd=tmp_path)


def test_ddp_two_cpu_ranks_identical_weights_and_global_validation_metrics(tmp_path):
    config = _config(tmp_path)
    record = tmp_path / "ranks"
    record.mkdir()
    fit(config, test=False, callbacks=[RecordRank(str(record))])

    ranks = [torch.load(record / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3  # 3 batches on each rank
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    assert s0.keys() == s1.keys()
    params = [k for k in s0 if "running_" not in k and "num_batches_tracked" not in k]
    assert len(params) > 5
    for key in params:
        assert torch.equal(s0[key], s1[key]), f"{key} differs between ranks"

    # training moved the weights (a run that did nothing would also have equal ranks)
    from tlgnn.training.run import build_module

    dm = build_datamodule(config, "fit")
    fresh = build_module(config, dm)
    L.seed_everything(config.trainer.seed, verbose=False)
    moved = [k for k in params if not torch.equal(fresh.state_dict()[k], s0[k])]
    assert len(moved) >= len(params) // 2

    # the logged validation MAE equals the MAE over the whole validation set (single process, rank-0 weights)
    logged = [json.loads((record / f"metrics_rank{r}.json").read_text()) for r in (0, 1)]
    key = f"val/{TASK}/mae"
    assert logged[0][key] == pytest.approx(logged[1][key], rel=1e-6)
    fresh.load_state_dict(s0)
    fresh.eval()
    assert len(dm.val_set) % 2 == 1
    preds, targets = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():
            preds.append(fresh(batch)[TASK])
            targets.append(batch.y[:, 0])
    whole = regression_metrics(y_true=torch.cat(targets), y_pred=torch.cat(preds))
    assert logged[0][key] == pytest.approx(whole["mae"], rel=1e-4, abs=1e-6)
