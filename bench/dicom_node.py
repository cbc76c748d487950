"""Benchmark the DICOM node on loopback with DCMTK peers, for the bundled sample case.

Measures, side by side in one run (same disk, same files, same client: DCMTK's storescu)
------------------------------------------------------------------------------------------
* instances per second received by ``edge-infer serve`` and by DCMTK's own ``storescp``
  (which does not fsync), from one association and from ``--associations`` storescu
  processes in parallel (as a PACS or several modalities send at once); the node
  acknowledges each instance only once it is on disk (fsynced, renamed, folder fsynced);
* seconds from the last instance stored (one association) to the SEG at the destination
  (``storescp``), split into the idle time that defines a complete study, the inference
  (the report's ``infer`` stage) and the rest (waiting for the next poll, reading the study,
  preparing, finishing, writing the SEG, sending it); the goal is the rest <= 0.5 s;
* instances per second when the same study is sent again (a PACS resending it): identical
  instances are already on disk and are acknowledged without being written again.

The sample NIfTI case (160x160x40, 4 modalities) is written as 4-series DICOM studies (160
instances each; a fresh study per measurement, so no rate is a resend). Only 127.0.0.1 is
used. Needs DCMTK (``apt-get install dcmtk``) and the ``dicom`` extra.

Usage::

    python bench/dicom_node.py [--model default] [--idle 2] [--repeat 3] [--associations 4] [--nodelay] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dicom_factory import write_dicom_study  # noqa: E402
from node_helpers import (  # noqa: E402
    CLIENT_AE,
    LOOPBACK,
    MODALITIES,
    NODE_AE,
    dcmtk,
    free_port,
    received_segs,
    start_node,
    start_storescp,
    wait_listening,
    wait_until,
    write_config,
)

from edge_infer.model import resolve_model  # noqa: E402
from edge_infer.node.audit import read_audit  # noqa: E402
from edge_infer.samples import sample_case  # noqa: E402
from edge_infer.uids import uid_hash  # noqa: E402

RATE_GOAL = 300.0  # instances/s, several associations
REST_GOAL = 0.5    # s after the idle time and the inference


def sample_study(folder: Path) -> list[Path]:
    """The bundled sample case as a DICOM study (new UIDs each call); returns its files in series order."""
    case = sample_case()
    imgs = [nib.load(case / f"sample_{m}.nii.gz") for m in MODALITIES]
    data = np.stack([np.asarray(i.dataobj) for i in imgs]).astype(np.int16)
    files = write_dicom_study(folder, data, imgs[0].affine, MODALITIES, subfolders=True)
    return [p for m in MODALITIES for p in files[m]]


def rate(files: list[Path], port: int, associations: int = 1) -> float:
    """Instances per second of ``associations`` storescu processes at once, each sending every
    ``associations``-th file in one association."""
    cmd = [dcmtk("storescu"), "-aet", CLIENT_AE, "-aec", NODE_AE, "-to", "20", LOOPBACK, str(port)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd + [str(f) for f in files[i::associations]], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(associations)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    seconds = time.perf_counter() - t0
    failed = [e for p, e in zip(procs, errors) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"storescu failed: {failed[0][-500:]}")
    return len(files) / seconds


def _audit_time(record: dict) -> float:
    return dt.datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()


def seg_split(spool: Path, study_uid: str, t_last: float, t_seg: float, idle: float) -> dict:
    """Last instance -> SEG at the destination, split by the node's audit and job report."""
    h = uid_hash(study_uid)
    records = [r for r in read_audit(spool / "audit.jsonl") if r.get("study") == h]
    started = next(r for r in records if r["event"] == "job_started")
    done = next(r for r in records if r["event"] == "job_done" and r["job"] == started["job"])
    [report] = (spool / "sent" / done["job"]).glob("*_report.json")
    timings = json.loads(report.read_text())["timings_s"]
    total = t_seg - t_last
    inference = float(timings.get("infer", 0.0))
    return {"total_s": total, "idle_s": idle, "inference_s": inference, "rest_s": total - idle - inference,
            "to_job_start_s": _audit_time(started) - t_last, "job_s": float(done["seconds"]),
            "job_to_seg_at_destination_s": t_seg - _audit_time(done), "read_s": float(timings.get("read", 0.0)),
            "write_s": float(done["seconds"]) - sum(float(v) for v in timings.values()),  # SEG, report, outbox
            "stages_s": {k: float(v) for k, v in timings.items()}}


def _storescp_rates(tmp: Path, files: list[Path], args, procs: list) -> dict:
    port = free_port()
    procs.append(start_storescp(port, tmp / "baseline", tmp / "baseline.log"))
    time.sleep(1.0)
    return {"one": [rate(files, port) for _ in range(args.repeat)],
            "parallel": [rate(files, port, args.associations) for _ in range(args.repeat)]}


POLLING_SITE = """# the node with pynetdicom's own polling reactor loops (as before edge_infer.node.reactor)
import sys
import edge_infer.node.reactor
edge_infer.node.reactor.install = lambda assoc: False
print("bench: pynetdicom's polling loops", file=sys.stderr, flush=True)
"""


def _start(tmp: Path, name: str, model: Path, args, procs: list, receivers: int, polling: bool = False):
    """A fresh node with ``receivers`` receiver processes and its destination; returns (node, port, spool, dest).
    ``polling``: the node keeps pynetdicom's own loops (a ``sitecustomize`` turns off
    :mod:`edge_infer.node.reactor`)."""
    port, dest_port = free_port(), free_port()
    spool, dest = tmp / f"spool{name}", tmp / f"dest{name}"
    cfg = write_config(tmp / f"node{name}.toml", spool, port, model, dest_port=dest_port, idle=args.idle,
                       extra=f"receivers = {receivers}")
    procs.append(start_storescp(dest_port, dest, tmp / f"dest{name}.log"))
    saved = os.environ.get("PYTHONPATH")
    if polling:
        (tmp / "polling").mkdir(exist_ok=True)
        (tmp / "polling" / "sitecustomize.py").write_text(POLLING_SITE)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp / "polling"), saved) if p)
    try:
        node = start_node("serve", cfg, tmp / f"node{name}.log")
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    procs.append(node)
    wait_listening(node, port)
    if polling and "bench: pynetdicom's polling loops" not in node.text():
        raise RuntimeError("the polling node did not load the bench's sitecustomize: its rates would be "
                           "the waiting loops'")
    if receivers > 1:  # the receiver processes start beside the listening node: let them say ready
        wait_until(lambda: "receiver processes ready" in (tmp / f"node{name}.log").read_text(), 60,
                   "the receiver processes")
    return node, port, spool, dest


def _other_rates(tmp: Path, name: str, model: Path, args, procs: list, receivers: int, polling: bool) -> dict:
    """The same rates from another node (1 receiver process, or pynetdicom's polling loops), side by side."""
    node, port, _, dest = _start(tmp, name, model, args, procs, receivers, polling)
    out = {"parallel": rate(sample_study(tmp / f"p{name}"), port, args.associations)}
    wait_until(lambda: len(received_segs(dest)) == 1, 600, "the first SEG", step=0.05)  # as for the other node
    out["one"] = rate(sample_study(tmp / f"s{name}"), port)
    node.stop()
    return out


def idle_cpu(tmp: Path, model: Path, args, procs: list, polling: bool, seconds: float = 5.0) -> float:
    """Per cent of one core the node (1 receiver process) uses while ``args.associations``
    associations are open and silent."""
    import pynetdicom

    node, port, _, _ = _start(tmp, f"idle{int(polling)}", model, args, procs, 1, polling)
    time.sleep(2.0)  # the model is loaded and verified beside the listener
    ae = pynetdicom.AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1")
    assocs = [ae.associate(LOOPBACK, port, ae_title=NODE_AE) for _ in range(args.associations)]
    if not all(a.is_established for a in assocs):
        raise RuntimeError("the node refused an association for the idle measurement")
    t0, c0 = time.perf_counter(), _cpu_seconds(node.popen.pid)
    time.sleep(seconds)
    used = (_cpu_seconds(node.popen.pid) - c0) / (time.perf_counter() - t0)
    for a in assocs:
        a.release()
    node.stop()
    return 100.0 * used


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _node_repeat(tmp: Path, r: int, model: Path, args, procs: list) -> dict:
    """One fresh node: a study over several associations, another over one (timed to its SEG), a resend."""
    node, port, spool, dest = _start(tmp, str(r), model, args, procs, args.receivers)
    parallel, single = sample_study(tmp / f"p{r}"), sample_study(tmp / f"s{r}")
    out = {"parallel": rate(parallel, port, args.associations)}
    wait_until(lambda: len(received_segs(dest)) == 1, 600, "the first SEG", step=0.05)
    out["one"] = rate(single, port)
    t_last = time.time()
    wait_until(lambda: len(received_segs(dest)) == 2, 600, "the second SEG", step=0.01)
    t_seg = time.time()
    import pydicom

    study_uid = str(pydicom.dcmread(single[0], stop_before_pixels=True).StudyInstanceUID)
    out["split"] = wait_until(lambda: _split_when_sent(spool, study_uid, t_last, t_seg, args.idle), 60,
                              "the job's audit records")
    out["resend"] = rate(single, port)
    node.stop()
    if args.receivers > 1:
        out["one_receiver"] = _other_rates(tmp, f"{r}-1", model, args, procs, 1, polling=False)
    out["polling"] = _other_rates(tmp, f"{r}-poll", model, args, procs, args.receivers, polling=True)
    return out


def _split_when_sent(spool: Path, study_uid: str, t_last: float, t_seg: float, idle: float) -> dict | None:
    try:
        return seg_split(spool, study_uid, t_last, t_seg, idle)
    except (StopIteration, ValueError, KeyError, OSError):  # not in sent/ or not audited yet
        return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--idle", type=float, default=2.0, help="idle seconds that complete a study")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--associations", type=int, default=4, help="storescu processes sending at once")
    ap.add_argument("--receivers", type=int, default=2,
                    help="the node's receiver processes (a node with 1 is measured beside it when more)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--nodelay", action="store_true",
                    help="set TCP_NODELAY=1 for DCMTK (storescu/storescp otherwise wait on Nagle + delayed ACK)")
    args = ap.parse_args(argv)
    if args.nodelay:
        os.environ["TCP_NODELAY"] = "1"  # read by DCMTK's dcmnet; inherited by the peers started here
    for tool in ("storescu", "storescp", "echoscu"):
        if dcmtk(tool) is None:
            raise SystemExit(f"DCMTK's {tool} not found on PATH (pynetdicom's script of that name does not count): "
                             "apt-get install dcmtk")
    model = resolve_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="edge-infer-bench-"))
    procs: list = []
    try:
        base = _storescp_rates(tmp, sample_study(tmp / "study"), args, procs)
        runs = [_node_repeat(tmp, r, model, args, procs) for r in range(args.repeat)]
        idle = {"waiting": idle_cpu(tmp, model, args, procs, polling=False),
                "polling": idle_cpu(tmp, model, args, procs, polling=True)}
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results = summarise(base, runs, args, model, idle)
    print(json.dumps(results, indent=2) if args.json else "\n".join(summary_lines(results)))
    return results


def summarise(base: dict, runs: list[dict], args, model: Path, idle: dict) -> dict:
    med = lambda xs: float(np.median(xs))  # noqa: E731
    split = {k: med([r["split"][k] for r in runs]) for k in runs[0]["split"] if k != "stages_s"}
    return {
        "instances": 160, "associations": args.associations, "receivers": args.receivers,
        "idle_seconds": args.idle, "model": str(model),
        "dcmtk_tcp_nodelay": bool(args.nodelay), "runs": runs, "storescp": base, "idle_cpu_percent": idle,
        "median": {
            "storescp_instances_per_s": med(base["one"]),
            "storescp_parallel_instances_per_s": med(base["parallel"]),
            "serve_instances_per_s": med([r["one"] for r in runs]),
            "serve_parallel_instances_per_s": med([r["parallel"] for r in runs]),
            "serve_resend_instances_per_s": med([r["resend"] for r in runs]),
            **({"serve1_instances_per_s": med([r["one_receiver"]["one"] for r in runs]),
                "serve1_parallel_instances_per_s": med([r["one_receiver"]["parallel"] for r in runs])}
               if args.receivers > 1 else {}),
            "polling_instances_per_s": med([r["polling"]["one"] for r in runs]),
            "polling_parallel_instances_per_s": med([r["polling"]["parallel"] for r in runs]),
            "last_instance_to_seg_s": split["total_s"],
            "last_instance_to_seg_minus_idle_s": split["total_s"] - args.idle,
            "inference_s": split["inference_s"], "rest_s": split["rest_s"],
            "to_job_start_s": split["to_job_start_s"], "job_s": split["job_s"],
            "job_to_seg_at_destination_s": split["job_to_seg_at_destination_s"],
            "job_read_s": split["read_s"], "job_write_s": split["write_s"],
        },
    }


def summary_lines(results: dict) -> list[str]:
    m, n, k = results["median"], results["associations"], results["receivers"]
    rate_ok = m["serve_parallel_instances_per_s"] >= RATE_GOAL
    rest_ok = m["rest_s"] <= REST_GOAL
    one = (f"; with 1 receiver process {m['serve1_instances_per_s']:.1f}" if "serve1_instances_per_s" in m else "")
    many = (f"; with 1 receiver process {m['serve1_parallel_instances_per_s']:.1f}"
            if "serve1_parallel_instances_per_s" in m else "")
    return [
        f"{results['instances']} instances per study (sample case, 4 series of 160x160x40), "
        f"model {Path(results['model']).name}",
        f"receive, 1 association:  edge-infer serve ({k} receiver processes) {m['serve_instances_per_s']:.1f} "
        f"instances/s, DCMTK storescp {m['storescp_instances_per_s']:.1f} (ratio "
        f"{m['serve_instances_per_s'] / m['storescp_instances_per_s']:.2f}){one}",
        f"receive, {n} associations: edge-infer serve ({k} receiver processes) "
        f"{m['serve_parallel_instances_per_s']:.1f} instances/s, DCMTK storescp "
        f"{m['storescp_parallel_instances_per_s']:.1f} (ratio "
        f"{m['serve_parallel_instances_per_s'] / m['storescp_parallel_instances_per_s']:.2f}){many}",
        f"with pynetdicom's own polling loops: {m['polling_instances_per_s']:.1f} instances/s over 1 association, "
        f"{m['polling_parallel_instances_per_s']:.1f} over {n}; idle CPU with {n} silent associations open: "
        f"{results['idle_cpu_percent']['waiting']:.1f}% of a core "
        f"(polling: {results['idle_cpu_percent']['polling']:.1f}%)",
        f"the same study resent: {m['serve_resend_instances_per_s']:.1f} instances/s",
        f"last instance -> SEG at destination: {m['last_instance_to_seg_s']:.2f} s = idle "
        f"{results['idle_seconds']:g} s + inference {m['inference_s']:.2f} s + rest {m['rest_s']:.2f} s "
        f"(job start after {m['to_job_start_s']:.2f} s, job {m['job_s']:.2f} s of which reading the study "
        f"{m['job_read_s']:.2f} s and writing the SEG/report {m['job_write_s']:.2f} s, "
        f"job done -> SEG stored {m['job_to_seg_at_destination_s']:.2f} s)",
        f"{'PASS' if rate_ok else 'MISS'} receive rate, {n} associations: "
        f"{m['serve_parallel_instances_per_s']:.0f} instances/s (goal >= {RATE_GOAL:.0f})",
        f"{'PASS' if rest_ok else 'MISS'} last instance -> SEG minus idle and inference: {m['rest_s']:.2f} s "
        f"(goal <= {REST_GOAL} s)",
    ]


if __name__ == "__main__":
    main()
