"""tlgnn.io."""
