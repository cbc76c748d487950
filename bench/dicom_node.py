"""Benchmark the DICOM node on loopback with DCMTK peers, for the bundled sample case.

Measures
--------
* instances per second received by ``edge-infer serve`` from one ``storescu`` association
  (and, for comparison, by DCMTK's own ``storescp`` writing to the same disk);
* seconds from the last instance stored to the SEG arriving at the destination (``storescp``),
  and the same minus the idle time that defines a complete study;
* instances per second when the same study is sent again (a PACS resending it): identical
  instances are already on disk and are acknowledged without being written again.

The sample NIfTI case (160x160x40, 4 modalities) is written as a 4-series DICOM study (160
instances). Only 127.0.0.1 is used. Needs DCMTK (``apt-get install dcmtk``) and the
``dicom`` extra.

Usage::

    python bench/dicom_node.py [--model default] [--idle 2] [--repeat 3] [--nodelay] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from node_helpers import (  # noqa: E402
    MODALITIES,
    dcmtk,
    free_port,
    received_segs,
    start_node,
    start_storescp,
    storescu,
    wait_listening,
    wait_until,
    write_config,
)

from dicom_factory import write_dicom_study  # noqa: E402
from edge_infer.model import resolve_model  # noqa: E402
from edge_infer.samples import sample_case  # noqa: E402


def sample_study(folder: Path) -> list[Path]:
    """The bundled sample case as a DICOM study; returns its files in series order."""
    case = sample_case()
    imgs = [nib.load(case / f"sample_{m}.nii.gz") for m in MODALITIES]
    data = np.stack([np.asarray(i.dataobj) for i in imgs]).astype(np.int16)
    files = write_dicom_study(folder, data, imgs[0].affine, MODALITIES, subfolders=True)
    return [p for m in MODALITIES for p in files[m]]


def rate(files: list[Path], port: int) -> float:
    """Instances per second of one storescu association sending ``files``."""
    t0 = time.perf_counter()
    out = storescu(port, files)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"storescu failed: {out.stderr[-500:]}")
    return len(files) / seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--idle", type=float, default=2.0, help="idle seconds that complete a study")
    ap.add_argument("--repeat", type=int, default=3)
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
    procs = []
    try:
        files = sample_study(tmp / "study")
        # baseline: DCMTK storescp receiving the same files
        base_port = free_port()
        procs.append(start_storescp(base_port, tmp / "baseline", tmp / "baseline.log"))
        time.sleep(1.0)
        baseline = [rate(files, base_port) for _ in range(args.repeat)]

        results = {"instances": len(files), "storescp_instances_per_s": baseline,
                   "serve_instances_per_s": [], "last_instance_to_seg_s": [], "serve_resend_instances_per_s": []}
        for r in range(args.repeat):
            port, dest_port = free_port(), free_port()
            spool, dest = tmp / f"spool{r}", tmp / f"dest{r}"
            cfg = write_config(tmp / f"node{r}.toml", spool, port, model, dest_port=dest_port, idle=args.idle)
            procs.append(start_storescp(dest_port, dest, tmp / f"dest{r}.log"))
            node = start_node("serve", cfg, tmp / f"node{r}.log")
            procs.append(node)
            wait_listening(node, port)
            results["serve_instances_per_s"].append(rate(files, port))
            t_last = time.perf_counter()
            wait_until(lambda: received_segs(dest), 600, "the SEG", step=0.02)
            results["last_instance_to_seg_s"].append(time.perf_counter() - t_last)
            results["serve_resend_instances_per_s"].append(rate(files, port))
            node.stop()
        results["idle_seconds"] = args.idle
        results["median"] = {
            "storescp_instances_per_s": float(np.median(baseline)),
            "serve_instances_per_s": float(np.median(results["serve_instances_per_s"])),
            "last_instance_to_seg_s": float(np.median(results["last_instance_to_seg_s"])),
            "last_instance_to_seg_minus_idle_s": float(np.median(results["last_instance_to_seg_s"])) - args.idle,
            "serve_resend_instances_per_s": float(np.median(results["serve_resend_instances_per_s"])),
        }
        results["model"] = str(model)
        results["dcmtk_tcp_nodelay"] = bool(args.nodelay)
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        m = results["median"]
        print(f"{results['instances']} instances (sample case, 4 series of 160x160x40), model {model.name}")
        print(f"storescu -> edge-infer serve: {m['serve_instances_per_s']:.1f} instances/s "
              f"(DCMTK storescp on the same disk: {m['storescp_instances_per_s']:.1f}; "
              f"the same study resent: {m['serve_resend_instances_per_s']:.1f})")
        print(f"last instance -> SEG at destination: {m['last_instance_to_seg_s']:.2f} s "
              f"({m['last_instance_to_seg_minus_idle_s']:.2f} s after the {args.idle:g} s idle time)")
    return results


if __name__ == "__main__":
    main()
