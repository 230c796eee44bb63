"""minGRU for Recurrent Toolkit: registered as the cell ``mingru`` (entry point group ``toolkit.cells``)."""

from rtk_mingru.cell import MinGRUCell, g, log_g

__all__ = ["MinGRUCell", "g", "log_g"]
__version__ = "0.1.0"
