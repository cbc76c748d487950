"""Run one harness under Atheris/libFuzzer.

Usage::

    python -m fuzz.atheris_main HARNESS CORPUS_DIR [SEED_DIR ...] [libFuzzer flags]
    PYTHONPATH=tests python -m fuzz.atheris_main nifti tests/fuzz/corpus/nifti -max_total_time=60 -timeout=10 -rss_limit_mb=2048

The edge_infer modules are instrumented for coverage feedback (the libraries they call are
not: it would slow every execution several times). The harness's files go to a folder on
``/dev/shm`` (:func:`fuzz.targets.workdir`). Any exception that escapes the property
(:func:`fuzz.targets.check`) is a crash: libFuzzer writes the input under
``-artifact_prefix`` and stops. A dictionary for the harness is under ``tests/fuzz/dicts/``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["edge_infer"]):
    import edge_infer.boards  # noqa: F401
    import edge_infer.dicom  # noqa: F401
    import edge_infer.manifest  # noqa: F401
    import edge_infer.nifti  # noqa: F401
    import edge_infer.node.config  # noqa: F401
    import edge_infer.node.scp  # noqa: F401
    import edge_infer.node.spool  # noqa: F401
    import edge_infer.readers  # noqa: F401
    import edge_infer.seg  # noqa: F401
    import edge_infer.toml_files  # noqa: F401

from fuzz.targets import TARGETS, WORKDIR_ENV, check, limit_memory, memoise_highdicom, workdir  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.atheris_main HARNESS [libFuzzer args]; HARNESS is one of {', '.join(TARGETS)}")
    target = TARGETS[argv[1]]
    given = os.environ.get(WORKDIR_ENV)
    folder = Path(given) if given else workdir()
    if not given:  # runs where the interpreter ends normally (libFuzzer's exit() skips it)
        atexit.register(shutil.rmtree, folder, True)
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    limit_memory()
    if target.name == "seg":
        memoise_highdicom()

    def one_input(data: bytes) -> None:
        check(target, data, folder)

    # libFuzzer re-runs argv[0] through the shell for -merge and -fork: make it this command
    again = f"{sys.executable} -m fuzz.atheris_main {target.name}"
    atheris.Setup([again, *argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
