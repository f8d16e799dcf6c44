"""The Python API for trained models: ``tlgnn.load_model(path)``.

    model = tlgnn.load_model("runs/quickstart/checkpoints/best.ckpt")
    frame = model.predict(["a.cif", structure, atoms])    # pandas: a row per structure, a column per task
    emb = model.embed("cifs/*.cif")                      # numpy [n, d] graph embeddings

Everything needed (graph settings, tasks, normalisation, encoder/head config) is read from the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from tlgnn.training.predict import Predictor


def load_model(path: str | Path, device: str | None = "cpu", batch_size: int = 64) -> Predictor:
    """Load a tlgnn checkpoint for prediction.

    Args:
        path: a ``.ckpt`` written by ``tlgnn fit`` (``best.ckpt``/``last.ckpt``).
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        batch_size: structures per forward pass.

    Returns:
        a :class:`~tlgnn.training.predict.Predictor` with ``predict(structures) -> DataFrame`` and
        ``embed(structures) -> ndarray [n, d]``; ``tasks``, ``outputs`` and ``metadata`` describe the model.
    """
    return Predictor.from_checkpoint(path, device=device, batch_size=batch_size)


__all__ = ["Predictor", "load_model"]
