"""``dicom-node``: :mod:`bench.dicom_node` (DCMTK peers on loopback) behind the registry."""

from __future__ import annotations

import contextlib
import io
import shutil

from .common import Context, Result, table


def run(ctx: Context) -> Result:
    argv = ["--repeat", "1" if ctx.quick else "3", "--nodelay"]
    res = Result("dicom-node", "DICOM node: instances/s received and last instance to SEG",
                 "python -m bench dicom-node" + (" --quick" if ctx.quick else "")
                 + f"  (= python bench/dicom_node.py {' '.join(argv)})")
    missing = [t for t in ("storescu", "storescp", "echoscu") if shutil.which(t) is None]
    if missing:
        res.notes.append(f"skipped: {', '.join(missing)} not found (apt-get install dcmtk)")
        return res
    from . import dicom_node

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            r = dicom_node.main(argv)
    except (ImportError, SystemExit, RuntimeError) as exc:
        res.notes.append(f"skipped: {exc}")
        return res
    m = r["median"]
    res.rows.append({"instances": r["instances"], **m, "model": r["model"], "idle_seconds": r["idle_seconds"]})
    res.tables.append(table(["instances", "edge-infer serve instances/s", "DCMTK storescp instances/s",
                             "serve, study resent, instances/s", "last instance -> SEG s", "minus idle s"],
                            [[r["instances"], m["serve_instances_per_s"], m["storescp_instances_per_s"],
                              m["serve_resend_instances_per_s"], m["last_instance_to_seg_s"],
                              m["last_instance_to_seg_minus_idle_s"]]]))
    res.notes.append(f"bundled sample as 4 DICOM series (160 instances), model {r['model'].rsplit('/', 1)[-1]}, "
                     f"idle time {r['idle_seconds']} s, medians of {1 if ctx.quick else 3} repeats")
    return res
