"""tlgnn.graphs."""
