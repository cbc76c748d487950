"""``edge-infer batch``: the single-case run path over an archive of cases, on Dask.

``cases`` finds cases, ``cluster`` makes or joins the Dask cluster and loads the model once
per worker, ``runner`` submits cases and commits their outputs exactly once, ``summary``
writes the table, ``metrics`` scores cases against ground truth. ``adapter`` is the one
place that calls the single-case run path. Dask is optional: ``pip install 'edge-infer[batch]'``.
"""

from __future__ import annotations

from ..errors import InputError

INSTALL_HINT = "pip install 'edge-infer[batch]'"


def require_dask() -> None:
    """Check that Dask's ``distributed`` is importable, or say how to install it, in one line."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError(f"edge-infer batch needs Dask: {INSTALL_HINT}") from None
