"""Shared helpers: results folder, fresh-process workers, interleaved timing, Dice, tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
#: backend threads for every peer (torch.set_num_threads, ORT intra-op, LiteRT num_threads)
THREADS = min(2, os.cpu_count() or 1)


@dataclass
class Context:
    """What every benchmark gets: quick or full, where results and the cache live."""

    quick: bool = False
    results: Path = RESULTS
    cache: Path = RESULTS / "cache"
    threads: int = THREADS

    @property
    def reps(self) -> int:
        return 1 if self.quick else 3

    def work(self, name: str) -> Path:
        p = self.cache / "work" / name
        p.mkdir(parents=True, exist_ok=True)
        return p


@dataclass
class Result:
    """One benchmark's outcome: rows (one per compared thing), goals, notes, markdown."""

    name: str
    title: str
    command: str
    rows: list[dict] = field(default_factory=list)
    goals: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    def goal(self, text: str, value: float | None, target: str, met: bool | None) -> None:
        self.goals.append({"goal": text, "value": value, "target": target, "met": met})

    def to_dict(self) -> dict:
        return {"benchmark": self.name, "title": self.title, "command": self.command, "params": self.params,
                "rows": self.rows, "goals": self.goals, "notes": self.notes, "tables": self.tables,
                "plots": self.plots}

    def markdown(self) -> str:
        out = [f"### {self.title}", "", f"`{self.command}`", ""]
        for t in self.tables:
            out += [t, ""]
        if self.goals:
            out += [table(["goal", "measured", "target", "met"],
                          [[g["goal"], _fmt(g["value"]), g["target"],
                            {True: "yes", False: "**no**", None: "n/a"}[g["met"]]] for g in self.goals]), ""]
        out += [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table; floats shown with 3 significant digits."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(c) for c in r) + " |")
    return "\n".join(lines)


def machine() -> dict:
    """A description of this machine for the report."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    from importlib import metadata

    vers = {}
    for dist in ("numpy", "onnxruntime", "ai-edge-litert", "torch", "monai"):
        try:
            vers[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:   # a peer that is not installed is simply absent
            vers[dist] = None
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.machine()}", "load_avg_1min_at_start": load, "versions": vers}


# -- fresh processes ------------------------------------------------------------------------
def run_python(args: Sequence[str], timeout: float = 1800) -> dict:
    """Run ``python ARGS`` in a fresh process; its last stdout line is JSON. Adds the
    process wall time; a failure becomes ``{"error": last stderr line}``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()] or ["failed"]
        return {"error": tail[-1][:400], "returncode": p.returncode}
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError:
        lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
        out = json.loads(lines[-1])
    out["process_wall_s"] = round(wall, 4)
    return out


def peer(name: str, **kwargs) -> dict:
    """One run of peer ``name`` (see :mod:`bench.peers`) in a fresh process."""
    args = ["-m", "bench.peers", name]
    for k, v in kwargs.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return run_python(args)


def alternate(names: Sequence[str], reps: int, once: Callable[[str, int], dict]) -> dict[str, list[dict]]:
    """Run ``once(name, rep)`` for every name, ``reps`` rounds, rotating the order each round
    so that no peer always runs first (or right after a heavy one) on a noisy machine."""
    out: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in list(names[k:]) + list(names[:k]):
            out[n].append(once(n, r))
    return out


def median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


# -- masks ----------------------------------------------------------------------------------
#: BraTS regions as label sets
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def region_dice(la: np.ndarray, lb: np.ndarray) -> dict[str, float]:
    """Dice per BraTS region (WT, TC, ET) between two label maps, and their minimum."""
    out = {r: round(dice(np.isin(la, v), np.isin(lb, v)), 6) for r, v in REGIONS.items()}
    out["min"] = min(out.values())
    return out


def read_mask(path: str | Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def matmul_gflops(n: int = 2048, reps: int = 3) -> float:
    """float32 matmul ``n x n`` GFLOP/s with numpy (best of ``reps``; 2 n^3 FLOP each)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9
