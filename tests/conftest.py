"""Fixtures shared by the training and CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny graphs train fastest on one thread (and OpenMP threads crawl on an oversubscribed CI machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One aligned table + graph cache for every training test of the session (built on first use)."""
    return tmp_path_factory.getbasetemp() / "tlgnn-training-cache"
