"""Load and first-run a model in a child process before the node trusts it.

A model that crashes its backend (a segfault in the runtime, an abort) takes down only the
child: the node refuses the model with one line instead of dying while serving.
Run as ``python -m edge_infer.node.probe MODEL [BACKEND] [THREADS]``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence

from ..errors import NodeError


def probe_model(model: str | None, backend: str | None = None, threads: int = 0, *,
                python: Sequence[str] | None = None, timeout: float = 300.0) -> None:
    """Load ``model`` and run it once on a zero input in a child process.

    Raises
    ------
    NodeError
        when the child dies by a signal, fails, or hangs; the message says which.
    """
    cmd = [*(python or [sys.executable]), "-m", "edge_infer.node.probe", model or "", backend or "", str(threads)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NodeError(f"the model did not load and run within {timeout:.0f} s in a probe process; "
                        "the node refuses it") from None
    if p.returncode < 0:
        try:
            name = signal.Signals(-p.returncode).name
        except ValueError:
            name = f"signal {-p.returncode}"
        raise NodeError(f"the model crashed its backend in a probe process ({name}); the node refuses it: "
                        "check the model with `edge-infer verify` or try another --backend")
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["failed"])[-1]
        raise NodeError(f"the model failed its probe run: {last}")


def _main(argv: Sequence[str]) -> int:
    import numpy as np

    from ..errors import EdgeInferError
    from ..model import load_model
    from ..verify import probe_input

    model, backend, threads = (list(argv) + ["", "", "0"])[:3]
    try:
        lm = load_model(model or None, backend=backend or None, threads=int(threads or 0))
        y = lm.backend.run(probe_input(lm.manifest, lm.backend.input))
        if not np.all(np.isfinite(y)):
            print("the model produced NaN or Inf on a zero input", file=sys.stderr)
            return 2
    except EdgeInferError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover - run in the child
    sys.exit(_main(sys.argv[1:]))
