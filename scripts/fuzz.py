#!/usr/bin/env python
"""Coverage-guided fuzzing of every parser with Atheris (issue 18).

Usage::

    python scripts/fuzz.py --minutes 2                     # every harness 2 minutes; table into docs/reliability.md
    python scripts/fuzz.py --runs 100000 --minutes 30 --update-corpus   # 10^5 executions each (30 min at most)
    python scripts/fuzz.py --runs 100000 --minutes 30 --jobs 2          # two harnesses at a time (2 cores)
    python scripts/fuzz.py --minutes 0.5 --harness dicom --no-docs
    python scripts/fuzz.py --minutes 2 --update-corpus      # also merge what was found into tests/fuzz/corpus/
    python scripts/fuzz.py --merge-seeds SEEDS              # minimise `python -m fuzz.seeds SEEDS` into tests/fuzz/corpus/

Each harness (tests/fuzz/targets.py) runs for ``--minutes`` (or until ``--runs`` executions,
libFuzzer's ``-runs``, whichever comes first) under libFuzzer (``python -m fuzz.atheris_main``)
from a copy of its minimised corpus with its dictionary, with ``-timeout``, ``-rss_limit_mb``
and its input budget ``-max_len`` as its limits; after a crash it is restarted for the time and
executions left. Then coverage.py replays each final corpus (``python -m fuzz.replay``) and measures the
lines reached in the harness's target modules. Prints executions, coverage and crashes per
harness and, unless ``--no-docs``, writes the table between the markers in
docs/reliability.md. Crashing inputs are kept under ``--crashes``. Exit 1 if any crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the harnesses: tests/fuzz/

from fuzz.targets import RSS_LIMIT_MB, TARGETS, TIMEOUT_S, WORKDIR_ENV, workdir  # noqa: E402

CORPUS = ROOT / "tests" / "fuzz" / "corpus"
DICTS = ROOT / "tests" / "fuzz" / "dicts"
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- fuzz-table:start -->", "<!-- fuzz-table:end -->"
#: the reader modules whose line coverage the issue's goal is about (all harnesses together)
READER_MODULES = ("edge_infer/readers.py", "edge_infer/nifti.py", "edge_infer/dicom/", "edge_infer/seg.py",
                  "edge_infer/manifest.py", "edge_infer/boards.py", "edge_infer/toml_files.py",
                  "edge_infer/node/config.py", "edge_infer/node/scp.py")


@dataclass
class Result:
    """One harness's run."""

    harness: str
    seconds: float
    executions: int = 0
    elapsed: float = 0.0
    corpus: int = 0
    crashes: list[str] = field(default_factory=list)
    covered: int = 0
    lines: int = 0

    @property
    def rate(self) -> float:
        """Executions a second (wall clock, the harness's start-up included)."""
        return self.executions / self.elapsed if self.elapsed else 0.0

    @property
    def coverage(self) -> float:
        return 100.0 * self.covered / self.lines if self.lines else 0.0


def libfuzzer(harness: str, *args: str, log: Path) -> int:
    """Run ``fuzz.atheris_main`` for ``harness`` with libFuzzer ``args``; its output goes to ``log``."""
    cmd = [sys.executable, "-m", "fuzz.atheris_main", harness, *args]
    scratch = workdir()
    try:
        with log.open("a") as out:
            return subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**_env(), WORKDIR_ENV: str(scratch)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def fuzz_one(harness: str, seconds: float, work: Path, crashes: Path, runs: int = 0) -> Result:
    """Fuzz ``harness`` for ``seconds`` (or ``runs`` executions, if not 0) from a copy of its corpus
    in ``work``; restart after crashes."""
    result = Result(harness, seconds)
    corpus = work / harness
    shutil.copytree(CORPUS / harness, corpus) if (CORPUS / harness).is_dir() else corpus.mkdir(parents=True)
    crashes.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + seconds
    log = work / f"{harness}.log"
    flags = [f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}", "-print_final_stats=1",
             f"-artifact_prefix={crashes}/{harness}-", f"-max_len={TARGETS[harness].max_len}"]
    flags.append(f"-dict={DICTS / TARGETS[harness].dictionary}.dict")
    while (left := deadline - time.monotonic()) > 5 and (not runs or result.executions < runs):
        before = log.stat().st_size if log.exists() else 0
        more = [f"-runs={runs - result.executions}"] if runs else []
        rc = libfuzzer(harness, str(corpus), *flags, *more, f"-max_total_time={int(left)}", log=log)
        text = log.read_text(errors="replace")[before:]
        result.executions += sum(int(n) for n in re.findall(r"stat::number_of_executed_units:\s*(\d+)", text))
        if rc == 0:
            break
        result.crashes.append(_crash_line(text))
    result.elapsed = time.monotonic() - start
    result.corpus = sum(1 for _ in corpus.iterdir())
    return result


def _crash_line(text: str) -> str:
    """The exception (or libFuzzer's reason) of a crash, from the fuzzer's output."""
    unit = re.findall(r"Test unit written to (\S+)", text)
    where = f" [{Path(unit[-1]).name}]" if unit else " [no input written]"
    for pattern in (r"^(\w+(?:Error|Exception|Violation|Exit)\b[^\n]*)$", r"==\d+== ERROR: libFuzzer: ([^\n]*)",
                    r"(out-of-memory[^\n]*|timeout[^\n]*)"):
        found = re.findall(pattern, text, flags=re.M)
        if found:
            return found[-1][:160] + where
    return "crash (see the log)" + where


def measure_coverage(results: list[Result], work: Path) -> float:
    """Replay each final corpus under coverage.py; set each result's lines of its target modules.

    Returns the percentage of lines of :data:`READER_MODULES` reached by all corpora together.
    """
    data = work / "coverage"
    data.mkdir(exist_ok=True)
    for r in results:
        cov = data / f"{r.harness}.cov"
        subprocess.call([sys.executable, "-m", "coverage", "run", f"--data-file={cov}", "--source=edge_infer",
                         "-m", "fuzz.replay", r.harness, str(work / r.harness)], cwd=ROOT, env=_env(),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r.covered, r.lines = _lines(_coverage_report(cov), TARGETS[r.harness].modules)
    every = data / "all.combined"
    subprocess.check_call([sys.executable, "-m", "coverage", "combine", "-q", "--keep", f"--data-file={every}",
                           *(str(data / f"{r.harness}.cov") for r in results)], cwd=ROOT, stdout=subprocess.DEVNULL)
    covered, lines = _lines(_coverage_report(every), READER_MODULES)
    return 100.0 * covered / lines if lines else 0.0


def _coverage_report(data_file: Path) -> dict:
    """coverage.py's JSON report of one data file."""
    out = data_file.with_suffix(".json")
    subprocess.check_call([sys.executable, "-m", "coverage", "json", "-q", f"--data-file={data_file}", "-o", str(out)],
                          cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def _lines(report: dict, modules: tuple[str, ...]) -> tuple[int, int]:
    """(covered, total) statements of the files under ``modules`` (dotted names or paths)."""
    prefixes = [m if "/" in m else m.replace(".", "/") for m in modules]
    covered = total = 0
    for name, info in report["files"].items():
        rel = name.replace(os.sep, "/")
        if any(rel == p or rel.startswith(p.rstrip("/") + "/") or rel == p + ".py" for p in prefixes):
            covered += info["summary"]["covered_lines"]
            total += info["summary"]["num_statements"]
    return covered, total


def table(results: list[Result], readers: float, command: str) -> str:
    """The generated markdown table."""
    rows = [f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs, shared). "
            f"Line coverage of the reader modules by all corpora together: **{readers:.1f}%**.", "",
            "| harness | target modules | seconds | executions | exec/s | corpus files | lines covered | crashes |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        crashes = "; ".join(sorted(set(r.crashes))) or "0"
        rows.append(f"| {r.harness} | {', '.join(f'`{m}`' for m in TARGETS[r.harness].modules)} | {r.elapsed:.0f} | "
                    f"{r.executions:,} | {r.rate:.0f} | {r.corpus} | {r.covered}/{r.lines} ({r.coverage:.1f}%) | "
                    f"{len(r.crashes)}{': ' + crashes if r.crashes else ''} |")
    return "\n".join(rows)


def write_doc(text: str) -> None:
    """Replace the text between the markers in docs/reliability.md."""
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"error: {DOC} has no {START} ... {END} markers; add them where the table goes")
    head, rest = doc.split(START, 1)
    DOC.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def merge_into_corpus(harness: str, *sources: Path, work: Path) -> int:
    """Minimise ``tests/fuzz/corpus/HARNESS`` plus ``sources`` with libFuzzer ``-merge=1``; return the file count.

    Files over the harness's input budget are left out (the fuzzer would only see their start)."""
    merged, small = work / f"merged-{harness}", work / f"within-budget-{harness}"
    merged.mkdir(parents=True)
    small.mkdir(parents=True)
    budget = TARGETS[harness].max_len
    for k, path in enumerate(p for folder in (CORPUS / harness, *sources) if folder.is_dir() for p in folder.iterdir()):
        if path.is_file() and path.stat().st_size <= budget:
            shutil.copyfile(path, small / f"{k:06d}-{path.name}")
    libfuzzer(harness, str(merged), str(small), "-merge=1", f"-timeout={TIMEOUT_S}", f"-max_len={budget}",
              f"-rss_limit_mb={RSS_LIMIT_MB}", log=work / f"merge-{harness}.log")
    shutil.rmtree(CORPUS / harness, ignore_errors=True)
    shutil.copytree(merged, CORPUS / harness)
    return sum(1 for _ in merged.iterdir())


def fuzz_all(names: list[str], args: argparse.Namespace, work: Path) -> list[Result]:
    """Fuzz every harness named, ``args.jobs`` at a time; print each as it ends; results in ``names``' order."""
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        running = {pool.submit(fuzz_one, name, args.minutes * 60.0, work, args.crashes, args.runs): name
                   for name in names}
        for done in as_completed(running):
            r = done.result()
            print(f"{r.harness:13s} executions {r.executions:8d} in {r.elapsed:5.0f} s ({r.rate:4.0f}/s)  "
                  f"corpus {r.corpus:4d}  crashes {len(r.crashes)}", flush=True)
            for line in sorted(set(r.crashes)):
                print(f"              {line}")
    return sorted((f.result() for f in running), key=lambda r: names.index(r.harness))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="minutes per harness, at most [2]")
    parser.add_argument("--runs", type=int, default=0, help="stop a harness after N executions (libFuzzer -runs) [0: no limit]")
    parser.add_argument("--jobs", type=int, default=1, help="harnesses fuzzed at the same time [1]")
    parser.add_argument("--harness", action="append", choices=sorted(TARGETS), help="only this harness (repeatable)")
    parser.add_argument("--crashes", type=Path, default=ROOT / "fuzz-crashes", help="folder for crashing inputs")
    parser.add_argument("--no-docs", action="store_true", help="do not write the table into docs/reliability.md")
    parser.add_argument("--update-corpus", action="store_true", help="merge the inputs found into tests/fuzz/corpus/")
    parser.add_argument("--merge-seeds", type=Path, metavar="SEEDS", help="minimise SEEDS/HARNESS into tests/fuzz/corpus/ and stop")
    args = parser.parse_args(argv)
    names = args.harness or list(TARGETS)
    with tempfile.TemporaryDirectory(prefix="edge-infer-fuzz-") as tmp:
        work = Path(tmp)
        if args.merge_seeds:
            for name in names:
                print(f"{name:13s} corpus files {merge_into_corpus(name, args.merge_seeds / name, work=work)}", flush=True)
            return 0
        results = fuzz_all(names, args, work)
        readers = measure_coverage(results, work)
        for r in results:
            print(f"{r.harness:13s} coverage {r.covered}/{r.lines} lines ({r.coverage:.1f}%) of {', '.join(TARGETS[r.harness].modules)}")
        print(f"reader modules, all corpora: {readers:.1f}% of lines")
        if args.update_corpus:
            for r in results:
                merge_into_corpus(r.harness, work / r.harness, work=work)
        if not args.no_docs:
            command = "python scripts/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:])
            write_doc(table(results, readers, command.strip()))
    crashed = sum(len(r.crashes) for r in results)
    print(f"total executions {sum(r.executions for r in results)}, crashes {crashed}"
          + (f" (inputs in {args.crashes}/)" if crashed else ""))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
