"""Exception root of the trainer; every error it raises on purpose derives from TrainerError."""

from __future__ import annotations


class TrainerError(Exception):
    """Root of all errors the trainer raises deliberately."""


class DataError(TrainerError):
    """The data source is missing or unreadable, or does not fit the config (columns, labels).

    ``field`` names the study-spec field at fault (``data.source``, ``data.label``, …).
    """

    def __init__(self, message: str, field: str = "data.source") -> None:
        super().__init__(message)
        self.field = field


class ModelError(TrainerError):
    """The model cannot be loaded or its architecture is not supported."""


class NonFiniteLossError(TrainerError):
    """The training loss became NaN or infinite."""


class ConfigError(TrainerError):
    """A hyperparameter or config value is out of range; the message names it and its value."""
