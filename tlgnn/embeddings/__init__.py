"""Graph embeddings computed once per material by a frozen encoder, and cached on disk.

Between :mod:`tlgnn.models` (the encoders) and :mod:`tlgnn.training` (which trains heads on the stored vectors
when the encoder is frozen, see :func:`tlgnn.training.run.fit`).
"""

from tlgnn.embeddings.cache import (CACHE_FORMAT, EmbeddingCache, EmbeddingCacheWarning,
                                    encoder_identity)
from tlgnn.embeddings.compute import cached_embeddings, embed_loader, encoded_batches

__all__ = ["CACHE_FORMAT", "EmbeddingCache", "EmbeddingCacheWarning", "cached_embeddings",
           "embed_loader", "encoded_batches", "encoder_identity"]
