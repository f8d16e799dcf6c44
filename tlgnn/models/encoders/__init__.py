"""tlgnn.models.encoders."""
