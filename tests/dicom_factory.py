"""Write real DICOM MR series with pydicom, for tests.

The writers are the inverse of :func:`edge_infer.dicom.read_dicom_folder`: a volume
``[I, J, K]`` with a RAS+ affine written by :func:`write_dicom_series` reads back as the same
array and affine. ``I`` is the column index (along the row direction cosine), ``J`` the row
index, ``K`` the slice index; slice ``k`` is stored as the 2D pixel array ``volume[:, :, k].T``
(``[Rows, Columns]``) at ``ImagePositionPatient = origin + k * step`` (LPS).

The reader orders slices along the normal ``row cosine x column cosine``, so the affine's
third column must point along that normal: its 3x3 part needs a positive determinant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    UID,
    generate_uid,
)
from pydicom.valuerep import DS

#: series descriptions written by :func:`write_dicom_study` unless given
DEFAULT_DESCRIPTIONS = {"t1": "AX T1", "t1ce": "AX T1 POST GD", "t2": "AX T2", "flair": "AX FLAIR"}

#: LPS <-> RAS: flip the first two axes
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])

_PIXEL_FORMATS = {  # dtype -> (BitsAllocated, PixelRepresentation)
    np.dtype(np.int16): (16, 1),
    np.dtype(np.uint16): (16, 0),
    np.dtype(np.uint8): (8, 0),  # not valid in the MR IOD (BitsAllocated 16): for reader edge cases
}


def write_dicom_series(
    folder: str | Path,
    volume: np.ndarray,
    affine_ras: np.ndarray,
    series_description: str,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    shuffle: bool = True,
    rescale: tuple[float, float] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_name: str = "Test^Patient",
    patient_id: str = "TEST-ID",
    dtype: np.dtype | type = np.int16,
    series_number: int = 1,
    seed: int = 0,
) -> list[Path]:
    """Write ``volume`` as one MR Image Storage file per slice.

    Parameters
    ----------
    folder : created if missing
    volume : ``[I, J, K]`` stored values (before rescale), cast to ``dtype`` exactly
    affine_ras : 4x4 voxel index to RAS+ mm, with a positive determinant
    series_description : SeriesDescription (and ProtocolName)
    rescale : ``(slope, intercept)`` written as RescaleSlope/RescaleIntercept, or None
    transfer_syntax : an uncompressed syntax, or RLE Lossless (encoded by pydicom)
    shuffle : random file names and InstanceNumbers that differ from the spatial order
    seed : seed of the shuffling and file names

    Returns
    -------
    list of Path
        The files, in slice order ``k = 0, 1, ...``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype)
    if dtype not in _PIXEL_FORMATS:
        raise ValueError(f"dtype {dtype} not supported; use one of {sorted(map(str, _PIXEL_FORMATS))}")
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be [I, J, K], got shape {volume.shape}")
    stored = volume.astype(dtype)
    if not np.array_equal(stored, volume):
        raise ValueError(f"volume values do not fit {dtype} exactly")
    row_cos, col_cos, col_spacing, row_spacing, origin, step = _lps_geometry(affine_ras)
    n = volume.shape[2]
    rng = np.random.default_rng(seed)
    numbers = _instance_numbers(n, shuffle, rng)
    study_uid = study_uid or generate_uid()
    series = {
        "study_uid": study_uid,
        "series_uid": series_uid or generate_uid(),
        "for_uid": frame_of_reference_uid or generate_uid(),
        "description": series_description,
        "series_number": series_number,
        "patient_name": patient_name,
        "patient_id": patient_id,
    }
    paths = []
    for k in range(n):
        ds = _mr_dataset(series, transfer_syntax)
        ds.InstanceNumber = int(numbers[k])
        ds.ImageOrientationPatient = _ds_list(np.concatenate([row_cos, col_cos]))
        ds.ImagePositionPatient = _ds_list(origin + k * step)
        ds.PixelSpacing = _ds_list([row_spacing, col_spacing])
        ds.SliceThickness = DS(float(np.linalg.norm(step)), auto_format=True)
        _set_pixels(ds, stored[:, :, k].T, transfer_syntax, rescale)
        name = f"{rng.integers(0, 2**48):012x}.dcm" if shuffle else f"slice_{k:04d}.dcm"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_dicom_study(
    folder: str | Path,
    data: np.ndarray,
    affine_ras: np.ndarray,
    modalities: Sequence[str],
    descriptions: Sequence[str] | None = None,
    *,
    subfolders: bool = False,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    **kwargs,
) -> dict[str, list[Path]]:
    """Write ``data [C, I, J, K]`` as one series per modality in one study.

    Parameters
    ----------
    modalities : one name per channel (``t1``, ``t1ce``, ``t2``, ``flair``)
    descriptions : SeriesDescription per channel; defaults from :data:`DEFAULT_DESCRIPTIONS`
    subfolders : one folder per series (``series_01`` ...) instead of all files in ``folder``
    kwargs : passed to :func:`write_dicom_series` (``rescale``, ``transfer_syntax`` ...)

    Returns
    -------
    dict
        modality -> the files of its series, in slice order.
    """
    data = np.asarray(data)
    if data.ndim != 4 or data.shape[0] != len(modalities):
        raise ValueError(f"data must be [C, I, J, K] with C = {len(modalities)}, got {data.shape}")
    descriptions = list(descriptions or [DEFAULT_DESCRIPTIONS[m] for m in modalities])
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    seed = kwargs.pop("seed", 0)
    files = {}
    for c, (modality, description) in enumerate(zip(modalities, descriptions)):
        target = Path(folder) / f"series_{c + 1:02d}" if subfolders else Path(folder)
        files[modality] = write_dicom_series(
            target, data[c], affine_ras, description, study_uid=study_uid,
            frame_of_reference_uid=frame_of_reference_uid, series_number=c + 1,
            seed=seed + c, **kwargs,
        )
    return files


def _lps_geometry(affine_ras: np.ndarray):
    """Row/column cosines, column/row spacing, origin and slice step (LPS) of a RAS affine."""
    affine = _FLIP @ np.asarray(affine_ras, dtype=np.float64)
    m = affine[:3, :3]
    if np.linalg.det(m) <= 0:
        raise ValueError(
            "the affine's 3x3 part must have a positive determinant: the reader orders slices "
            "along row cosine x column cosine; flip the volume's last axis first"
        )
    col_spacing, row_spacing = np.linalg.norm(m[:, 0]), np.linalg.norm(m[:, 1])
    row_cos, col_cos = m[:, 0] / col_spacing, m[:, 1] / row_spacing
    if abs(float(row_cos @ col_cos)) > 1e-6:
        raise ValueError("the affine's first two columns must be orthogonal (DICOM rows and columns are)")
    return row_cos, col_cos, float(col_spacing), float(row_spacing), affine[:3, 3], m[:, 2]


def _instance_numbers(n: int, shuffle: bool, rng: np.random.Generator) -> np.ndarray:
    """1..n in slice order, or a permutation of them that is not the slice order."""
    numbers = np.arange(1, n + 1)
    if shuffle and n > 1:
        while np.array_equal(numbers, np.arange(1, n + 1)):
            numbers = rng.permutation(n) + 1
    return numbers


def _ds_list(values) -> list[DS]:
    return [DS(float(v), auto_format=True) for v in values]


def _mr_dataset(series: dict, transfer_syntax: str) -> FileDataset:
    """A dataset with the MR image IOD's patient, study, series and equipment attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ts = UID(transfer_syntax)
    ds = FileDataset(
        "", {}, file_meta=meta, preamble=b"\0" * 128,
        is_implicit_VR=ts.is_implicit_VR, is_little_endian=ts.is_little_endian,
    )
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.PatientName = series["patient_name"]
    ds.PatientID = series["patient_id"]
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = series["study_uid"]
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC-TEST-123"
    ds.ReferringPhysicianName = ""
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series["series_uid"]
    ds.SeriesNumber = series["series_number"]
    ds.SeriesDescription = series["description"]
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "BRAIN"
    ds.ProtocolName = series["description"]
    ds.FrameOfReferenceUID = series["for_uid"]
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "edge-infer test factory"
    ds.ScanningSequence = "IR" if "flair" in series["description"].lower() else "SE"
    if ds.ScanningSequence == "IR":
        ds.InversionTime = DS(2500)
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.EchoTime = DS(10)
    ds.RepetitionTime = DS(500)
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = DS(3)
    return ds


def _set_pixels(ds: FileDataset, image: np.ndarray, transfer_syntax: str, rescale) -> None:
    """Image pixel attributes and PixelData of one ``[Rows, Columns]`` slice."""
    bits, representation = _PIXEL_FORMATS[image.dtype]
    ds.Rows, ds.Columns = (int(s) for s in image.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = representation
    if rescale is not None:
        ds.RescaleSlope = DS(rescale[0], auto_format=True)
        ds.RescaleIntercept = DS(rescale[1], auto_format=True)
        ds.RescaleType = "US"
    image = np.ascontiguousarray(image)
    if UID(transfer_syntax) == RLELossless:
        ds.compress(RLELossless, image, encoding_plugin="pydicom", generate_instance_uid=False)
        return
    if UID(transfer_syntax) == ExplicitVRBigEndian:
        image = image.astype(image.dtype.newbyteorder(">"))
    ds.PixelData = image.tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"


def write_multiframe_series(folder: str | Path, files: Sequence[Path], description: str | None = None,
                            name: str = "enhanced.dcm") -> Path:
    """Convert a single-frame MR series into one Legacy Converted Enhanced MR Image file (a
    real multi-frame object, written by highdicom: per-frame positions, shared orientation,
    spacing and rescale in functional groups), keeping its SeriesDescription."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    datasets = [pydicom.dcmread(p) for p in files]
    first = datasets[0]
    mf = LegacyConvertedEnhancedMRImage(datasets, first.SeriesInstanceUID, int(first.SeriesNumber),
                                        generate_uid(), 1)
    mf.SeriesDescription = description or first.SeriesDescription
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mf.save_as(folder / name, enforce_file_format=True)
    return folder / name
