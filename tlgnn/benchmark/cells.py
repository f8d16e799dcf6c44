"""Cell files: ``<results>/<experiment>/<model>/fold<k>_n<N>_s<seed>.json`` + ``.predictions.csv``.

Both are written atomically (a hidden temp file in the same folder, then ``os.replace``); the predictions first,
the JSON last, so a JSON that parses is the mark of a finished cell. Half-written temp files (``.*.tmp-*``)
are never read and are overwritten by the rerun.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from tlgnn.benchmark.config import TrainSize, size_label


@dataclass(frozen=True)
class CellKey:
    """Coordinates of one cell."""

    experiment: str
    model: str
    fold: int
    train_size: TrainSize
    seed: int

    @property
    def stem(self) -> str:
        return f"fold{self.fold}_n{size_label(self.train_size)}_s{self.seed}"

    @property
    def id(self) -> str:
        """``<experiment>/<model>/<stem>`` (what ``--only`` patterns match)."""
        return f"{self.experiment}/{self.model}/{self.stem}"

    def json_path(self, results: Path) -> Path:
        return Path(results) / self.experiment / self.model / f"{self.stem}.json"

    def predictions_path(self, results: Path) -> Path:
        return Path(results) / self.experiment / self.model / f"{self.stem}.predictions.csv"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON atomically."""
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n"))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as CSV (no index) atomically."""
    _atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def read_finished(path: Path) -> dict[str, Any] | None:
    """The record of a finished cell, or ``None`` when the JSON is absent or unreadable."""
    try:
        record = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and "metrics" in record else None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The repository's HEAD commit (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict[str, Any]:
    """CPU model, usable cores, memory, GPU (only when torch is already imported), platform, library versions."""
    import numpy
    import sklearn

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        memory_gb = None
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": cores,
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "sklearn": sklearn.__version__,
        "gpu": None,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


__all__ = ["CellKey", "git_commit", "hardware_info", "read_finished", "write_csv", "write_json"]
