"""The peers, each run in a fresh process: ``python -m bench.peers NAME --case DIR --model DIR --out DIR``.

Every peer imports its libraries first (not timed: nibabel alone takes 0.4 s to import here,
and edge-infer's runtime imports it at start-up), then times from reading the NIfTI files
to the mask written on disk, model loading included, and prints one JSON line with
``seconds``, ``backend_seconds`` where it can tell, ``peak_rss_mb`` (``VmHWM``) and ``mask``.

- ``edge-infer``: :func:`edge_infer.run.run_case` (what ``edge-infer run`` calls).
- ``torch2d``: PyTorch eager on the same weights, batches of slices, numpy pre/post.
- ``naive2d``: a plain onnxruntime loop, one call per slice, numpy pre/post written plainly.
- ``monai3d``: MONAI ``sliding_window_inference`` (gaussian, sigma 0.125) with PyTorch.

The hand-written peers read RAS 1 mm scans as they are (no reorientation or resampling,
which the benchmark scans do not need) and normalise like the runtime (z-score over nonzero
voxels, per channel, statistics of the whole volume).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edge_infer.memory import peak_rss_mb, proc_status_mb

MODALITIES = ("t1", "t1ce", "t2", "flair")


# -- plain numpy pre/post (what a user writes around a framework) ---------------------------
def read_case(case: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    imgs = [nib.load(str(case / f"{case.name}_{m}.nii.gz")) for m in MODALITIES]
    return np.stack([np.asarray(i.dataobj, dtype=np.float32) for i in imgs]), imgs[0].affine


def channel_stats(vol: np.ndarray) -> list[tuple[float, float]]:
    out = []
    for ch in vol:
        vals = ch[ch != 0].astype(np.float64)
        out.append((float(vals.mean()), float(vals.std())) if vals.size else (0.0, 1.0))
    return out


def normalise(x: np.ndarray, stats, channel_axis: int = 0) -> np.ndarray:
    x = np.moveaxis(x, channel_axis, 0)
    out = np.empty_like(x)
    for c, (mean, std) in enumerate(stats):
        nz = x[c] != 0
        out[c] = np.where(nz, (x[c] - mean) / max(std, 1e-8), 0.0)
    return np.moveaxis(out, 0, channel_axis)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def paint(probs: np.ndarray, manifest: dict) -> np.ndarray:
    """Labels from probabilities ``[K, ...]`` with the manifest's thresholds and label order."""
    out = np.zeros(probs.shape[1:], np.uint8)
    chans = manifest["output"]["channels"]
    thr = np.broadcast_to(np.asarray(manifest["output"]["threshold"], np.float32), (len(chans),))
    for lb in manifest["output"]["labels"]:
        k = chans.index(lb["region"])
        out[probs[k] > thr[k]] = lb["value"]
    return out


def save_mask(labels: np.ndarray, affine: np.ndarray, out: Path) -> Path:
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    path = out / "mask.nii.gz"
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(path))
    return path


def _pad_plane(x: np.ndarray, mult: int) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    if ph or pw:
        x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)])
    return x, (ph // 2, pw // 2)


def _torch_model(folder: Path, threads: int):
    import torch

    from export.zoo import create_model

    torch.set_num_threads(threads)
    state = torch.load(folder / "torch.pt", weights_only=False)
    model = create_model(state["arch"], **state["config"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


# -- peers ----------------------------------------------------------------------------------
def _trace_stages(timing, into: dict) -> None:
    """Record ``VmHWM`` (peak so far) and ``VmRSS`` at the end of every timed stage."""
    from contextlib import contextmanager

    original = timing.Timer.stage

    def status() -> tuple[float, float]:
        vals = proc_status_mb("VmHWM", "VmRSS")
        return round(vals["VmHWM"], 1), round(vals["VmRSS"], 1)

    @contextmanager
    def stage(self, name):
        with original(self, name):
            yield
        hwm, rss = status()
        into[name] = {"peak_so_far_mb": hwm, "rss_after_mb": rss}

    timing.Timer.stage = stage
    into["start"] = dict(zip(("peak_so_far_mb", "rss_after_mb"), status()))


def edge_infer(a) -> dict:
    import edge_infer.timing as timing
    from edge_infer.options import ModelChoice, OutputSpec, RunTuning
    from edge_infer.run import run_case

    if a.backend == "tflite":                      # import the backend's runtime before timing
        from edge_infer.backends.tflite import import_interpreter

        import_interpreter()
    else:
        import onnxruntime  # noqa: F401
    memory: dict = {}
    if a.trace_memory:
        _trace_stages(timing, memory)
    t0 = time.perf_counter()
    res = run_case([a.case], OutputSpec(a.out, name="edge"), tuning=RunTuning(batch=a.batch, crop=not a.no_crop),
                   model=ModelChoice(model=a.model, backend=a.backend, precision=a.precision, threads=a.threads))
    seconds = time.perf_counter() - t0
    r = res.report
    return {"seconds": seconds, "backend_seconds": r.backend_seconds, "timings_s": r.timings_s,
            "units": r.plan.units, "batch": r.plan.batch, "mask": str(res.outputs["mask"]),
            "memory_by_stage": memory, "crop": r.crop}


def _torch_start(a):
    """The PyTorch peers' common start: import the libraries (not timed), then start the clock
    and load the model and the scan. Returns ``(t0, manifest, model, volume, affine, normalised)``."""
    import nibabel  # noqa: F401
    import torch

    import export.zoo  # noqa: F401

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    manifest = json.loads((a.model / "model.json").read_text())
    model = _torch_model(a.model, a.threads)
    vol, affine = read_case(a.case)
    return t0, manifest, model, vol, affine, normalise(vol, channel_stats(vol))


def torch2d(a) -> dict:
    import torch

    t0, manifest, model, vol, affine, x = _torch_start(a)
    slices = np.ascontiguousarray(np.moveaxis(x, 3, 0))            # [K, C, I, J]
    slices, (oh, ow) = _pad_plane(slices, manifest["input"]["divisible_by"])
    h, w = vol.shape[1:3]
    probs = np.empty((len(slices), 3, h, w), np.float32)
    tb = 0.0
    with torch.inference_mode():
        for s in range(0, len(slices), a.batch):
            t1 = time.perf_counter()
            y = model(torch.from_numpy(slices[s:s + a.batch]))
            tb += time.perf_counter() - t1
            probs[s:s + a.batch] = torch.sigmoid(y).numpy()[:, :, oh:oh + h, ow:ow + w]
    labels = paint(np.moveaxis(probs, 0, 3), manifest)
    path = save_mask(labels, affine, a.out)
    return {"seconds": time.perf_counter() - t0, "backend_seconds": tb, "mask": str(path)}


def naive2d(a) -> dict:
    import nibabel  # noqa: F401
    import onnxruntime as ort

    t0 = time.perf_counter()
    manifest = json.loads((a.model / "model.json").read_text())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(str(a.model / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    vol, affine = read_case(a.case)
    stats = channel_stats(vol)
    labels = np.zeros(vol.shape[1:], np.uint8)
    h, w = vol.shape[1:3]
    tb = 0.0
    for k in range(vol.shape[3]):                                   # one call per slice
        x = normalise(vol[..., k], stats).astype(np.float32)
        x, (oh, ow) = _pad_plane(x, manifest["input"]["divisible_by"])
        t1 = time.perf_counter()
        (y,) = sess.run(None, {name: x[None]})
        tb += time.perf_counter() - t1
        labels[..., k] = paint(sigmoid(y[0, :, oh:oh + h, ow:ow + w]), manifest)
    path = save_mask(labels, affine, a.out)
    return {"seconds": time.perf_counter() - t0, "backend_seconds": tb, "mask": str(path)}


def monai3d(a) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    t0, manifest, model, vol, affine, x = _torch_start(a)
    x = torch.from_numpy(x[None])
    tb = [0.0]

    def predictor(t):
        t1 = time.perf_counter()
        y = model(t)
        tb[0] += time.perf_counter() - t1
        return y

    with torch.inference_mode():
        logits = sliding_window_inference(x, tuple(manifest["input"]["tile"]), sw_batch_size=a.batch,
                                          predictor=predictor, overlap=a.overlap, mode="gaussian", sigma_scale=0.125)
    labels = paint(torch.sigmoid(logits[0]).numpy(), manifest)
    path = save_mask(labels, affine, a.out)
    return {"seconds": time.perf_counter() - t0, "backend_seconds": tb[0], "mask": str(path)}


def emit(out: dict) -> None:
    """Print a peer's result as its one JSON line, with this process's peak RSS (``VmHWM``)."""
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["seconds"] = round(out["seconds"], 4)
    print(json.dumps(out))


PEERS = {"edge-infer": edge_infer, "torch2d": torch2d, "naive2d": naive2d, "monai3d": monai3d}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peers")
    ap.add_argument("peer", choices=sorted(PEERS))
    ap.add_argument("--case", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="onnx")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--trace-memory", type=int, default=0, help="edge-infer: VmHWM/VmRSS after each stage")
    ap.add_argument("--no-crop", type=int, default=0, help="edge-infer: 1 runs the full field of view (--no-crop)")
    a = ap.parse_args(argv)
    if a.batch is None and a.peer in ("torch2d",):
        a.batch = 8
    if a.batch is None and a.peer == "monai3d":
        a.batch = 1
    emit(PEERS[a.peer](a))


if __name__ == "__main__":
    main()
