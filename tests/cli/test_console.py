"""What ``tlgnn fit`` prints (issue 19 item 15): run as a user runs it, in a subprocess on the quick start with one
epoch, stdout carries the metrics table and the run directory only; the progress bar, the data summary and where
the caches live go to stderr; Lightning's litlogger tip, torch's LeafSpec deprecation and the
``limit_*_batches=1.0`` notices appear nowhere."""

from __future__ import annotations

import os
import subprocess
import sys

from support.paths import ROOT

NOISE = ("litlogger", "LeafSpec", "limit_train_batches=1.0", "limit_val_batches=1.0", "limit_test_batches=1.0",
         "was configured so 100%")


def test_fit_keeps_stdout_for_results_and_says_where_its_caches_live(tmp_path, cache_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TLGNN_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "default"}
    command = [sys.executable, "-m", "tlgnn.cli.main", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
               "--trainer.max_epochs", "1", "--output_dir", str(tmp_path / "run")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out, err = done.stdout, done.stderr
    for noise in NOISE:
        assert noise not in out and noise not in err, (noise, out, err)
    lines = out.strip().splitlines()
    assert lines[0].split() == ["task", "kind", "unit", "n", "mae", "rmse", "r2", "mae_of_mean"], out
    assert [line.split()[0] for line in lines[2:4]] == ["gap_pbe_mf", "gap_hse"], out
    assert lines[-1] == f"run directory: {tmp_path / 'run'}" and len(lines) == 5, out
    assert "Epoch 0" in err and "Epoch 0" not in out  # the progress bar
    assert f"caches (aligned tables, graphs): {cache_dir} (data.cache_dir, else $TLGNN_CACHE_DIR, else " \
           "~/.cache/tlgnn)" in err
    assert "data: 485 materials" in err
