"""Small shared utilities (config loading)."""
