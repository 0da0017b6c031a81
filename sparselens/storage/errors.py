"""Errors raised by the run store; each message says what was wrong and what to do about it."""

from __future__ import annotations


class RunNotFoundError(FileNotFoundError):
    """The run directory (its manifest.json) does not exist under the given root."""


class TableNotFoundError(FileNotFoundError):
    """A Parquet table was asked for that the run has not written."""


class ModelNotFoundError(FileNotFoundError):
    """A final model was asked for that the run has not saved."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint or model file exists but cannot be loaded (truncated or otherwise damaged)."""
