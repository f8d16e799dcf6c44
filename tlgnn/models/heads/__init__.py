"""Prediction heads: ``(EncoderOutput, batch) -> {task: prediction}``.

Importing this package registers every head in ``HEADS``.
"""

from tlgnn.models.heads.base import HEADS, Head, build_head, register_head
from tlgnn.models.heads.difference import DifferenceHead
from tlgnn.models.heads.elv import ELVHead
from tlgnn.models.heads.expressions import ExpressionError, compile_expression
from tlgnn.models.heads.fidelity import FidelityHead
from tlgnn.models.heads.multitask import MultiTaskHead
from tlgnn.models.heads.single import SingleHead
from tlgnn.models.heads.tree import TreeHead

__all__ = [
    "HEADS",
    "Head",
    "build_head",
    "register_head",
    "DifferenceHead",
    "ELVHead",
    "ExpressionError",
    "compile_expression",
    "FidelityHead",
    "MultiTaskHead",
    "SingleHead",
    "TreeHead",
]
