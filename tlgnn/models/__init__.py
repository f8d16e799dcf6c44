"""tlgnn.models."""
