"""tlgnn: transfer learning with graph neural networks on crystal structures.

Stages (each importable alone): ``tlgnn.io`` -> ``tlgnn.graphs`` -> ``tlgnn.data`` -> ``tlgnn.models``
-> ``tlgnn.training`` -> ``tlgnn.cli``.
"""

__version__ = "0.1.0"
