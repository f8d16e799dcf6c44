"""tlgnn.data."""
