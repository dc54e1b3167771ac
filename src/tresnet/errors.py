"""Exceptions raised for users: each message names the bad value and the fix."""


class TResNetError(Exception):
    """Base class of every error this package raises for a user mistake."""


class ModelNotFoundError(TResNetError, KeyError):
    """An unknown model name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class CheckpointError(TResNetError):
    """A checkpoint that is missing, unreadable, or of another architecture."""


class InputSizeError(TResNetError, ValueError):
    """An input size the network cannot take."""


class DataError(TResNetError):
    """A data folder or image that cannot be used."""


class ConfigError(TResNetError, ValueError):
    """A bad option or recipe key."""


class MissingDependencyError(TResNetError, ImportError):
    """An optional extra that is not installed."""


class FileWriteError(TResNetError, OSError):
    """An output file (checkpoint, report, export) that cannot be written where asked.

    ``path`` is the file and ``reason`` the cause in words (``"no space left on device"``), when known.
    """

    def __init__(self, message: str, *, path=None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class CheckpointWriteError(CheckpointError, FileWriteError):
    """A checkpoint that cannot be written: a :class:`CheckpointError` that keeps the failed write's ``path`` and
    ``reason``, so a caller that handles any failed write (the trainer) handles this one too."""
