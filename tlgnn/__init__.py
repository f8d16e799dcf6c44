"""tlgnn: transfer learning with graph neural networks on crystal structures.

Stages (each importable alone): ``tlgnn.io`` -> ``tlgnn.graphs`` -> ``tlgnn.data`` -> ``tlgnn.models``
-> ``tlgnn.training`` -> ``tlgnn.cli``. ``tlgnn.load_model(path)`` loads a trained checkpoint for prediction
(imported on first use, so ``import tlgnn`` stays light). Every exception tlgnn raises about its input derives from
``tlgnn.TlgnnError``.
"""

from typing import Any

from tlgnn.errors import TlgnnError

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from tlgnn.api import load_model

        return load_model
    raise AttributeError(f"module 'tlgnn' has no attribute {name!r}")


__all__ = ["TlgnnError", "__version__", "load_model"]
