"""The exception hierarchy of the export stage; the CLI turns these into one-line errors."""

from __future__ import annotations


class ExportError(Exception):
    """Base of every error the export stage raises on purpose (message: one line, how to fix)."""


class UnknownModelError(ExportError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(ExportError):
    """A checkpoint is unreadable or does not match the chosen architecture."""


class DataError(ExportError):
    """A data folder is missing, lacks modalities, or has volumes on mismatched grids."""


class ConversionError(ExportError):
    """An export target cannot represent the model (an unsupported op, a failed conversion)."""


class ParityError(ExportError):
    """An exported artifact disagrees with PyTorch (or fp32) beyond the stated tolerance."""


class PruningError(ExportError):
    """A pruning method cannot be applied to this model or with these settings."""


class SpecError(ExportError):
    """A spec file (the manifest without artifacts) that fails the manifest validator."""


class SourceError(ExportError):
    """A model brought from elsewhere that cannot be imported as it is (says what to change)."""
