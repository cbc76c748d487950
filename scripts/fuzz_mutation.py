#!/usr/bin/env python
"""Mutation fuzzing (no coverage feedback; issue 7) of the readers: NIfTI, DICOM series, manifest, profile.

The coverage-guided fuzzing is scripts/fuzz.py (Atheris). This run reproduces the issue-7
figures in docs/reliability.md.

Usage::

    python scripts/fuzz_mutation.py --minutes 10                # time split evenly over the harnesses
    python scripts/fuzz_mutation.py --minutes 2 --harness dicom --seed 7 --crashes fuzz-crashes/

Each harness mutates its seeds (tests/fuzz_corpus.py) and checks that every input loads or
raises edge-infer's documented error (EdgeInferError, one line), within a per-input time
bound and a traced memory bound. Prints executions, outcomes and failures per harness; each
failing input is saved under ``--crashes`` with its traceback. Exit 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fuzz_corpus as fc  # noqa: E402


def fuzz_harness(name: str, seconds: float, seed: int, crashes: Path, trace_every: int) -> dict:
    """Run one harness for ``seconds``; return its counts."""
    harness = fc.HARNESSES[name]
    seeds = harness.seeds()
    rng = random.Random(f"{name}-{seed}")
    counts: Counter = Counter()
    failures: Counter = Counter()
    peak_max = 0
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as tmp:
        workdir = Path(tmp)
        while time.monotonic() < deadline:
            case_seed = rng.getrandbits(64)
            case_rng = random.Random(case_seed)
            seed_input = seeds[case_rng.randrange(len(seeds))]
            data = harness.mutate(case_rng, seed_input)
            counts["executions"] += 1
            try:
                outcome, peak = fc.run_bounded(harness, data, seed_input, workdir,
                                               trace=counts["executions"] % trace_every == 0)
                counts[outcome] += 1
                peak_max = max(peak_max, peak)
            except Exception as exc:  # a finding: save it and carry on
                key = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                failures[key] += 1
                counts["failures"] += 1
                if failures[key] == 1:
                    _save(crashes, name, case_seed, seed_input, data, traceback.format_exc())
    return {"harness": name, "seeds": len(seeds), **counts, "traced_peak_max_mib": round(peak_max / 2**20, 1),
            "distinct_failures": dict(failures)}


def _save(crashes: Path, name: str, case_seed: int, seed_input, data, tb: str) -> None:
    crashes.mkdir(parents=True, exist_ok=True)
    stem = crashes / f"{name}-{case_seed:016x}"
    if isinstance(data, bytes):
        stem.with_suffix(".bin").write_bytes(data)
    elif isinstance(data, list):
        for k, part in enumerate(data):
            stem.with_name(f"{stem.name}-{k}.dcm").write_bytes(part)
    else:
        stem.with_suffix(".json").write_text(json.dumps(data, default=repr))
    stem.with_suffix(".txt").write_text(f"seed input: {seed_input.name}\n\n{tb}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="total time, split over the harnesses")
    parser.add_argument("--harness", action="append", choices=sorted(fc.HARNESSES),
                        help="run only this harness (repeatable) [default: all]")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the run")
    parser.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"), help="folder for failing inputs")
    parser.add_argument("--trace-every", type=int, default=1,
                        help="trace memory on every Nth input (tracing costs ~2x time) [default: every]")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("nibabel").setLevel(logging.CRITICAL)
    names = args.harness or list(fc.HARNESSES)
    seconds = args.minutes * 60.0 / len(names)
    results = []
    for name in names:
        r = fuzz_harness(name, seconds, args.seed, args.crashes, max(1, args.trace_every))
        results.append(r)
        if not args.json:
            print(f"{name:9s} seeds {r['seeds']:3d}  executions {r.get('executions', 0):7d}  loaded "
                  f"{r.get('loaded', 0):6d}  refused {r.get('refused', 0):7d}  failures {r.get('failures', 0):4d}  "
                  f"traced peak {r['traced_peak_max_mib']:.0f} MiB", flush=True)
            for key, n in r["distinct_failures"].items():
                print(f"          {n:5d} x {key}")
    total = sum(r.get("executions", 0) for r in results)
    failed = sum(r.get("failures", 0) for r in results)
    if args.json:
        print(json.dumps({"minutes": args.minutes, "seed": args.seed, "executions": total, "failures": failed,
                          "harnesses": results}, indent=2))
    else:
        print(f"total     executions {total}, failures {failed}" + (f" (inputs in {args.crashes}/)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
