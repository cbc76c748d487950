"""Submit cases to the cluster, commit each case's outputs exactly once, resume, report progress.

A case is written into ``OUT/.partial/<case>.<random>/`` and committed by one directory
rename to ``OUT/<case>/``; its ``batch.json`` (the summary row, the options digest and the
model sha256) is what makes it complete. A retried case (its worker died) whose first attempt
already committed keeps the first attempt's outputs: the rename is the only commit, so no
case is ever written twice or half. Needs Dask (see :func:`edge_infer.batch.require_dask`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TypeGuard

from ..errors import EdgeInferError
from ..writers import commit_files
from . import adapter
from .cases import Case
from .cluster import install_model, loaded_model

MARKER = "batch.json"
PARTIAL = ".partial"
COMMIT_LOG = "commits.log"
#: how many times a case may be on a worker that dies before it is a failure row
ALLOWED_WORKER_DEATHS = 3


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, EdgeInferError) else f"internal error: {type(exc).__name__}: {text}"


def read_marker(folder: Path) -> dict | None:
    """The committed record of a case folder, or None when it is missing or unreadable."""
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def same_run(rec: dict | None, key: dict) -> TypeGuard[dict]:
    """Whether a committed record was made by the run ``key`` describes (options, model, inputs)."""
    return rec is not None and all(rec.get(k) == v for k, v in key.items())


def run_key(case: Case, opts: adapter.RunOptions, identity: dict) -> dict:
    return {"options_key": opts.key(), "model_sha256": identity.get("model_sha256", ""),
            "inputs_key": case.fingerprint}


def is_complete(folder: Path, key: dict) -> dict | None:
    """The summary row of a committed case made by the run ``key`` describes, else None."""
    rec = read_marker(folder)
    if not same_run(rec, key):
        return None
    outputs = rec.get("row", {}).get("outputs", "")
    if not all((folder / name).is_file() for name in outputs.split(";") if name):
        return None
    return rec["row"]


def commit_case(tmp: Path, final: Path, record: dict) -> dict:
    """Commit ``tmp`` as ``final`` by one rename; if another attempt committed first, keep its
    outputs, drop ``tmp`` and return that attempt's row (exactly once)."""
    commit_files({tmp / MARKER: json.dumps(record, indent=1, default=str).encode()}, folder=tmp)
    old = read_marker(final) if final.exists() else None
    if same_run(old, {k: v for k, v in record.items() if k != "row"}):
        shutil.rmtree(tmp, ignore_errors=True)
        return old["row"]
    stale = tmp.parent / f"stale.{uuid.uuid4().hex}"
    if final.exists():  # outputs of other options, another model, or never committed: replaced
        final.rename(stale)
    try:
        os.rename(tmp, final)
    except OSError:  # another attempt won the rename between the check and here
        shutil.rmtree(tmp, ignore_errors=True)
        rec = read_marker(final)
        return rec["row"] if rec else record["row"]
    finally:
        shutil.rmtree(stale, ignore_errors=True)
    fd = os.open(final.parent / PARTIAL / COMMIT_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{final.name}\n".encode())
    finally:
        os.close(fd)
    return record["row"]


def process_case(case: Case, out_root: str, opts: adapter.RunOptions, identity: dict) -> dict:
    """Run one case on a worker; return its summary row (a failure is a row, never raised)."""
    from distributed import get_worker

    from .summary import report_row

    out = Path(out_root)
    row = {"case": case.id, "status": "ok", "error": "", "resumed": False, **identity,
           "started_unix_s": round(time.time(), 3)}
    try:
        row["worker"] = get_worker().address
    except ValueError:
        row["worker"] = "local"
    key = run_key(case, opts, identity)
    done = is_complete(out / case.id, key)
    if done is not None:
        return done
    tmp = out / PARTIAL / f"{case.id}.{uuid.uuid4().hex}"
    try:
        lm = loaded_model(opts)
        got = adapter.run(case, tmp, lm, opts)
        row.update(report_row(got["report"]))
        if case.truth:
            from .metrics import case_metrics

            row.update(case_metrics(got["labels"], case.truth, lm.manifest))
        row["finished_unix_s"] = round(time.time(), 3)
        return commit_case(tmp, out / case.id, {**key, "row": row})
    except Exception as exc:  # noqa: BLE001 - a failed case is its summary row; the batch goes on
        shutil.rmtree(tmp, ignore_errors=True)
        return {**row, "status": "failed", "error": one_line(exc), "finished_unix_s": round(time.time(), 3)}


def clean_partial(folder: Path) -> None:
    """Create ``folder`` and drop what an interrupted batch left in it (never a committed case)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def failure_row(case: Case, identity: dict, error: str) -> dict:
    return {"case": case.id, "status": "failed", "error": error, "resumed": False, "worker": "", **identity}


def run_batch(cases: Sequence[Case], out: Path, client, opts: adapter.RunOptions, progress: bool = True) -> list[dict]:
    """Run ``cases`` on ``client``'s cluster into ``out``; return one summary row per case.

    Cases already complete with these options and this model are not run again (their rows
    come back with ``resumed`` true).
    """
    identity = install_model(client, opts)
    clean_partial(out / PARTIAL)
    rows: dict[str, dict] = {}
    todo = []
    for case in cases:
        done = is_complete(out / case.id, run_key(case, opts, identity))
        if done is not None:
            rows[case.id] = {**done, "resumed": True}
        else:
            todo.append(case)
    token = uuid.uuid4().hex[:8]
    futures = {client.submit(process_case, c, str(out), opts, identity, key=f"case-{c.id}-{token}", pure=False): c
               for c in todo}
    _collect(futures, rows, identity, len(cases), progress)
    return [rows[c.id] for c in cases]


def _collect(futures: dict, rows: dict, identity: dict, total: int, progress: bool) -> None:
    from distributed import as_completed
    from tqdm import tqdm

    failed = 0
    t0 = time.perf_counter()
    with tqdm(total=total, initial=len(rows), unit="case", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for fut in as_completed(list(futures)):
            case = futures[fut]
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: the case's row says so
                row = failure_row(case, identity, f"the case's worker died {ALLOWED_WORKER_DEATHS} times "
                                  f"({type(exc).__name__}); check the workers' memory and logs")
            rows[case.id] = row
            failed += row["status"] != "ok"
            bar.update(1)
            bar.set_postfix_str(f"failed {failed}, {bar.n / max(time.perf_counter() - t0, 1e-9):.2f} case/s")
