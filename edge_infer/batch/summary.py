"""The batch's summary table: one row per case, written as ``summary.csv`` (and
``summary.parquet`` when pyarrow is installed), atomically.

Columns, in this order (per-label, per-stage and per-region columns as the rows have them):

``case, status, error, resumed, worker, model, model_version, model_sha256,
volume_<label>_ml..., time_<stage>_s..., backend_s, peak_rss_mb, started_unix_s,
finished_unix_s, outputs, dice_<region>..., hd95_<region>_mm...``
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from ..writers import commit_files

FIRST = ("case", "status", "error", "resumed", "worker", "model", "model_version", "model_sha256")
GROUPS = (("volume_", "_ml"), ("time_", "_s"), ("backend_s", ""), ("peak_rss_mb", ""), ("started_unix_s", ""),
          ("finished_unix_s", ""), ("outputs", ""),
          ("dice_", ""), ("hd95_", "_mm"))


def column_name(text: str) -> str:
    return "_".join(text.lower().split())


def report_row(report: dict) -> dict:
    """The summary columns of one case from its run report (no patient data: the report's
    input identity is left out)."""
    row: dict[str, float | str] = {f"volume_{column_name(k)}_ml": round(float(v), 4)
                                   for k, v in report["volumes_ml"].items()}
    row.update({f"time_{k}_s": float(v) for k, v in report["timings_s"].items()})
    row["backend_s"] = float(report["backend_seconds"])
    row["peak_rss_mb"] = float(report["peak_rss_mb"])
    row["outputs"] = ";".join(report["outputs"].values())
    return row


def columns(rows: Sequence[dict]) -> list[str]:
    """All columns of ``rows`` in the documented order."""
    seen = {k for r in rows for k in r}
    out = list(FIRST)
    for head, tail in GROUPS:
        out.extend(sorted(k for k in seen if k.startswith(head) and k.endswith(tail) and k not in out))
    out.extend(sorted(seen - set(out)))
    return out


def csv_bytes(rows: Sequence[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns(rows), restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def parquet_bytes(rows: Sequence[dict]) -> bytes | None:
    """The rows as Parquet, or None when pyarrow is not installed."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    cols = columns(rows)
    table = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_summary(rows: Sequence[dict], out: Path) -> dict[str, Path]:
    """Write ``out/summary.csv`` (and ``summary.parquet``) atomically; return their paths."""
    files = {out / "summary.csv": csv_bytes(rows)}
    pq = parquet_bytes(rows)
    if pq is not None:
        files[out / "summary.parquet"] = pq
    commit_files(files, folder=out)
    return {p.stem + p.suffix: p for p in files}
