"""Which backends a board runs, said in one line when the one asked for does not exist for the
board or when none of the board's runtimes is installed here.

A board profile's ``backends`` list the runtimes that exist for it (the Raspberry Pi 3 on a
32-bit OS has LiteRT but no onnxruntime wheel); :func:`installed_backends` says which are here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import BackendUnavailableError, InputError

#: backend -> (what users call it, its runtime, how to install the runtime)
BACKEND_WORDS = {
    "onnx": ("ONNX", "onnxruntime", "pip install onnxruntime"),
    "tflite": ("TFLite", "LiteRT", "pip install 'edge-infer[tflite]'"),
}


def _words(backend: str) -> tuple[str, str, str]:
    return BACKEND_WORDS.get(backend, (backend, backend, f"install the {backend} runtime"))


def runs_only(board) -> str:
    """``"rpi3 runs TFLite only"`` / ``"rpi4 runs TFLite or ONNX"``."""
    names = " or ".join(_words(b)[0] for b in board.backends)
    return f"{board.name} runs {names}{' only' if len(board.backends) == 1 else ''}"


def not_on_board(board, backend: str) -> str | None:
    """Why ``backend`` cannot run on ``board`` (its runtime does not exist there), or None."""
    if backend in board.backends:
        return None
    return f"{runs_only(board)}: there is no {_words(backend)[1]} for it"


def missing_runtimes(board, installed: Sequence[str]) -> str | None:
    """What to install when none of ``board``'s backends is ``installed``, or None."""
    if any(b in installed for b in board.backends):
        return None
    runtimes = [_words(b)[1] for b in board.backends]
    which = f"{runtimes[0]} is not" if len(runtimes) == 1 else f"none of {', '.join(runtimes)} is"
    hints = "; or ".join(_words(b)[2] for b in board.backends)
    return f"{runs_only(board)}, and {which} installed here: {hints}"


def check_board_backend(board, backend: str | None, installed: Sequence[str]) -> None:
    """Refuse ``--backend`` that ``board`` cannot run, or (without one) a machine where none of
    the board's runtimes is installed; one line each, saying what to do."""
    if backend:
        why = not_on_board(board, backend)
        if why:
            raise InputError(f"{why}; use --backend {board.backends[0]} or leave --backend out")
        return
    missing = missing_runtimes(board, installed)
    if missing:
        raise BackendUnavailableError(missing)
