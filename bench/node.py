"""``dicom-node``: :mod:`bench.dicom_node` (DCMTK peers on loopback) behind the registry."""

from __future__ import annotations

import contextlib
import io
import os
import shutil

from .common import Context, Result, table


def run(ctx: Context) -> Result:
    argv = ["--repeat", "1" if ctx.quick else "5", "--nodelay"]
    res = Result("dicom-node", "DICOM node: instances/s received and last instance to SEG",
                 "python -m bench dicom-node" + (" --quick" if ctx.quick else "")
                 + f"  (= python bench/dicom_node.py {' '.join(argv)})")
    missing = [t for t in ("storescu", "storescp", "echoscu") if shutil.which(t) is None]
    if missing:
        res.notes.append(f"skipped: {', '.join(missing)} not found (apt-get install dcmtk)")
        return res
    from . import dicom_node

    load_start = os.getloadavg()[0]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            r = dicom_node.main(argv)
    except (ImportError, SystemExit, RuntimeError) as exc:
        res.notes.append(f"skipped: {exc}")
        return res
    m = r["median"]
    n, k = r["associations"], r["receivers"]
    res.rows.append({"instances": r["instances"], "associations": n, **m, "model": r["model"],
                     "idle_seconds": r["idle_seconds"]})
    res.tables.append(table(["receiver", "1 association, instances/s", f"{n} associations, instances/s",
                             "study resent, instances/s"],
                            [[f"edge-infer serve, {k} receiver processes (acknowledged once on disk)",
                              m["serve_instances_per_s"], m["serve_parallel_instances_per_s"],
                              m["serve_resend_instances_per_s"]],
                             *([["edge-infer serve, 1 receiver process (the default)", m["serve1_instances_per_s"],
                                 m["serve1_parallel_instances_per_s"], None]] if "serve1_instances_per_s" in m else []),
                             [f"edge-infer serve, {k} receiver processes, pynetdicom's own polling loops (before)",
                              m["polling_instances_per_s"], m["polling_parallel_instances_per_s"], None],
                             ["DCMTK storescp (no fsync)", m["storescp_instances_per_s"],
                              m["storescp_parallel_instances_per_s"], None]]))
    res.tables.append(table(["last instance -> SEG s", "idle s", "inference s", "rest s", "job start after s",
                             "job s", "of which read s", "of which SEG/report write s", "job done -> SEG stored s"],
                            [[m["last_instance_to_seg_s"], r["idle_seconds"], m["inference_s"], m["rest_s"],
                              m["to_job_start_s"], m["job_s"], m["job_read_s"], m["job_write_s"],
                              m["job_to_seg_at_destination_s"]]]))
    rate = m["serve_parallel_instances_per_s"]
    res.goal(f"edge-infer serve receive rate, {n} associations, {k} receiver processes (instances/s)", rate,
             f">= {dicom_node.RATE_GOAL:.0f}", rate >= dicom_node.RATE_GOAL)
    res.goal("last instance -> SEG minus idle time and inference (s)", m["rest_s"], f"<= {dicom_node.REST_GOAL}",
             m["rest_s"] <= dicom_node.REST_GOAL)
    res.notes.append(f"bundled sample as 4 DICOM series (160 instances, a fresh study per measurement), model "
                     f"{r['model'].rsplit('/', 1)[-1]}, idle time {r['idle_seconds']} s, {n} storescu processes at "
                     f"once for the parallel rate, medians of {1 if ctx.quick else 5} repeats; the rest: waiting "
                     "for the worker's poll, reading, preparing, finishing, writing and sending the SEG")
    idle = r["idle_cpu_percent"]
    res.tables.append(table([f"CPU with {n} silent associations open, % of a core", "waiting loops (now)",
                             "pynetdicom's polling loops (before)"],
                            [["edge-infer serve, 1 receiver process", idle["waiting"], idle["polling"]]]))
    res.notes.append(f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
                     f"({os.cpu_count()} CPUs): the receive rates are CPU-bound, so a loaded machine lowers them")
    return res
