"""Crystal-graph encoders: ``batch -> EncoderOutput(node_emb [N, d], graph_emb [B, d])``.

Importing this package registers every encoder in ``ENCODERS``.
"""

from tlgnn.models.encoders.base import ENCODERS, Encoder, EncoderOutput, build_encoder, register_encoder
from tlgnn.models.encoders.cgcnn import CGCNNEncoder
from tlgnn.models.encoders.chgnet import CHGNetEncoder
from tlgnn.models.encoders.m3gnet_lite import M3GNetLiteEncoder
from tlgnn.models.encoders.stack import StackedEncoder

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderOutput",
    "build_encoder",
    "register_encoder",
    "CGCNNEncoder",
    "CHGNetEncoder",
    "M3GNetLiteEncoder",
    "StackedEncoder",
]
