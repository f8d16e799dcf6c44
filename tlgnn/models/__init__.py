"""tlgnn.models: encoders (``ENCODERS``), heads (``HEADS``) and the ``TransferModel`` that joins them."""

from tlgnn.models.encoders import ENCODERS, Encoder, EncoderOutput, build_encoder, register_encoder
from tlgnn.models.heads import HEADS, ExpressionError, Head, build_head, register_head
from tlgnn.models.layers import mlp
from tlgnn.models.model import TransferModel, build_model

__all__ = [
    "ENCODERS",
    "HEADS",
    "Encoder",
    "EncoderOutput",
    "ExpressionError",
    "Head",
    "TransferModel",
    "build_encoder",
    "build_head",
    "build_model",
    "mlp",
    "register_encoder",
    "register_head",
]
