"""The Scan type every reader produces, and the checks readers apply to it
(:func:`edge_infer.readers.read_scan` picks the reader).

Array convention: ``Scan.data`` is float32 with shape ``[C, I, J, K]``: channels first, then
the voxel axes in the order the affine indexes them (as nibabel does). ``Scan.affine`` maps a
voxel index ``(i, j, k, 1)`` to RAS+ millimetres (the NIfTI convention; DICOM readers convert
from LPS). Keeping the stored axis order avoids a transpose on read and on write, and the
mask written on the same grid with the same affine lines up with the input exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GeometryError, ModalityError, ScanError

#: the modality names the readers understand, with aliases found in file names
MODALITY_ALIASES = {
    "t1": "t1", "t1w": "t1", "t1n": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1post": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "t2flair": "flair",
}


@dataclass
class Scan:
    """A multi-modality volume on one grid.

    Attributes
    ----------
    data : float32 array ``[C, I, J, K]``
    affine : float64 array ``(4, 4)``, voxel index to RAS+ mm
    modalities : channel names, in the order of ``data``
    source : identity of the input without patient data (format, file names, UID hashes)
    reference : reader-specific details the writers need (a NIfTI header, DICOM instances)
    released : the voxels were dropped after preparation (:meth:`release_voxels`)
    moments : per-channel intensity statistics the reader computed while decoding
        (:mod:`edge_infer.moments`), or None; normalisation then needs no extra pass
    profiles : per spatial axis, which planes hold a voxel nonzero in any channel
        (:func:`edge_infer.crop.foreground_profiles`), taken by the reader in its read pass,
        or None (computed when needed); the crop box and the empty slices come from them
    """

    data: np.ndarray
    affine: np.ndarray
    modalities: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    released: bool = False
    moments: tuple | None = None
    profiles: tuple | None = None

    def release_voxels(self) -> None:
        """Free the voxel array once a prepared copy exists; shape, affine and source stay.

        ``data`` becomes a read-only zero-stride placeholder of the same shape, so a run that
        writes no overlay holds one copy of the input, not two, while the model runs.
        """
        self.data = np.broadcast_to(np.zeros((), dtype=np.float32), self.data.shape)
        self.released = True

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return voxel_spacing(self.affine)

    def select(self, modalities: Sequence[str]) -> Scan:
        """The scan with channels reordered to ``modalities`` (a view when already in order)."""
        missing = [m for m in modalities if m not in self.modalities]
        if missing:
            raise ModalityError(
                f"the model needs modalities {', '.join(modalities)} but the scan lacks "
                f"{', '.join(missing)} (it has {', '.join(self.modalities)})"
            )
        if tuple(modalities) == self.modalities:
            return self
        idx = [self.modalities.index(m) for m in modalities]
        moments = tuple(self.moments[i] for i in idx) if self.moments is not None else None
        return Scan(self.data[idx], self.affine, tuple(modalities), self.source, self.reference, moments=moments,
                    profiles=self.profiles)  # the union over more channels: a superset, still exact for skipping


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis: the column norms of the affine's 3x3 part."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def canonical_modality(name: str) -> str | None:
    """Map a modality name or alias (``T1c``, ``t1gd``, ``FLAIR``) to its canonical name."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    return MODALITY_ALIASES.get(key)


def available_memory_bytes() -> int:
    """Memory this process may still use: MemAvailable, capped by RLIMIT_AS if set."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 34
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            avail = min(avail, soft)
    except (ImportError, ValueError, OSError):
        pass
    return int(avail)


#: a volume may use at most this share of available memory as float32 (the pipeline keeps
#: about three copies of it: input, prepared volume, probabilities)
MEMORY_SHARE = 0.25


def check_volume_size(shape: Sequence[int], channels: int, what: str) -> None:
    """Refuse a volume whose float32 size would not fit in memory, before allocating it."""
    if any(int(s) <= 0 for s in shape):
        raise ScanError(f"{what} declares an empty or negative size {tuple(int(s) for s in shape)}")
    nbytes = 4 * channels
    for s in shape:
        nbytes *= int(s)
    limit = int(available_memory_bytes() * MEMORY_SHARE)
    if nbytes > limit:
        raise ScanError(
            f"{what} declares a {'x'.join(str(int(s)) for s in shape)} volume "
            f"({nbytes / 2**20:.0f} MiB as float32 x{channels}), more than this machine can hold "
            f"({limit / 2**20:.0f} MiB); check the file header or crop the scan"
        )


def check_finite(data: np.ndarray, modalities: Sequence[str], moments: Sequence | None = None) -> None:
    """Refuse NaN or Inf voxels, naming the modality and how many.

    A channel whose :class:`~edge_infer.moments.Moments` have a finite minimum and maximum
    holds neither (NaN propagates into both) and is not read again.
    """
    for c, name in enumerate(modalities):
        if moments is not None and np.isfinite(moments[c].lo) and np.isfinite(moments[c].hi):
            continue
        bad = data[c].size - int(np.count_nonzero(np.isfinite(data[c])))
        if bad:
            raise ScanError(
                f"modality {name} has {bad} NaN or infinite voxels; fix or mask them before inference"
            )


def check_same_grid(shapes: dict[str, tuple[int, ...]], affines: dict[str, np.ndarray], atol: float = 1e-3) -> None:
    """All modalities must share one grid; the error names the ones that differ from the
    grid most of them share."""
    names = list(shapes)

    def same(a: str, b: str) -> bool:
        return shapes[a] == shapes[b] and np.allclose(affines[a], affines[b], atol=atol)

    ref = max(names, key=lambda n: sum(same(n, o) for o in names))
    bad = []
    for n in names:
        if n == ref or same(n, ref):
            continue
        if shapes[n] != shapes[ref]:
            bad.append(f"{n} is {'x'.join(map(str, shapes[n]))} but {ref} is {'x'.join(map(str, shapes[ref]))}")
        else:
            bad.append(f"{n} has a different affine (position/orientation) than {ref}")
    if bad:
        raise GeometryError("modalities are not on one grid: " + "; ".join(bad) + "; co-register them first")


def check_is_volume(shape: Sequence[int], what: str, min_slices: int = 2) -> None:
    """Refuse a single 2D image or a volume with too few slices."""
    if len(shape) != 3:
        raise ScanError(f"{what} has {len(shape)} dimensions; edge-infer needs a 3D volume per modality")
    if min(shape) < min_slices:
        raise ScanError(
            f"{what} is {'x'.join(map(str, shape))}: too few slices (at least {min_slices} per axis needed); "
            "is it a single 2D image?"
        )
