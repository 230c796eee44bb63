"""Find, load and build cells registered under the ``toolkit.cells`` entry-point group.

Built-in cells register exactly like third-party plugins (see pyproject.toml).
As in flake8's plugin finder: discovery reads metadata only (no plugin module is
imported), entries are sorted for determinism, and each cell is loaded inside
try/except so one broken plugin fails loudly but alone.

``RTK_DISABLE_PLUGIN_AUTOLOAD=1`` keeps only the entries of ``recurrent-toolkit``
itself (like ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``); it is read on every call.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from toolkit.cells.base import RecurrentCell
from toolkit.errors import CellError, ToolkitError

GROUP = "toolkit.cells"
CORE_DISTRIBUTION = "recurrent-toolkit"
DISABLE_ENV = "RTK_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class CellEntry:
    """One registered cell, as metadata says it (nothing imported)."""

    name: str
    value: str  # "module:attr"
    dist: str
    version: str

    def describe(self) -> str:
        return f"cell '{self.name}' from {self.dist} {self.version} (entry point {self.value})"


@functools.lru_cache(maxsize=1)
def _discover() -> tuple[CellEntry, ...]:
    """Every entry in the group, sorted; cached because metadata scans are slow."""
    found = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        name = dist.metadata["Name"] if dist is not None else "<unknown distribution>"
        version = dist.version if dist is not None else "?"
        found.append(CellEntry(ep.name, ep.value, name, version))
    # The same distribution can be seen twice (e.g. an editable install plus a
    # stale egg-info on sys.path); that is one registration, not a clash.
    return tuple(sorted(set(found), key=lambda e: (e.name, e.dist, e.version, e.value)))


def clear_cell_cache() -> None:
    """Forget discovered entry points (for tests, or after installing a plugin at run time)."""
    _discover.cache_clear()


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cell_entries() -> list[CellEntry]:
    """The registered cells, sorted by name then distribution, without importing any."""
    entries = _discover()
    if _autoload_disabled():
        entries = tuple(e for e in entries if _normalise(e.dist) == CORE_DISTRIBUTION)
    return list(entries)


def _normalise(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


def available_cells() -> list[str]:
    """Sorted names of the registered cells, without importing any plugin module."""
    return sorted({e.name for e in cell_entries()})


def _entry_for(name: str) -> CellEntry:
    matches = [e for e in cell_entries() if e.name == name]
    if not matches:
        names = ", ".join(available_cells()) or "(none)"
        raise CellError(f"unknown cell '{name}'; available cells: {names}")
    if len({(e.dist, e.value) for e in matches}) > 1:
        who = " and ".join(f"{e.dist} {e.version} ({e.value})" for e in matches)
        raise CellError(f"cell '{name}' is registered by more than one distribution: {who}; "
                        "uninstall one of them")
    return matches[0]


def _load(entry: CellEntry) -> type[RecurrentCell]:
    ep = importlib.metadata.EntryPoint(name=entry.name, value=entry.value, group=GROUP)
    try:
        obj = ep.load()
    except Exception as exc:  # any import-time failure of a plugin is reported, not raised raw
        raise CellError(f"{entry.describe()} failed to load: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, RecurrentCell)):
        raise CellError(f"{entry.describe()} is not a RecurrentCell subclass (got {obj!r})")
    return obj


def load_cell_class(name: str) -> type[RecurrentCell]:
    """Import the cell registered as ``name``; every failure is one CellError sentence."""
    return _load(_entry_for(name))


def build_cell(name: str, input_size: int, hidden_size: int, **hparams: Any) -> RecurrentCell:
    """Load the cell ``name``, check ``hparams`` against its ``__init__``, and build it."""
    cls = load_cell_class(name)
    cls.validate_hparams(hparams, name=name)
    try:
        return cls(input_size, hidden_size, **hparams)
    except ToolkitError:
        raise
    except Exception as exc:
        raise CellError(f"cell '{name}' could not be built with input_size={input_size}, "
                        f"hidden_size={hidden_size}, hparams={hparams}: {type(exc).__name__}: {exc}") from exc


def cell_hparams(cell: Mapping[str, Any]) -> dict[str, Any]:
    """A cell config (``cfg.cell``: name, backend, hparams…) -> the hparams the cell itself takes."""
    return {k: v for k, v in cell.items() if k not in ("name", "backend")}


def describe_cells() -> list[dict[str, Any]]:
    """One row per entry (for ``rtk plugins``); a failing plugin is a row, not an exception.

    Keys: name, distribution, version, value, status ("ok" | "failed"), reason
    (None when ok), backends (e.g. ["native", "loop"], from a 2x2 cell with
    default hparams; [] when failed).
    """
    rows = []
    for entry in cell_entries():
        row: dict[str, Any] = {"name": entry.name, "distribution": entry.dist,
                               "version": entry.version, "value": entry.value,
                               "status": "ok", "reason": None, "backends": []}
        try:
            _entry_for(entry.name)  # raises on a name clash
            row["backends"] = _load(entry)(2, 2).backends()
        except Exception as exc:
            row["status"] = "failed"
            row["reason"] = str(exc) if isinstance(exc, ToolkitError) else f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows
