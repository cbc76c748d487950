"""The click group every edge-infer command runs under: only here do errors become exit codes.

0 ok, 2 bad input or usage, 3 budget exceeded, 1 internal error. A user error is one line on
stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import sys
import traceback

import click

from .errors import EdgeInferError

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_BUDGET = 0, 1, 2, 3


class Group(click.Group):
    """A click group that turns edge-infer errors into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except EdgeInferError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # e.g. `edge-infer boards | head`
            sys.stderr.close()
            ctx.exit(EXIT_OK)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("error: out of memory; use a smaller batch (--batch) or a board profile (--board)", err=True)
            ctx.exit(EXIT_BUDGET)
        except Exception as exc:  # an internal error: say so, keep the traceback for --debug
            if debug:
                traceback.print_exc()
            click.echo(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug and report it)", err=True)
            ctx.exit(EXIT_INTERNAL)
