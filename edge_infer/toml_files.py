"""Reading a TOML document (board profile, node configuration) with one error style.

Every failure is one line naming the document and what to fix: ``<what> <path> cannot be
read: <reason>``, ``... is not valid TOML: <parser message>``, ``... is not usable TOML (...)``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import EdgeInferError


def read_toml(path: str | Path, what: str, error: type[EdgeInferError]) -> dict[str, Any]:
    """The TOML document at ``path`` as a dict; ``what`` names it in errors (e.g. "board profile").

    Raises
    ------
    error
        The file cannot be read, is not UTF-8, is not TOML, nests too deep or holds an
        integer too long to use.
    """
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} cannot be read: it is not UTF-8 text ({exc.reason})") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, an integer too long
        raise error(f"{what} {path} is not usable TOML ({str(exc).splitlines()[0][:200]})") from None
