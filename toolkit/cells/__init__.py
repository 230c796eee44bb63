"""Recurrent cells: the contract, the entry-point registry, and the built-ins.

Built-in cells are not imported here: like any plugin they load on demand
through the ``toolkit.cells`` entry-point group.
"""

from toolkit.cells.base import RecurrentCell, State
from toolkit.cells.registry import (
    CellEntry,
    available_cells,
    build_cell,
    cell_entries,
    cell_hparams,
    clear_cell_cache,
    describe_cells,
    load_cell_class,
)

__all__ = [
    "CellEntry",
    "RecurrentCell",
    "State",
    "available_cells",
    "build_cell",
    "cell_entries",
    "cell_hparams",
    "clear_cell_cache",
    "describe_cells",
    "load_cell_class",
]
