"""``python -m bench NAME [--quick] [--json FILE] [--results DIR]`` or ``python -m bench all [--quick] [--readme]``.

Prints markdown tables; writes ``NAME.json`` and PNG plots into the results folder
(``bench/results/``, or ``bench/results/quick/`` with ``--quick``). ``all --readme`` also
regenerates ``docs/performance.md`` and the README's performance block; ``readme`` does only
that, from the ``NAME.json`` files of the last full runs (each table keeps its own command
and date).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import RESULTS, Context, machine
from .registry import REGISTRY, benchmark



def run_one(name: str, ctx: Context, json_path: Path | None = None) -> dict:
    t0 = time.perf_counter()
    res = benchmark(name)(ctx)
    d = res.to_dict()
    d["seconds"] = round(time.perf_counter() - t0, 1)
    d["quick"] = ctx.quick
    d["measured_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    d["machine"] = machine()
    d["markdown"] = res.markdown()
    path = json_path or ctx.results / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d, indent=1, default=str) + "\n", encoding="utf-8")
    print(d["markdown"], flush=True)
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("name", help=f"one of: {', '.join(REGISTRY)}, all, readme")
    ap.add_argument("--quick", action="store_true", help="tiny volumes, few repetitions (CI)")
    ap.add_argument("--json", type=Path, default=None, help="write the JSON result here (one benchmark)")
    ap.add_argument("--results", type=Path, default=None, help="results folder [bench/results, quick: bench/results/quick]")
    ap.add_argument("--readme", action="store_true", help="with all: regenerate docs/performance.md and the README block")
    a = ap.parse_args(argv)
    if a.name == "readme":
        from . import report

        report.write_docs(RESULTS, "python -m bench readme (from the last full run of each benchmark)")
        return 0
    if a.name != "all" and a.name not in REGISTRY:
        print(f"unknown benchmark {a.name!r}; known: {', '.join(REGISTRY)}, all, readme", file=sys.stderr)
        return 2
    if a.readme and (a.name != "all" or a.quick):
        print("--readme needs a full run of all benchmarks: python -m bench all --readme", file=sys.stderr)
        return 2
    results = a.results or (RESULTS / "quick" if a.quick else RESULTS)
    ctx = Context(quick=a.quick, results=results, cache=RESULTS / "cache" if a.results is None else results / "cache")
    mach = machine()
    t0 = time.perf_counter()
    if a.name != "all":
        run_one(a.name, ctx, a.json)
        return 0
    done = [run_one(n, ctx) for n in REGISTRY]
    seconds = time.perf_counter() - t0
    command = "python -m bench all" + (" --quick" if a.quick else "") + (" --readme" if a.readme else "")
    from . import report

    meta = report.meta(command, seconds, mach)
    summary = {"meta": meta, "results": done}
    (results / "all.json").write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    if a.json:
        a.json.write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    print(report.goals_table(summary["results"]))
    print(f"\n{command}: {seconds:.0f} s")
    if a.readme:
        report.write_docs(results, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
