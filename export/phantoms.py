"""Deterministic synthetic BraTS-like brain MRI phantoms (numpy + nibabel only, no torch).

API
---
``make_case(shape=(240, 240, 155), spacing=1.0, seed=0, skull=True) -> Phantom``
    ``Phantom`` is a NamedTuple ``(images, seg, affine)`` and unpacks as a 3-tuple:

    - ``images``: dict ``{"t1", "t1ce", "t2", "flair"} -> float32 [I, J, K]`` (0 outside
      the head, roughly 0..2000 inside, like BraTS intensities)
    - ``seg``: uint8 ``[I, J, K]`` with BraTS labels 0 background, 1 necrotic /
      non-enhancing core, 2 edema, 4 enhancing tumour
    - ``affine``: float64 ``(4, 4)``, RAS+ (array axis I -> R, J -> A, K -> S), centred on 0

``write_case(folder, case_id, shape=(240, 240, 155), spacing=1.0, seed=0, skull=True) -> Path``
    writes ``folder/CASE/CASE_{t1,t1ce,t2,flair}.nii.gz`` (int16) and ``CASE_seg.nii.gz``
    (uint8), the BraTS 2020/2021 layout, and returns the case folder.

``write_cases(folder, seeds, shape=..., spacing=1.0, prefix="phantom") -> list[Path]``
    one case per seed, named ``{prefix}_{seed:04d}``.

Same seed, same shape, same spacing: the same bytes. 64x64x32 takes a few milliseconds;
240x240x155 about two seconds on one core.

The anatomy is drawn in coordinates relative to the field of view (the head fills the
volume whatever its size), the tumour in millimetres relative to the brain's size:

- scalp (fat, bright on T1), skull (dark everywhere), a CSF layer around the brain;
- cortical grey matter with folded depth, white matter, deep grey nuclei, two lateral
  ventricles (CSF: dark on T1 and FLAIR, bright on T2);
- a tumour at a random position, size, elongation, orientation and lobulated shape:
  a necrotic core (label 1: dark on T1/T1ce, bright on T2), an enhancing rim (label 4:
  bright on T1ce), and surrounding edema (label 2: bright on T2 and FLAIR) that follows
  white matter more than grey matter;
- per-modality smooth bias field, tissue texture and Rician noise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = {"necrotic": 1, "edema": 2, "enhancing": 4}

# tissue indices used inside this module
_BG, _SCALP, _SKULL, _CSF, _GM, _WM, _DEEP, _VENT, _EDEMA, _ENH, _NEC = range(11)

#: mean intensity of each tissue per modality (arbitrary units, ~0..1, scaled by INTENSITY_SCALE)
_CONTRAST = {
    #          bg   scalp skull csf   gm    wm    deep  vent  edema enh   nec
    "t1":    (0.0, 0.90, 0.08, 0.18, 0.52, 0.72, 0.58, 0.16, 0.42, 0.55, 0.24),
    "t1ce":  (0.0, 0.92, 0.08, 0.20, 0.54, 0.72, 0.60, 0.18, 0.44, 1.05, 0.22),
    "t2":    (0.0, 0.55, 0.05, 1.00, 0.62, 0.42, 0.55, 1.00, 0.85, 0.62, 0.95),
    "flair": (0.0, 0.60, 0.05, 0.10, 0.58, 0.45, 0.52, 0.08, 0.98, 0.72, 0.38),
}
INTENSITY_SCALE = 1000.0


class Phantom(NamedTuple):
    """A synthetic case: images by modality, BraTS label map, RAS affine."""

    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray


def _spacing3(spacing: float | Sequence[float]) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    return sp


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shp = tuple(int(s) for s in shape)
    if len(shp) != 3 or min(shp) < 8:
        raise ValueError(f"shape must be three sizes of at least 8 voxels, got {tuple(shape)!r}")
    return shp  # type: ignore[return-value]


def ras_affine(shape: Sequence[int], spacing: float | Sequence[float] = 1.0) -> np.ndarray:
    """A RAS+ affine with the given voxel spacing whose world origin is the volume centre."""
    sp = _spacing3(spacing)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -sp * (np.asarray(shape, dtype=np.float64) - 1) / 2.0
    return aff


def smooth_field(shape: Sequence[int], rng: np.random.Generator, grid: int = 5) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a coarse random grid, linearly upsampled.

    Separable interpolation (three small matrix products) keeps it fast for large volumes.
    """
    coarse = rng.standard_normal((grid, grid, grid)).astype(np.float32)
    mats = []
    for n in shape:
        pos = np.linspace(0, grid - 1, n)
        lo = np.clip(np.floor(pos).astype(int), 0, grid - 2)
        w = (pos - lo).astype(np.float32)
        m = np.zeros((n, grid), dtype=np.float32)
        m[np.arange(n), lo] = 1 - w
        m[np.arange(n), lo + 1] += w
        mats.append(m)
    f = np.tensordot(mats[0], coarse, axes=(1, 0))          # [I, g, g]
    f = np.tensordot(f, mats[1], axes=(1, 1))              # [I, g, J]
    f = np.tensordot(f, mats[2], axes=(1, 1))              # [I, J, K]
    return f / 2.0


def _coords(shape: tuple[int, int, int], sp: np.ndarray) -> tuple[np.ndarray, ...]:
    """Open-grid world coordinates in mm along each axis, centred on the volume."""
    axes = [((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(s)) for n, s in zip(shape, sp)]
    return np.ix_(*axes)


def _anatomy(shape, sp, rng) -> tuple[np.ndarray, np.ndarray, float]:
    """Tissue index map and the brain's normalised radius field; returns (tissue, rbrain, brain_mm)."""
    x, y, z = _coords(shape, sp)
    half = np.asarray(shape, dtype=np.float64) * sp / 2.0
    axes = half * np.array([0.60, 0.72, 0.80]) * rng.uniform(0.94, 1.04, 3)   # brain half-axes, mm
    # normalised ellipsoidal radius of the brain, with a lumpy surface
    r = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2).astype(np.float32)
    r *= 1.0 + 0.03 * smooth_field(shape, rng, grid=4)
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[r < 1.30] = _SCALP
    tissue[r < 1.20] = _SKULL
    tissue[r < 1.08] = _CSF
    # cortex: grey matter band whose depth varies like folded gyri
    folds = 0.5 + 0.5 * np.sin(x * (9.0 / axes[0]) + 1.3 * smooth_field(shape, rng, 6) * 3) \
        * np.sin(y * (11.0 / axes[1])) * np.cos(z * (7.0 / axes[2]))
    gm_depth = 0.10 + 0.10 * folds
    tissue[r < 1.0] = _GM
    tissue[r < 1.0 - gm_depth] = _WM
    # deep grey nuclei (thalami / basal ganglia), one per hemisphere
    for side in (-1, 1):
        d = ((x - side * 0.22 * axes[0]) / (0.16 * axes[0])) ** 2 + (y / (0.20 * axes[1])) ** 2 \
            + ((z + 0.05 * axes[2]) / (0.14 * axes[2])) ** 2
        tissue[d < 1.0] = _DEEP
    # lateral ventricles: two curved ellipsoids beside the midline
    for side in (-1, 1):
        d = ((x - side * 0.10 * axes[0]) / (0.07 * axes[0])) ** 2 \
            + ((y - 0.05 * axes[1]) / (0.38 * axes[1])) ** 2 \
            + ((z - 0.12 * axes[2] - 0.25 * axes[2] * (y / axes[1]) ** 2) / (0.10 * axes[2])) ** 2
        tissue[d < 1.0] = _VENT
    return tissue, r, float(np.mean(axes))


def _tumour(shape, sp, rng, r_brain: np.ndarray, brain_mm: float, tissue: np.ndarray) -> np.ndarray:
    """Paint a tumour (necrotic core, enhancing rim, edema) into a BraTS label map."""
    x, y, z = _coords(shape, sp)
    half = np.asarray(shape, dtype=np.float64) * sp / 2.0
    brain_axes = half * np.array([0.60, 0.72, 0.80])
    # centre: in one hemisphere, well inside the brain
    for _ in range(100):
        c = rng.uniform(-0.55, 0.55, 3)
        if np.sum(c ** 2) < 0.55 ** 2 and abs(c[0]) > 0.12:
            break
    centre = c * brain_axes
    core_mm = brain_mm * rng.uniform(0.15, 0.30)                   # enhancing outer radius
    # random orientation and elongation
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    stretch = rng.uniform(0.75, 1.3, 3)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    u = [(q[0, k] * dx + q[1, k] * dy + q[2, k] * dz) / (stretch[k] * core_mm) for k in range(3)]
    d = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2).astype(np.float32)
    # lobulated boundary: modulate the radius with a smooth random field
    d = d * (1.0 + rng.uniform(0.10, 0.25) * smooth_field(shape, rng, grid=7))
    nec_r = rng.uniform(0.40, 0.75)
    edema_r = rng.uniform(1.4, 2.2)
    # edema spreads along white matter more than grey matter, never into CSF
    edema_reach = np.where(tissue == _WM, edema_r, 0.8 * edema_r).astype(np.float32)
    edema_reach *= 1.0 + 0.15 * smooth_field(shape, rng, grid=6)
    inside = (r_brain < 0.98) & (tissue != _VENT)
    seg = np.zeros(shape, dtype=np.uint8)
    seg[(d < edema_reach) & inside] = BRATS_LABELS["edema"]
    seg[(d < 1.0) & inside] = BRATS_LABELS["enhancing"]
    seg[(d < nec_r) & inside] = BRATS_LABELS["necrotic"]
    return seg


def _blur(a: np.ndarray) -> np.ndarray:
    """A cheap separable [1, 2, 1] / 4 blur along each axis (partial-volume look)."""
    out = a
    for ax in range(3):
        p = np.pad(out, [(1, 1) if i == ax else (0, 0) for i in range(3)], mode="edge")
        sl = lambda s: tuple(s if i == ax else slice(None) for i in range(3))  # noqa: E731
        out = 0.25 * p[sl(slice(0, -2))] + 0.5 * p[sl(slice(1, -1))] + 0.25 * p[sl(slice(2, None))]
    return out


def make_case(shape: Sequence[int] = (240, 240, 155), spacing: float | Sequence[float] = 1.0,
              seed: int = 0, skull: bool = True) -> Phantom:
    """Build one synthetic BraTS-like case.

    Parameters
    ----------
    shape : three ints
        Volume size ``[I, J, K]`` (I: right, J: anterior, K: superior). At least 8 each.
    spacing : float or three floats
        Voxel size in mm (the anatomy scales with the field of view).
    seed : int
        Everything random (anatomy jitter, tumour, bias, noise) comes from this seed.
    skull : bool
        Keep scalp and skull; ``False`` gives a skull-stripped case like BraTS releases.

    Returns
    -------
    Phantom
        ``(images, seg, affine)``: float32 images by modality, uint8 BraTS labels
        (0, 1, 2, 4), RAS+ affine.
    """
    shp = _check_shape(shape)
    sp = _spacing3(spacing)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 20240601]))
    tissue, r_brain, brain_mm = _anatomy(shp, sp, rng)
    seg = _tumour(shp, sp, rng, r_brain, brain_mm, tissue)
    tissue = tissue.copy()
    tissue[seg == BRATS_LABELS["edema"]] = _EDEMA
    tissue[seg == BRATS_LABELS["enhancing"]] = _ENH
    tissue[seg == BRATS_LABELS["necrotic"]] = _NEC
    if not skull:
        tissue[(tissue == _SCALP) | (tissue == _SKULL) | ((tissue == _CSF) & (r_brain > 1.02))] = _BG
    head = tissue != _BG
    texture = 0.06 * smooth_field(shp, rng, grid=9)
    images = {}
    for mod in MODALITIES:
        table = np.asarray(_CONTRAST[mod], dtype=np.float32) * rng.uniform(0.93, 1.07)
        img = _blur(table[tissue])
        bias = np.exp(0.18 * smooth_field(shp, rng, grid=3)).astype(np.float32)
        img = img * bias * (1.0 + texture)
        sigma = 0.025
        n1 = rng.standard_normal(shp, dtype=np.float32) * sigma
        n2 = rng.standard_normal(shp, dtype=np.float32) * sigma
        img = np.sqrt((img + n1) ** 2 + n2 ** 2)                      # Rician magnitude
        img = np.where(head, img * INTENSITY_SCALE, 0.0).astype(np.float32)
        images[mod] = img
    return Phantom(images, seg, ras_affine(shp, sp))


def case_files(folder: str | os.PathLike, case_id: str) -> dict[str, Path]:
    """The BraTS file names of case ``case_id`` in ``folder`` (modalities and ``seg``)."""
    case_dir = Path(folder) / case_id
    return {name: case_dir / f"{case_id}_{name}.nii.gz" for name in (*MODALITIES, "seg")}


def write_case(folder: str | os.PathLike, case_id: str, shape: Sequence[int] = (240, 240, 155),
               spacing: float | Sequence[float] = 1.0, seed: int = 0, skull: bool = True) -> Path:
    """Write one phantom as a BraTS case folder and return it.

    Files: ``folder/CASE/CASE_{t1,t1ce,t2,flair}.nii.gz`` (int16) and ``CASE_seg.nii.gz``
    (uint8 labels 0/1/2/4). Each file is written to a temporary name first, then renamed.
    """
    import nibabel as nib

    if not case_id or Path(case_id).name != case_id:
        raise ValueError(f"case_id must be a plain folder name, got {case_id!r}")
    images, seg, affine = make_case(shape, spacing, seed, skull)
    files = case_files(folder, case_id)
    files["seg"].parent.mkdir(parents=True, exist_ok=True)
    arrays = {m: np.clip(np.rint(images[m]), 0, np.iinfo(np.int16).max).astype(np.int16) for m in MODALITIES}
    arrays["seg"] = seg
    for name, arr in arrays.items():
        img = nib.Nifti1Image(arr, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        tmp = files[name].with_name(files[name].name + ".part.nii.gz")
        nib.save(img, tmp)
        os.replace(tmp, files[name])
    return files["seg"].parent


def write_cases(folder: str | os.PathLike, seeds: Iterable[int], shape: Sequence[int] = (240, 240, 155),
                spacing: float | Sequence[float] = 1.0, prefix: str = "phantom", skull: bool = True) -> list[Path]:
    """Write one BraTS case folder per seed, named ``{prefix}_{seed:04d}``."""
    return [write_case(folder, f"{prefix}_{int(s):04d}", shape, spacing, int(s), skull) for s in seeds]


def brats_regions(seg: np.ndarray) -> np.ndarray:
    """BraTS labels to the nested regions ``[WT, TC, ET]`` as a uint8 ``[3, ...]`` array.

    WT (whole tumour) = labels 1, 2, 4; TC (tumour core) = 1, 4; ET (enhancing) = 4.
    """
    seg = np.asarray(seg)
    wt = seg > 0
    tc = (seg == 1) | (seg == 4)
    et = seg == 4
    return np.stack([wt, tc, et]).astype(np.uint8)


def tumour_slab_bounds(seg: np.ndarray, n: int) -> tuple[int, int]:
    """``(k0, k1)``: ``n`` consecutive axial slices (axis 2) centred on the tumour."""
    ks = np.nonzero(np.asarray(seg).any(axis=(0, 1)))[0]
    centre = int(ks.mean()) if len(ks) else seg.shape[2] // 2
    k0 = int(np.clip(centre - n // 2, 0, max(seg.shape[2] - n, 0)))
    return k0, min(k0 + n, seg.shape[2])
