"""Helpers of the ARM parity check (docker/verify-arm.sh): a small input case, and the
comparison of two label masks.

    python docker/parity.py make-sample OUTDIR [--slices 4] [--size 64]
    python docker/parity.py compare REFERENCE_MASK OTHER_MASK [--min-dice 0.999] [--json FILE]

``make-sample`` writes ``OUTDIR/parity_{t1,t1ce,t2,flair}.nii.gz``: a centred crop (``size`` x
``size`` voxels, ``slices`` axial slices through the tumour) of the bundled sample scan, or
of a synthetic phantom when the package has no sample. ``compare`` passes when the labels
are identical; otherwise it prints the Dice of every label and the number of differing
voxels, and fails when any Dice is below ``--min-dice``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")


def _load(path: Path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj), img


def _bundled_sample() -> dict[str, Path] | None:
    try:
        from edge_infer.samples import SAMPLE, sample_case
    except ImportError:
        return None
    try:
        folder = sample_case()
    except Exception:  # the package without its sample: fall back to a phantom
        return None
    files = {m: folder / f"{SAMPLE}_{m}.nii.gz" for m in (*MODALITIES, "seg")}
    return files if all(p.is_file() for p in files.values()) else None


def _phantom(shape=(96, 96, 48)) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A small deterministic head-like phantom: bright ellipsoid, darker core, 'lesion'."""
    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r_head = sum(g**2 for g in grid)
    r_les = sum((g - c) ** 2 for g, c in zip(grid, (0.25, 0.1, 0.0))) / 0.06
    head, lesion = r_head < 0.8, r_les < 1.0
    images = {}
    for k, m in enumerate(MODALITIES):
        img = np.where(head, 600.0 + 80 * k, 0.0) + np.where(lesion, 500.0 - 150 * k, 0.0)
        images[m] = (img + rng.normal(0, 20, shape) * head).astype(np.float32)
    seg = (lesion & head).astype(np.uint8) * 2
    return images, seg, np.diag([1.0, 1.0, 1.0, 1.0])


def make_sample(out: Path, slices: int, size: int) -> Path:
    """Write the crop and return the folder."""
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)
    files = _bundled_sample()
    if files is not None:
        images = {}
        for m in MODALITIES:
            images[m], ref = _load(files[m])
        seg, _ = _load(files["seg"])
        affine, header = ref.affine, ref.header
        source = f"bundled sample {files['flair'].parent}"
    else:
        images, seg, affine = _phantom()
        header = None
        source = "synthetic phantom"
    shape = seg.shape
    # centre the crop on the lesion (or the volume) in-plane, and on its largest slices
    if seg.any():
        idx = np.argwhere(seg > 0)
        ci, cj = (int(v) for v in idx[:, :2].mean(axis=0).round())
        per_slice = (seg > 0).sum(axis=(0, 1))
        ck = int(np.argmax(per_slice))
    else:
        ci, cj, ck = shape[0] // 2, shape[1] // 2, shape[2] // 2
    size_i, size_j = min(size, shape[0]), min(size, shape[1])
    i0 = int(np.clip(ci - size_i // 2, 0, shape[0] - size_i))
    j0 = int(np.clip(cj - size_j // 2, 0, shape[1] - size_j))
    k0 = int(np.clip(ck - slices // 2, 0, max(shape[2] - slices, 0)))
    sl = (slice(i0, i0 + size_i), slice(j0, j0 + size_j), slice(k0, k0 + slices))
    # the crop's origin moves with its first voxel
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ np.array([i0, j0, k0], dtype=float) + affine[:3, 3]
    for m in MODALITIES:
        data = np.ascontiguousarray(images[m][sl])
        img = nib.Nifti1Image(data, crop_affine, header=header)
        img.set_qform(crop_affine, code=1)
        img.set_sform(crop_affine, code=1)
        nib.save(img, str(out / f"parity_{m}.nii.gz"))
    shape_out = images[MODALITIES[0]][sl].shape
    print(f"parity sample: {shape_out[0]}x{shape_out[1]}x{shape_out[2]} voxels from the {source} -> {out}")
    return out


def compare(ref: np.ndarray, other: np.ndarray) -> dict:
    """Per-label Dice and differing voxels of two integer label maps of one shape."""
    if ref.shape != other.shape:
        return {"identical": False, "shape": [list(ref.shape), list(other.shape)], "differing_voxels": None,
                "dice": {}, "min_dice": 0.0}
    diff = int(np.count_nonzero(ref != other))
    dice = {}
    for v in sorted(set(np.unique(ref).tolist()) | set(np.unique(other).tolist())):
        if v == 0:
            continue
        a, b = ref == v, other == v
        denom = int(a.sum()) + int(b.sum())
        dice[str(int(v))] = 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom
    fg_a, fg_b = ref > 0, other > 0
    denom = int(fg_a.sum()) + int(fg_b.sum())
    dice["foreground"] = 1.0 if denom == 0 else 2.0 * int((fg_a & fg_b).sum()) / denom
    return {"identical": diff == 0, "shape": list(ref.shape), "voxels": int(ref.size),
            "foreground_voxels": [int(fg_a.sum()), int(fg_b.sum())],
            "differing_voxels": diff, "dice": dice, "min_dice": min(dice.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("make-sample")
    s.add_argument("out", type=Path)
    s.add_argument("--slices", type=int, default=4)
    s.add_argument("--size", type=int, default=64)
    c = sub.add_parser("compare")
    c.add_argument("reference", type=Path)
    c.add_argument("other", type=Path)
    c.add_argument("--min-dice", type=float, default=0.999)
    c.add_argument("--json", type=Path, default=None)
    c.add_argument("--label", default="arm")
    a = ap.parse_args(argv)
    if a.cmd == "make-sample":
        make_sample(a.out, a.slices, a.size)
        return 0
    ref, _ = _load(a.reference)
    other, _ = _load(a.other)
    res = compare(np.asarray(ref), np.asarray(other))
    res.update(reference=str(a.reference), other=str(a.other), min_dice_required=a.min_dice)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    dice = ", ".join(f"{k} {v:.6f}" for k, v in res["dice"].items())
    if res["differing_voxels"] is None:
        print(f"PARITY FAILED ({a.label}): mask shapes differ {res['shape'][0]} vs {res['shape'][1]}")
        return 1
    if res["identical"]:
        print(f"parity ok ({a.label}): identical labels, {res['voxels']} voxels, "
              f"{res['foreground_voxels'][0]} labelled; Dice {dice}")
        return 0
    msg = (f"{res['differing_voxels']} of {res['voxels']} voxels differ; Dice {dice} "
           f"(required >= {a.min_dice})")
    if res["min_dice"] >= a.min_dice:
        print(f"parity ok within tolerance ({a.label}): {msg}")
        return 0
    print(f"PARITY FAILED ({a.label}): {msg}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
