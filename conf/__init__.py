"""Hydra config groups of the toolkit (the top-level conf/ folder, shipped as toolkit.conf)."""
