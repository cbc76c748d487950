"""How every ``python -m export`` command refuses bad input: one line on stderr, exit code 2.

:func:`refusing` wraps a click command; the export stage's errors (:class:`ExportError`) and
the few user errors that come from numpy/torch land (``ValueError``, ``FloatingPointError``)
become :class:`BadInput`, whose exit code is :data:`BAD_INPUT` (click's own usage errors are
exit 2 as well). Nothing partial is left on disk: the commands write to temporary names.
"""

from __future__ import annotations

import functools

import click

from .errors import ExportError

#: exit code of every refused input of every export command
BAD_INPUT = 2


class BadInput(click.ClickException):
    """A refused input: one line, exit code :data:`BAD_INPUT`."""

    exit_code = BAD_INPUT


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def refusing(fn):
    """Turn the export stage's errors (and a few user errors from torch land) into one line, exit 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ExportError, ValueError, FloatingPointError) as exc:
            raise BadInput(first_line(exc)) from None
    return wrapper
