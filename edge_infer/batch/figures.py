"""Figures of a finished batch, from its summary rows (as :mod:`.runner` returns them or as
``summary.csv`` holds them): steady-state throughput, and peak RSS per worker against a budget.
"""

from __future__ import annotations

from collections.abc import Sequence


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _ran(rows: Sequence[dict]) -> list[dict]:
    """The rows of cases run by this batch (not resumed from an earlier one)."""
    return [r for r in rows if str(r.get("resumed", "")).lower() not in ("true", "1")]


def steady_throughput(rows: Sequence[dict]) -> float | None:
    """Cases per second once every worker is busy: with W workers (distinct ``worker`` values),
    the cases finished after the W-th one over the time from the W-th finish to the last.

    Cluster start, model load, the first case's warm-up on each worker and the summary are
    outside this window; with one worker it is ``(n - 1) / (last - first)``. None when fewer
    than W + 1 cases ran or their ``finished_unix_s`` is missing.
    """
    ran = _ran(rows)
    ends = sorted(t for t in (_number(r.get("finished_unix_s")) for r in ran) if t is not None)
    workers = len({r.get("worker") for r in ran if r.get("worker")}) or 1
    if len(ends) <= workers or ends[-1] <= ends[workers - 1]:
        return None
    return (len(ends) - workers) / (ends[-1] - ends[workers - 1])


def peak_rss_by_worker(rows: Sequence[dict]) -> dict[str, float]:
    """The highest ``peak_rss_mb`` each worker reported (MB), by worker address."""
    out: dict[str, float] = {}
    for r in _ran(rows):
        mb, worker = _number(r.get("peak_rss_mb")), r.get("worker")
        if mb is not None and worker:
            out[worker] = max(out.get(worker, 0.0), mb)
    return out


def rss_line(rows: Sequence[dict], budget_mb: float | None, board: str | None) -> str | None:
    """One line: the largest peak RSS of any worker, and against the board's budget when there
    is one (``within`` or ``OVER``); None when no worker reported one."""
    peaks = peak_rss_by_worker(rows)
    if not peaks:
        return None
    top = max(peaks.values())
    line = f"peak RSS per worker: up to {top:.0f} MB over {len(peaks)} worker{'s' * (len(peaks) != 1)}"
    if budget_mb is not None:
        verdict = "within" if top <= budget_mb else "OVER"
        line += f", {verdict} the {board} budget of {budget_mb:.0f} MB"
    return line
