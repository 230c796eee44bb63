"""The toolkit's own errors: each carries one sentence a user can act on.

The command-line entry points print ``error: <sentence>`` and exit with status 2
instead of a traceback (set ``HYDRA_FULL_ERROR=1`` or ``RTK_DEBUG=1`` to see it).
"""

from __future__ import annotations


def whole_number_problem(key: str, value, least: int = 1, null: bool = False) -> str | None:
    """The sentence for ``key=value`` when ``value`` is not a whole number of at least ``least``
    (a bool is not one; None is allowed when ``null``), else None."""
    if value is None and null:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        return f"{key}={value!r} must be a whole number of at least {least}" + (", or null" if null else "")
    return None


class ToolkitError(Exception):
    """A problem with the user's input, config, data, checkpoint or environment."""


class ConfigError(ToolkitError):
    """A config key has a bad value or keys combine badly."""


class DataError(ToolkitError):
    """A data file or data source cannot be read as asked."""


class CellError(ToolkitError):
    """A recurrent cell cannot be found, loaded or built."""


class CheckpointError(ToolkitError):
    """A checkpoint cannot be loaded or does not fit the command."""


class NumericError(ToolkitError):
    """Training produced a loss or gradient that is not a finite number."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM stopped the run.

    A BaseException like KeyboardInterrupt, so no ``except Exception`` on the way swallows it.
    ``step`` and ``epoch`` say where training stopped when it stopped at a checkpoint it wrote.
    """

    def __init__(self, signum: int, step: int | None = None, epoch: int | None = None):
        super().__init__(signum)
        self.signum, self.step, self.epoch = signum, step, epoch
