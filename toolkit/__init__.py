"""Recurrent Toolkit: recurrent sequence models, any task x cell x depth x direction."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # toolkit.load imports torch; a bare `import toolkit` (the rtk command's start) must not
    if name == "load":
        from toolkit.api import load

        return load
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
