"""Recurrent Toolkit: recurrent sequence models, any task x cell x depth x direction."""

__version__ = "0.1.0"
