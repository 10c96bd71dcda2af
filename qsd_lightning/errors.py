"""The user's mistakes, as opposed to bugs in this package.

Anything raised as a :class:`UserError` is reported by ``python -m qsd_lightning`` (and the
comparison runner) as one line, ``error: <message>``, with exit status 1 and no traceback: the
message must name the problem and the fix. Every other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "DataNotFoundError", "CorruptDataError", "CheckpointError", "ConfigError"]


class UserError(Exception):
    """An error in the user's input, files or environment; reported in one line."""


class DataNotFoundError(UserError, FileNotFoundError):
    """The data is not on disk and could not be downloaded."""


class CorruptDataError(UserError, ValueError):
    """A data file exists but cannot be read as what it should be."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not exist, cannot be read safely, or does not fit the model."""


class ConfigError(UserError, ValueError):
    """Settings that parse but cannot work together (model and data that do not fit, ...)."""
