"""Small PNG plots (matplotlib, Agg). Each returns the file name, or None without matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, plt, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path.name


def stacked_stages(path: Path, rows: Sequence[dict], stages: Sequence[str], title: str,
                   label: str = "backend") -> str | None:
    """Horizontal stacked bars of seconds per stage, one bar per row."""
    plt = _plt()
    if plt is None or not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(rows)))
    left = [0.0] * len(rows)
    for st in stages:
        vals = [r["stages_s"].get(st) or 0.0 for r in rows]
        ax.barh([r[label] for r in rows], vals, left=left, label=st)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("seconds (median)")
    ax.set_title(title)
    ax.legend(ncol=len(stages), fontsize=7, loc="lower right")
    return _save(fig, plt, path)


def bars(path: Path, names: Sequence[str], values: Sequence[float], xlabel: str, title: str) -> str | None:
    plt = _plt()
    if plt is None or not names:
        return None
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(names)))
    ax.barh(list(names), list(values))
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, plt, path)


def loglog(path: Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, title: str) -> str | None:
    """Log-log lines ``name -> (x, y)``, each normalised to its first point."""
    plt = _plt()
    if plt is None or not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (x, y) in series.items():
        ax.loglog(x, [v / y[0] for v in y], "o-", label=name)
    x0 = next(iter(series.values()))[0]
    ax.loglog(x0, [v / x0[0] for v in x0], "k:", label="linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("relative to the smallest")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)
