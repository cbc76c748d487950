"""A profile's judgement against a board: the roofline estimate per variant and the budget
verdict over the variants that ran (a variant skipped, e.g. for a runtime not installed, is
listed with its reason and never counts as a breach)."""

from __future__ import annotations

from .cropping import full_unit_equivalents
from .manifest import Manifest
from .plan import roofline_ms


def board_estimates(m: Manifest, rows: list[dict], board, geometry) -> dict:
    """Roofline estimate per variant for ``board`` (an estimate, never a measurement)."""
    out = {}
    for r in rows:
        if "latency_ms" not in r:
            continue
        act = int(r["memory_costs"]["per_unit_bytes"])
        bytes_moved = int(r["artifact_bytes"]) + 2 * act
        est = roofline_ms(m.macs, bytes_moved, board)
        units = full_unit_equivalents(r.get("volume", {}))   # of the cropped run (issue 15)
        if units:
            est["volume_infer_s"] = round(est["estimate_ms"] * units / 1e3, 3)
        out[r["variant"]] = est
    return {"label": f"ESTIMATE for {board.name} (roofline: {board.peak_gflops:g} GFLOP/s "
                     f"x {board.sustained_fraction:g} "
                     f"sustained, {board.bandwidth_gbs:g} GB/s); not measured on the board",
            "per_variant": out}


def variant_breaches(row: dict, board, unit_ms: float, on_board: bool) -> list[str]:
    """The budgets one variant that ran breaks, measured (``on_board``) or estimated."""
    reasons = []
    if unit_ms > board.latency_per_unit_ms:
        reasons.append(f"{unit_ms:.1f} ms per unit > {board.latency_per_unit_ms:g} ms")
    vol = row.get("volume", {})
    if "error" in vol:
        if vol.get("budget"):                            # the run was refused for the board's memory
            reasons.append(vol["error"])
        return reasons
    if vol:
        if on_board:
            total = vol["total_s"]
        else:
            units = full_unit_equivalents(vol)
            if units is None:
                raise ValueError("a profiled volume run without units cannot be estimated for a board")
            total = unit_ms * units / 1e3 + (vol["total_s"] - vol["timings_s"].get("infer", 0.0))
        if total > board.latency_per_volume_s:
            reasons.append(f"{total:.1f} s per volume > {board.latency_per_volume_s:g} s")
        peak = vol.get("peak_rss_mb") or 0
        if peak > board.memory_budget_mb:
            reasons.append(f"peak RSS {peak:.0f} MB > {board.memory_budget_mb:.0f} MB")
    return reasons


def verdict(rows: list[dict], board, estimate: dict, on_board: bool) -> dict:
    """Budget verdict per variant that ran: measured when this machine is the board's
    architecture, else from the estimate. ``ok`` is False only when a variant that ran breaks
    a budget; skipped variants are listed under ``skipped`` with their reason."""
    per = {}
    for r in rows:
        if "latency_ms" not in r:
            continue
        if on_board:
            unit_ms, basis = r["latency_ms"]["p95"], "measured (p95 per unit)"
        else:
            unit_ms, basis = estimate["per_variant"][r["variant"]]["estimate_ms"], "estimate (roofline)"
        if "error" in r.get("volume", {}) and not r["volume"].get("budget"):
            basis += "; per unit only, the volume run failed"
        reasons = variant_breaches(r, board, unit_ms, on_board)
        per[r["variant"]] = {"ok": not reasons, "basis": basis, "reasons": reasons}
    skipped = {r["variant"]: r["skipped"] for r in rows if "skipped" in r}
    return {"board": board.name, "ok": all(v["ok"] for v in per.values()), "per_variant": per, "skipped": skipped}
