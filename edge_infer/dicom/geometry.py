"""Slice order and grid of a DICOM series: the stack along the slice normal and its affine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import GeometryError, ScanError
from ..scan import check_is_volume
from .headers import Instance
from .rules import SeriesInfo

#: slice positions may differ from a regular grid by this much (mm), or by this share of the spacing
POSITION_ATOL = 0.01
POSITION_RTOL = 1e-3


@dataclass(frozen=True)
class Stack:
    """One series' image files in slice order, with its grid."""

    modality: str
    series: SeriesInfo
    instances: tuple[Instance, ...]
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def what(self) -> str:
        return f"DICOM series {self.series.label()} for {self.modality}"


def dicom_affine(
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    first_position: Sequence[float],
    slice_step: Sequence[float],
) -> np.ndarray:
    """Voxel index ``(i, j, k)`` to RAS+ mm affine of a stack of DICOM slices.

    Parameters
    ----------
    orientation : ImageOrientationPatient (0020,0037): the row direction cosine (the direction
        of increasing column index ``i``) then the column direction cosine (increasing row
        index ``j``), in the patient's LPS frame; normalised here
    pixel_spacing : PixelSpacing (0028,0030): ``[row spacing, column spacing]`` in mm, i.e.
        the distance between adjacent rows, then between adjacent columns
    first_position : ImagePositionPatient (0020,0032) of the first slice: LPS mm of the centre
        of its first transmitted pixel (top left, ``i = j = 0``)
    slice_step : LPS vector from one slice's position to the next one's, best
        ``(last - first) / (n - 1)``; it may be oblique to the slice normal (gantry tilt)

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64 mapping ``(i, j, k, 1)`` to RAS+ mm, where ``i`` is the column index,
        ``j`` the row index and ``k`` the slice index.

    Notes
    -----
    DICOM PS3.3 C.7.6.2.1.1 (Image Position and Image Orientation, Equation C.7.6.2.1-1) gives
    the LPS position of the pixel in column ``i`` and row ``j`` as
    ``P = S + i * Di * X + j * Dj * Y``, with ``X`` the row direction cosine, ``Y`` the column
    direction cosine, ``Di`` the column spacing (``PixelSpacing[1]``), ``Dj`` the row spacing
    (``PixelSpacing[0]``) and ``S`` ImagePositionPatient. The slice axis adds
    ``k * slice_step``. RAS+ is LPS with the first two axes negated, so rows 0 and 1 of the
    LPS affine are multiplied by -1.
    """
    cosines = np.asarray(orientation, dtype=np.float64)
    spacing = np.asarray(pixel_spacing, dtype=np.float64)
    if cosines.shape != (6,) or spacing.shape != (2,) or not np.all(spacing > 0):
        raise GeometryError(
            f"need 6 orientation cosines and 2 positive pixel spacings, got {cosines.tolist()} and "
            f"{spacing.tolist()}; check ImageOrientationPatient and PixelSpacing"
        )
    row_cos, col_cos = unit(cosines[:3]), unit(cosines[3:])
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[1]
    lps[:3, 1] = col_cos * spacing[0]
    lps[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    lps[:2, :] *= -1.0
    return lps + 0.0  # no negative zeros


def build_stack(modality: str, series: SeriesInfo, instances: list[Instance]) -> Stack:
    """Order a series' slices along the normal, check them, and compute the grid."""
    what = f"DICOM series {series.label()} for {modality}"
    _check_headers(instances, what)
    first = instances[0]
    check_is_volume((first.columns, first.rows, len(instances)), what)
    _check_uniform(instances, what)
    ordered, positions = _order_along_normal(instances, what)
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    _check_collinear(positions, step, what)
    affine = dicom_affine(first.orientation, first.pixel_spacing, positions[0], step)
    return Stack(modality, series, tuple(ordered), (first.columns, first.rows, len(ordered)), affine)


def _check_headers(instances: list[Instance], what: str) -> None:
    """Raise the header problem kept for a file."""
    for inst in instances:
        if inst.problem:
            raise ScanError(f"{what}: file {inst.path.name} {inst.problem}; fix or remove that file")


def _order_along_normal(instances: list[Instance], what: str) -> tuple[list[Instance], np.ndarray]:
    """Instances sorted by position along row cosine x column cosine, and their LPS positions."""
    cosines = instances[0].orientation
    row_cos, col_cos = unit(np.array(cosines[:3])), unit(np.array(cosines[3:]))
    if abs(float(row_cos @ col_cos)) > 1e-3:
        raise GeometryError(f"{what} has non-orthogonal ImageOrientationPatient {list(cosines)}; fix the header")
    positions = np.array([inst.position for inst in instances], dtype=np.float64)
    distances = positions @ np.cross(row_cos, col_cos)
    order = np.argsort(distances, kind="stable")
    ordered = [instances[i] for i in order]
    _check_spacing(distances[order], ordered, what)
    return ordered, positions[order]


def _check_uniform(instances: list[Instance], what: str) -> None:
    """All slices share Rows/Columns, PixelSpacing and ImageOrientationPatient."""
    first = instances[0]
    for inst in instances[1:]:
        if (inst.rows, inst.columns) != (first.rows, first.columns):
            raise ScanError(
                f"{what} mixes image sizes: {inst.path.name} is {inst.rows}x{inst.columns}, "
                f"{first.path.name} is {first.rows}x{first.columns}; remove the odd files"
            )
        same = inst.pixel_spacing == first.pixel_spacing   # the usual case, without numpy per slice
        if not same and not np.allclose(inst.pixel_spacing, first.pixel_spacing, rtol=POSITION_RTOL, atol=1e-4):
            raise ScanError(
                f"{what} mixes pixel spacings: {inst.path.name} has {list(inst.pixel_spacing)}, "
                f"{first.path.name} has {list(first.pixel_spacing)}; remove the odd files"
            )
        if inst.orientation != first.orientation and not np.allclose(inst.orientation, first.orientation, atol=1e-4):
            raise GeometryError(
                f"{what} mixes slice orientations: {inst.path.name} has {list(inst.orientation)}, "
                f"{first.path.name} has {list(first.orientation)}; it may hold several stacks, "
                "export them as separate series"
            )


def _check_spacing(distances: np.ndarray, ordered: list[Instance], what: str) -> None:
    """Refuse duplicate positions and uneven spacing; name a missing slice's position."""
    diffs = np.diff(distances)
    for k, d in enumerate(diffs):
        if d <= POSITION_ATOL:
            a, b = ordered[k], ordered[k + 1]
            same = "the same instance (same SOPInstanceUID)" if a.sop_uid == b.sop_uid else "at the same position"
            raise ScanError(
                f"{what}: files {a.path.name} and {b.path.name} are {same} ({distances[k]:.2f} mm "
                "along the normal); remove duplicates, or split echoes/repetitions into separate series"
            )
    median = float(np.median(diffs))
    tol = max(POSITION_ATOL, POSITION_RTOL * median)
    bad = np.flatnonzero(np.abs(diffs - median) > tol)
    if bad.size == 0:
        return
    base = float(diffs.min())
    multiples = np.rint(diffs / base)
    if np.all(np.abs(diffs - multiples * base) <= max(POSITION_ATOL, POSITION_RTOL * base)):
        k = int(np.flatnonzero(multiples > 1)[0])
        missing = int(multiples[k]) - 1
        first, last = distances[k] + base, distances[k] + missing * base
        where = f"the slice at {first:.2f} mm is" if missing == 1 else f"the slices at {first:.2f} to {last:.2f} mm are"
        raise ScanError(
            f"{what} is missing {missing} slice(s) after slice {k} (at {distances[k]:.2f} mm along the "
            f"slice normal): the next slice is {diffs[k]:.2f} mm away but the spacing is {base:.2f} mm, so "
            f"{where} missing; copy or export the complete series"
        )
    k = int(bad[0])
    raise ScanError(
        f"{what} has uneven slice spacing: slices {k} and {k + 1} are {diffs[k]:.3f} mm apart but the "
        f"median spacing is {median:.3f} mm; the series may mix stacks, choose another series"
    )


def _check_collinear(positions: np.ndarray, step: np.ndarray, what: str) -> None:
    """Slice positions must lie on one line ``first + k * step`` (a single stack)."""
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    deviation = np.linalg.norm(positions - expected, axis=1)
    tol = max(POSITION_ATOL, POSITION_RTOL * float(np.linalg.norm(step)))
    if deviation.max() > tol:
        k = int(deviation.argmax())
        raise GeometryError(
            f"{what}: slice {k} is {deviation[k]:.3f} mm off the line through the other slice "
            "positions; the series may mix stacks, export them as separate series"
        )


def unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm < 1e-6:
        raise GeometryError(f"direction cosine {v.tolist()} has no length; fix ImageOrientationPatient")
    return v / norm
