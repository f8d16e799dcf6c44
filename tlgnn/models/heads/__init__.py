"""tlgnn.models.heads."""
