"""tlgnn.training."""
