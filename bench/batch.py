"""``batch`` (issue 17): `edge-infer batch` over an archive against a shell loop of `edge-infer run`.

Side by side, one run each, the same total threads: a loop of fresh `edge-infer run`
processes (imports and model load per case), `edge-infer batch` on a local cluster of 1 and of
2 workers, and on a simulated cluster (`dask scheduler` + two `dask worker` processes on
loopback). Masks are compared case by case; peak RSS per worker against the board budget.
Goals: batch with 2 workers >= 1.5x the loop's throughput; 2 workers >= 1.7x one worker.
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
MODEL = "default"   # the bundled 2D model (its ONNX artifact: dynamic plane)
BOARD = "x86-host"  # whose memory budget `run` plans to; peak RSS per worker is checked against it


def cases(ctx: Context) -> tuple[Path, list[str]]:
    from export.phantoms import write_cases

    n, shape = QUICK if ctx.quick else FULL
    root = ctx.cache / "batch-cases" / f"{n}x{'x'.join(map(str, shape))}"
    names = [f"bc_{s:04d}" for s in range(n)]
    if not all((root / c / f"{c}_seg.nii.gz").is_file() for c in names):
        write_cases(root, range(n), shape=shape, prefix="bc")
    return root, names


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
                          "--threads", str(threads), "-q")) for c in names)


def batch(root: Path, out: Path, *extra: str) -> float:
    shutil.rmtree(out, ignore_errors=True)  # a fresh batch: nothing to resume
    return timed(_cli("batch", str(root), "-o", str(out), "--model", MODEL, "--backend", "onnx", "-q", *extra))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_loopback_cluster(root: Path, out: Path, workers: int = 2) -> float:
    """`edge-infer batch --scheduler` on a `dask scheduler` and `workers` `dask worker`s (1 thread)."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    port = addr.rsplit(":", 1)[1]
    start = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
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


def same_masks(names: list[str], a: Path, b: Path) -> bool:
    return all(np.array_equal(read_mask(a / c / f"{c}_mask.nii.gz"), read_mask(b / c / f"{c}_mask.nii.gz"))
               for c in names)


def summary_rows(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def run(ctx: Context) -> Result:
    from edge_infer.boards import get_board

    root, names = cases(ctx)
    work = ctx.work("batch")
    res = Result("batch", "Batch over an archive: `edge-infer batch` on Dask vs a shell loop of `edge-infer run`",
                 "python -m bench batch" + (" --quick" if ctx.quick else ""))
    t = ctx.threads
    wall = {"shell loop of run": measured(shell_loop, root, names, work / "loop", t),
            "batch, 1 local worker": measured(batch, root, work / "b1", "--workers", "1", "--threads", "1"),
            "batch, 2 local workers": measured(batch, root, work / "b2", "--workers", "2", "--threads",
                                               str(max(t // 2, 1))),
            "batch, scheduler + 2 workers (loopback)": measured(on_loopback_cluster, root, work / "cl")}
    outs = dict(zip(wall, ("loop", "b1", "b2", "cl")))
    for k, (secs, cpu) in wall.items():
        res.rows.append({"runner": k, "seconds": secs, "cases_per_s": len(names) / secs,
                         "cpu_s_per_case": cpu / len(names),
                         "same_masks_as_loop": same_masks(names, work / "loop", work / outs[k])})
    tp = {r["runner"]: r["cases_per_s"] for r in res.rows}
    budget = get_board(BOARD).memory_budget_mb
    rss = {}
    for k, o in outs.items():
        if o != "loop":
            for r in summary_rows(work / o):
                rss[(k, r["worker"])] = max(rss.get((k, r["worker"]), 0.0), float(r["peak_rss_mb"]))
    dice = [float(r["dice_wt"]) for r in summary_rows(work / "b2") if r.get("dice_wt")]
    res.tables.append(table(["runner", "wall s", "cases/s", "x loop", "CPU s per case", "masks = loop"],
                            [[r["runner"], r["seconds"], r["cases_per_s"], r["cases_per_s"] / tp["shell loop of run"],
                              r["cpu_s_per_case"], "yes" if r["same_masks_as_loop"] else "**no**"] for r in res.rows]))
    res.tables.append(table(["runner", "worker", "peak RSS MB", f"{BOARD} budget MB"],
                            [[k, w, v, budget] for (k, w), v in sorted(rss.items())]))
    ratio = tp["batch, 2 local workers"] / tp["shell loop of run"]
    scale = tp["batch, 2 local workers"] / tp["batch, 1 local worker"]
    res.goal("batch (2 local workers) / shell loop, cases per second", ratio, ">= 1.5", ratio >= 1.5)
    res.goal("2 workers / 1 worker, cases per second", scale, ">= 1.7", scale >= 1.7)
    res.goal("identical masks: loop, local batch, loopback cluster", None, "all cases",
             all(r["same_masks_as_loop"] for r in res.rows))
    res.goal("peak RSS per worker (MB)", max(rss.values()), f"<= {budget:.0f} ({BOARD} budget)",
             max(rss.values()) <= budget)
    n, shape = QUICK if ctx.quick else FULL
    res.params.update({"cases": n, "shape": shape, "threads_total": t, "model": MODEL, "backend": "onnx",
                       "throughput": tp, "median_dice_wt": float(np.median(dice)) if dice else None})
    res.notes.append(f"{n} phantom cases {'x'.join(map(str, shape))}, bundled model `{MODEL}` (ONNX); "
                     f"{t} threads in all: the loop's `run --threads {t}`, batch `--workers 2 --threads {max(t // 2, 1)}`; "
                     "1 worker: `--workers 1 --threads 1`; wall times include process start, imports, cluster start "
                     "and model load (the user's view); one run each on a machine shared with other jobs")
    res.notes.append("CPU s per case: user + system time of every process the runner started (cluster start "
                     "included), over the cases: what each runner costs whatever else shares the cores; wall "
                     "times and throughput depend on that load (1-minute load average in params)")
    try:
        res.params["load_avg_1min_at_end"] = os.getloadavg()[0]
    except OSError:
        pass
    return res
