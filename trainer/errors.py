"""Exception root of the trainer; every error it raises on purpose derives from TrainerError."""

from __future__ import annotations


class TrainerError(Exception):
    """Root of all errors the trainer raises deliberately."""


class DataError(TrainerError):
    """The data source is missing or unreadable, or does not fit the config (columns, labels)."""


class ModelError(TrainerError):
    """The model cannot be loaded or its architecture is not supported."""


class NonFiniteLossError(TrainerError):
    """The training loss became NaN or infinite."""
