"""The exception hierarchy of edge-infer.

Every error a user can cause is an :class:`EdgeInferError`; its message is one line that says
what is wrong and how to fix it. Only the CLI turns these into exit codes:

========================  ====  ==============================================
exception                 exit  meaning
========================  ====  ==============================================
InputError (and below)    2     bad scan, bad model, bad option, bad profile
BudgetError               3     the run does not fit the board's budget
anything else             1     an internal error (a bug: please report it)
========================  ====  ==============================================
"""

from __future__ import annotations


class EdgeInferError(Exception):
    """Base of every error edge-infer raises on purpose."""

    exit_code = 1


class InputError(EdgeInferError):
    """The user's input (scan, model, option, file) cannot be used as given."""

    exit_code = 2


class ScanError(InputError):
    """A scan is missing, unreadable, inconsistent or implausible."""


class ModalityError(ScanError):
    """Modalities are missing, duplicated, extra, or cannot be mapped."""


class GeometryError(ScanError):
    """Volumes disagree on their grid, or a geometry cannot be handled."""


class UnsupportedTransferSyntaxError(ScanError):
    """A DICOM transfer syntax needs an optional decoder that is not installed."""


class ModelError(InputError):
    """A model artifact or its manifest is missing, malformed or inconsistent."""


class IntegrityError(ModelError):
    """An artifact's sha256 differs from the one its manifest pins."""


class BackendUnavailableError(InputError):
    """An optional backend package is not installed."""


class ProfileError(InputError):
    """A board profile is unknown or malformed."""


class OutputError(InputError):
    """An output cannot be written (folder missing, disk full, format impossible)."""


class ConfigError(InputError):
    """A node or tool configuration is malformed."""


class NodeError(InputError):
    """The DICOM node cannot start or run (port in use, spool unusable)."""


class BudgetError(EdgeInferError):
    """A run does not fit the memory or latency budget of a board."""

    exit_code = 3
