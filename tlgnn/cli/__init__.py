"""tlgnn.cli."""
