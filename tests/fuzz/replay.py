"""Replay corpus files through a harness, without mutation (CI, coverage, reproducers).

Usage::

    python -m fuzz.replay HARNESS PATH [PATH ...]     # files or folders; exit 1 on a violation
"""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable

from fuzz.targets import TARGETS, check, limited_memory


def corpus_files(paths: Iterable[Path]) -> list[Path]:
    """The files named, and the files inside the folders named, sorted."""
    out: list[Path] = []
    for p in paths:
        out += sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
    return out


def replay(name: str, files: list[Path]) -> tuple[Counter, list[tuple[Path, str]]]:
    """Outcomes of every file through harness ``name``, and the failures with their tracebacks."""
    target = TARGETS[name]
    counts: Counter = Counter()
    failures = []
    with limited_memory(), tempfile.TemporaryDirectory(prefix="edge-infer-replay-") as tmp, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            for path in files:
                try:
                    counts[check(target, path.read_bytes(), Path(tmp))] += 1
                except Exception:  # a finding: report it and carry on with the corpus
                    counts["failed"] += 1
                    failures.append((path, traceback.format_exc()))
        finally:
            logging.disable(logging.NOTSET)
    return counts, failures


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in TARGETS:
        print(f"usage: python -m fuzz.replay HARNESS PATH...; HARNESS is one of {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    counts, failures = replay(argv[0], corpus_files(Path(p) for p in argv[1:]))
    for path, tb in failures:
        print(f"FAILED {path}\n{tb}", file=sys.stderr)
    print(f"{argv[0]}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
