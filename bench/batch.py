"""``batch`` (issue 17): `edge-infer batch` over an archive against a shell loop of `edge-infer run`.

Side by side, one run each, the same total threads and the same board (its memory budget is
what `run --board` plans to and what each Dask worker is limited to): a loop of fresh
`edge-infer run` processes (imports and model load per case), `edge-infer batch` on a local
cluster of 2 workers and on a simulated cluster (`dask scheduler` + two `dask worker`
processes on loopback), over 20 cases; then the scaling pair, 1 and 2 local workers of 1
backend thread each (the same cluster, one worker added), over a longer archive (the 20 cases
listed 3 times) so that the steady state lasts long enough to measure. Throughput is reported
end to end (the command's wall time: start, cluster, model load, summary, shut-down) and in
the steady state (from the summary's finish times, after every worker's first case).
Goals: batch with 2 workers >= 1.5x the loop's throughput (end to end); 2 workers >= 1.7x
one worker (steady state); identical masks; peak RSS per worker within the board budget.
"""

from __future__ import annotations

import csv
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import ROOT, Context, Result, read_mask, table

FULL = (20, (160, 160, 40))
QUICK = (4, (64, 64, 16))
REPEATS = 3         # the scaling pair's archive: every case listed this many times (distinct ids)
MODEL = "default"   # the bundled 2D model (its ONNX artifact: dynamic plane)
BOARD = "x86-host"  # whose memory budget `run --board` plans to; each worker is limited to it


def cases(ctx: Context) -> tuple[Path, list[str]]:
    from export.phantoms import write_cases

    n, shape = QUICK if ctx.quick else FULL
    root = ctx.cache / "batch-cases" / f"{n}x{'x'.join(map(str, shape))}"
    names = [f"bc_{s:04d}" for s in range(n)]
    if not all((root / c / f"{c}_seg.nii.gz").is_file() for c in names):
        write_cases(root, range(n), shape=shape, prefix="bc")
    return root, names


def longer_archive(root: Path, names: list[str], folder: Path) -> tuple[Path, dict[str, str]]:
    """A CSV listing every case :data:`REPEATS` times (ids ``<case>_r<k>``, truth included);
    returns it and each listed id's original case."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = {f"{c}_r{k}": c for k in range(REPEATS) for c in names}
    with open(folder / "archive.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "inputs", "truth"])
        w.writerows([i, root / c, root / c / f"{c}_seg.nii.gz"] for i, c in ids.items())
    return folder / "archive.csv", ids


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_infer.cli", *args]


def timed(cmd: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode not in (0,):
        raise RuntimeError(f"{' '.join(cmd[2:5])} exited {p.returncode}: {p.stderr.strip()[-300:]}")
    return time.perf_counter() - t0


def children_cpu_s() -> float:
    """CPU seconds (user + system) of every child process reaped so far (workers included)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the processes it started) of ``fn(*args)``."""
    c0 = children_cpu_s()
    wall = fn(*args)
    return wall, children_cpu_s() - c0


def shell_loop(root: Path, names: list[str], out: Path, threads: int) -> float:
    """A loop of `edge-infer run`, one fresh process per case, as a shell script would."""
    shutil.rmtree(out, ignore_errors=True)
    return sum(timed(_cli("run", str(root / c), "-o", str(out / c), "--model", MODEL, "--backend", "onnx",
                          "--board", BOARD, "--threads", str(threads), "-q")) for c in names)


def batch(inputs: Path, out: Path, *extra: str) -> float:
    shutil.rmtree(out, ignore_errors=True)  # a fresh batch: nothing to resume
    return timed(_cli("batch", str(inputs), "-o", str(out), "--model", MODEL, "--backend", "onnx",
                      "--board", BOARD, "-q", *extra))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_loopback_cluster(root: Path, out: Path, workers: int = 2) -> float:
    """`edge-infer batch --scheduler` on a `dask scheduler` and `workers` `dask worker`s (1 thread),
    started with the local cluster's Dask settings."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    port = addr.rsplit(":", 1)[1]
    from edge_infer.batch.cluster import dask_environment

    env = {**os.environ, **dask_environment()}  # the settings docs/batch.md gives for `dask worker`
    start = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True, "cwd": ROOT,
             "env": env}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", port, "--dashboard-address", ":0"], **start)]
    try:
        procs += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", addr, "--nthreads", "1",
                                    "--host", "127.0.0.1", "--dashboard-address", ":0"], **start)
                  for _ in range(workers)]
        time.sleep(3)
        return batch(root, out, "--scheduler", addr, "--threads", "1")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)


def same_masks(ids: dict[str, str], loop: Path, b: Path) -> bool:
    """Whether every case ``i`` under ``b`` has the mask of its original ``ids[i]`` under ``loop``."""
    return all(np.array_equal(read_mask(loop / c / f"{c}_mask.nii.gz"), read_mask(b / i / f"{c}_mask.nii.gz"))
               for i, c in ids.items())


def summary_rows(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def load_avg() -> str:
    """The 1, 5 and 15-minute load averages, as `uptime` prints them."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _row(key: str, name: str, n: int, wall_cpu: tuple[float, float], out: Path, masks: bool) -> dict:
    from edge_infer.batch.figures import steady_throughput

    secs, cpu = wall_cpu
    steady = steady_throughput(summary_rows(out)) if (out / "summary.csv").is_file() else None
    return {"key": key, "runner": name, "cases": n, "seconds": secs, "cases_per_s": n / secs,
            "steady_cases_per_s": steady, "cpu_s_per_case": cpu / n, "same_masks_as_loop": masks}


STAGES = ("read", "prepare", "infer", "finish", "write")


def _stage_row(name: str, rows: list[dict]) -> list:
    """Median seconds per case on its worker: each stage, the backend, the whole case (start to
    finish: stages, metrics, commit) and what is outside the stages (metrics, commit)."""
    ok = [r for r in rows if r["status"] == "ok"]
    stage = {k: [float(r[f"time_{k}_s"]) for r in ok] for k in STAGES}
    case = [float(r["finished_unix_s"]) - float(r["started_unix_s"]) for r in ok]
    outside = [c - sum(stage[k][i] for k in STAGES) for i, c in enumerate(case)]
    return [name, *(float(np.median(stage[k])) for k in STAGES), float(np.median([float(r["backend_s"]) for r in ok])),
            float(np.median(case)), float(np.median(outside))]


def _rss_rows(runs: dict[str, Path], budget: float) -> list[list]:
    from edge_infer.batch.figures import peak_rss_by_worker

    out = []
    for name, folder in runs.items():
        peaks = peak_rss_by_worker(summary_rows(folder))
        out += [[name, f"worker {i}", mb, budget, "PASS" if mb <= budget else "MISS"]
                for i, mb in enumerate(sorted(peaks.values()), 1)]
    return out


def run(ctx: Context) -> Result:
    load_start = load_avg()
    root, names = cases(ctx)
    work = ctx.work("batch")
    listing, ids = longer_archive(root, names, work / "archive")
    res = Result("batch", "Batch over an archive: `edge-infer batch` on Dask vs a shell loop of `edge-infer run`",
                 "python -m bench batch" + (" --quick" if ctx.quick else ""))
    t, same = ctx.threads, {c: c for c in names}
    loop = measured(shell_loop, root, names, work / "loop", t)
    res.rows.append(_row("loop", "shell loop of run", len(names), loop, work / "loop", True))
    half = str(max(t // 2, 1))
    runners = {"b2": ("batch, 2 local workers", batch, root, same, ("--workers", "2", "--threads", half)),
               "cl": ("batch, scheduler + 2 workers (loopback)", on_loopback_cluster, root, same, ()),
               "s1": ("scaling: 1 local worker x 1 thread", batch, listing, ids, ("--workers", "1", "--threads", "1")),
               "s2": ("scaling: 2 local workers x 1 thread", batch, listing, ids, ("--workers", "2", "--threads", "1"))}
    for key, (name, fn, src, cases_of, args) in runners.items():
        wall_cpu = measured(fn, src, work / key, *args)
        res.rows.append(_row(key, name, len(cases_of), wall_cpu, work / key,
                             same_masks(cases_of, work / "loop", work / key)))
    _report(res, ctx, work, load_start, len(ids))
    return res


def _report(res: Result, ctx: Context, work: Path, load_start: str, n_long: int) -> None:
    from edge_infer.boards import get_board

    by = {r["key"]: r for r in res.rows}
    loop, b2, s1, s2 = by["loop"], by["b2"], by["s1"], by["s2"]
    res.tables.append(table(
        ["runner", "cases", "wall s", "cases/s end to end", "cases/s steady state", "x loop (end to end)",
         "CPU s per case", "masks = loop"],
        [[r["runner"], r["cases"], r["seconds"], r["cases_per_s"], r["steady_cases_per_s"],
          r["cases_per_s"] / loop["cases_per_s"], r["cpu_s_per_case"],
          "yes" if r["same_masks_as_loop"] else "**no**"] for r in res.rows]))
    runs = {r["runner"]: work / r["key"] for r in res.rows if r["key"] != "loop"}
    res.tables.append(table(["runner (median s per case on its worker)", *STAGES, "backend", "whole case",
                             "outside the stages"], [_stage_row(k, summary_rows(f)) for k, f in runs.items()]))
    res.tables.append(table(["scaling pair", "wall s", "cases / steady rate s", "start + end s (the difference)"],
                            [[r["runner"], r["seconds"], r["cases"] / r["steady_cases_per_s"],
                              r["seconds"] - r["cases"] / r["steady_cases_per_s"]]
                             for r in (s1, s2) if r["steady_cases_per_s"]]))
    budget = get_board(BOARD).memory_budget_mb
    rss = _rss_rows(runs, budget)
    res.tables.append(table(["runner", "worker", "peak RSS MB", f"{BOARD} budget MB", "within"], rss))
    ratio = b2["cases_per_s"] / loop["cases_per_s"]
    end_to_end = s2["cases_per_s"] / s1["cases_per_s"]
    steady = (s2["steady_cases_per_s"] / s1["steady_cases_per_s"]
              if s1["steady_cases_per_s"] and s2["steady_cases_per_s"] else None)
    res.goal("batch (2 local workers) / shell loop, cases per second end to end", ratio, ">= 1.5", ratio >= 1.5)
    res.goal(f"2 workers / 1 worker (1 thread each), cases per second in the steady state ({n_long} cases)",
             steady, ">= 1.7", None if steady is None else steady >= 1.7)
    res.goal(f"2 workers / 1 worker (1 thread each), cases per second end to end ({n_long} cases; not the goal)",
             end_to_end, "-", None)
    res.goal("identical masks: loop, local batch, loopback cluster, scaling pair", None, "all cases",
             all(r["same_masks_as_loop"] for r in res.rows))
    top = max(r[2] for r in rss)
    res.goal("peak RSS per worker (MB)", top, f"<= {budget:.0f} ({BOARD} budget)", all(r[4] == "PASS" for r in rss))
    _notes(res, ctx, load_start, n_long)


def _notes(res: Result, ctx: Context, load_start: str, n_long: int) -> None:
    from edge_infer.boards import get_board

    n, shape = QUICK if ctx.quick else FULL
    t = ctx.threads
    load_end = load_avg()
    res.params.update({"cases": n, "shape": shape, "scaling_cases": n_long, "threads_total": t, "model": MODEL,
                       "backend": "onnx", "board": BOARD, "board_budget_mb": get_board(BOARD).memory_budget_mb,
                       "load_avg_start": load_start, "load_avg_end": load_end,
                       "throughput": {r["runner"]: r["cases_per_s"] for r in res.rows},
                       "steady_throughput": {r["runner"]: r["steady_cases_per_s"] for r in res.rows}})
    res.notes.append(f"{n} phantom cases {'x'.join(map(str, shape))}, bundled model `{MODEL}` (ONNX), every "
                     f"runner with `--board {BOARD}`; {t} threads in all: the loop's `run --threads {t}`, batch "
                     f"`--workers 2 --threads {max(t // 2, 1)}`; the scaling pair: `--workers 1 --threads 1` and "
                     f"`--workers 2 --threads 1` over the {n} cases listed {REPEATS} times in a CSV ({n_long} cases)")
    res.notes.append("end to end: cases over the command's wall time (process start, imports, cluster start, "
                     "model load, summary and validation report, shut-down: the user's view); steady state: "
                     "from the summary's finish times, the cases finished after the W-th (W workers) over the "
                     "time from the W-th finish to the last; the loop has no steady state apart from its end to end")
    res.notes.append("CPU s per case: user + system time of every process the runner started (cluster start "
                     "included), over the cases: what each runner costs whatever else shares the cores")
    res.notes.append(f"load average (1, 5, 15 min, as `uptime` prints it) at the start {load_start}, at the end "
                     f"{load_end}, on 2 cores; one run each")
