"""DICOM Segmentation (SEG) output: the runtime's label map as a binary SEG instance.

:func:`seg_bytes` turns a label map ``[I, J, K]`` on a DICOM scan's grid into a binary SEG
(DICOM PS3.3 A.51, Segmentation IOD) with highdicom. One segment per label, numbered by
label value ascending (BraTS: 1 necrotic core, 2 edema, 3 enhancing tumour for label 4).
Frame ``k`` is the label map's slice ``k`` transposed to ``[Rows, Columns]`` and references
the source instance at slice ``k`` of the series whose grid the scan uses, so the SEG lies
on the source series' exact geometry (positions and orientation copied from that series).
The other input series are recorded as further source images.

UIDs are derived from the source instances and the model's sha256: the same input and model
give the same SEG (a re-run after a crash re-sends the same instance, not a second one).

highdicom is optional: ``pip install 'edge-infer[dicom]'``.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import __version__
from .dicom.guards import reason
from .dicom.provenance import DicomReference, SeriesReference
from .errors import OutputError
from .library_messages import capture_library_messages
from .writers import LABEL_COLOURS

INSTALL_HINT = "pip install 'edge-infer[dicom]'"
NOT_DICOM = "DICOM SEG needs DICOM input (no source instances to reference); use --format nifti"

_SNOMED = "SCT"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Term:
    """A coded concept: code value, coding scheme, meaning."""

    value: str
    scheme: str
    meaning: str


#: Segmented Property Category (CID 7150)
MORPHOLOGICALLY_ABNORMAL = Term("49755003", _SNOMED, "Morphologically Abnormal Structure")
#: Anatomic Region (CID 4031)
BRAIN = Term("12738006", _SNOMED, "Brain")
#: Algorithm Family (CID 7162)
ARTIFICIAL_INTELLIGENCE = Term("123110", "DCM", "Artificial Intelligence")

#: Segmented Property Type (CID 7151 ...) by a word in the label's name; first match wins
PROPERTY_TYPES: tuple[tuple[str, Term], ...] = (
    ("necro", Term("6574001", _SNOMED, "Necrosis")),
    ("edema", Term("79654002", _SNOMED, "Edema")),
    ("oedema", Term("79654002", _SNOMED, "Edema")),
    ("enhanc", Term("108369006", _SNOMED, "Neoplasm")),
    ("tumo", Term("108369006", _SNOMED, "Neoplasm")),
)
#: property type of a label whose name matches none of :data:`PROPERTY_TYPES`
DEFAULT_PROPERTY_TYPE = Term("52988006", _SNOMED, "Lesion")


def property_type(label_name: str) -> Term:
    """The Segmented Property Type for a label name (``necrotic core`` -> Necrosis)."""
    key = label_name.lower()
    for word, term in PROPERTY_TYPES:
        if word in key:
            return term
    return DEFAULT_PROPERTY_TYPE


def segment_numbers(label_values: Sequence[int]) -> dict[int, int]:
    """Label value -> segment number: 1, 2, ... in ascending label value."""
    return {int(v): n for n, v in enumerate(sorted({int(v) for v in label_values}), start=1)}


def frames_from_labels(labels: np.ndarray, numbers: Mapping[int, int]) -> np.ndarray:
    """Label map ``[I, J, K]`` -> label-map-style frames ``[K, Rows=J, Columns=I]`` of segment numbers.

    Frame ``k`` is ``labels[:, :, k].T`` (DICOM stores a slice as ``[Rows, Columns]``, with
    ``I`` the column index), its values replaced by their segment numbers.
    """
    lut = np.zeros(max(max(numbers, default=0), int(labels.max(initial=0))) + 1, dtype=np.uint8)
    for value, number in numbers.items():
        lut[value] = number
    return np.ascontiguousarray(lut[np.transpose(labels, (2, 1, 0))])


def check_labels(labels: np.ndarray, shape: tuple[int, ...], values: Sequence[int]) -> None:
    """Refuse a label map off the scan's grid or holding values the manifest does not list."""
    if tuple(labels.shape) != tuple(shape):
        raise OutputError(f"the label map is {labels.shape} but the scan is {tuple(shape)}; cannot write a SEG for it")
    if labels.size and (labels.min() < 0 or not np.issubdtype(labels.dtype, np.integer)):
        raise OutputError("the label map must hold non-negative integers to be written as a DICOM SEG")
    found = set(np.unique(labels).tolist()) - {0}
    extra = sorted(found - {int(v) for v in values})
    if extra:
        raise OutputError(f"the label map holds values {extra} that the manifest's labels do not list; "
                          "cannot code them in a SEG")


def seg_bytes(scan, labels: np.ndarray, manifest, provenance: Mapping[str, Any],
              source_headers: Callable[[str], Any] | None = None) -> bytes:
    """A binary DICOM SEG of ``labels`` referencing the scan's source instances.

    Parameters
    ----------
    scan : :class:`~edge_infer.scan.Scan` read from DICOM (``reference["dicom"]`` is a
        :class:`~edge_infer.dicom.provenance.DicomReference`: raw UIDs and files in slice order)
    labels : integer label map ``[I, J, K]`` on the scan's grid (``I`` column, ``J`` row,
        ``K`` slice in position order)
    manifest : the model's :class:`~edge_infer.manifest.Manifest` (labels and their names)
    provenance : ``software``, ``model``, ``model_version``, ``model_sha256`` (as
        :func:`edge_infer.report.provenance` gives)
    source_headers : source file -> its header read ahead, or None (:meth:`.ParseCache.source_header`)

    Returns
    -------
    bytes
        A DICOM Part 10 file (zero preamble, Explicit VR Little Endian).

    Raises
    ------
    OutputError
        The scan is not from DICOM, highdicom is missing, the labels do not fit the scan.
    """
    ref, grid_modality = check_seg_feasible(scan)
    labels = np.asarray(labels)
    check_labels(labels, scan.shape, [lb.value for lb in manifest.labels])
    with capture_library_messages("DICOM SEG writer") as library:
        seg = _segmentation(ref, grid_modality, labels, manifest, provenance, float(scan.spacing[2]), source_headers)
        seg.ContributingEquipmentSequence = contributing_equipment(manifest, provenance)
        buf = io.BytesIO()
        seg.preamble = b"\0" * 128
        seg.save_as(buf, enforce_file_format=True)
    for line in library:
        log.warning(line)
    return buf.getvalue()


def check_seg_feasible(scan) -> tuple[DicomReference, str]:
    """Refuse, before inference, a scan whose DICOM SEG could not be written.

    Pure checks on the scan's reference (and that highdicom is installed): the scan was
    read from DICOM, its grid series has one image per slice, and a multi-frame grid series
    is one file whose frame numbers cover its frames (a SEG references one multi-frame
    source image). Returns the reference and the modality whose series defines the grid.

    Raises
    ------
    OutputError
        One line saying why, and to write the NIfTI mask instead.
    """
    ref = dicom_reference(scan)
    _highdicom()
    modality = _grid_modality(scan, ref)
    grid = ref.series[modality]
    if len(grid.files) != scan.shape[2]:
        raise OutputError(f"the {modality} series has {len(grid.files)} images but the scan has {scan.shape[2]} "
                          "slices; read the scan again")
    if len(set(grid.files)) < len(grid.files):
        if len(set(grid.files)) != 1:
            raise OutputError(f"the {modality} series is split over several multi-frame files; a SEG can reference "
                              "one multi-frame source image: write the NIfTI mask instead (--format nifti)")
        if sorted(grid.frame_numbers) != list(range(1, len(grid.files) + 1)):
            raise OutputError(f"the {modality} series' frame numbers do not cover its frames; read the scan again")
    return ref, modality


def _segmentation(ref: DicomReference, grid_modality: str, labels: np.ndarray, manifest,
                  provenance: Mapping[str, Any], slice_spacing: float, cached: Callable[[str], Any] | None):
    """The highdicom Segmentation of ``labels`` on the grid series, referencing the others."""
    hd = _highdicom()
    grid = ref.series[grid_modality]
    source = [with_slice_thickness(shared_frame_geometry(ds), slice_spacing)
              for ds in _read_headers(list(dict.fromkeys(grid.files)), cached)]
    check_one_source(source, grid_modality)
    numbers = segment_numbers([lb.value for lb in manifest.labels])
    frames = frames_from_labels(labels, numbers)
    if len(source) < len(grid.files):        # a multi-frame source: SEG frames in its frame order
        frames = _in_source_frame_order(frames, grid)
    further = [ds for m, s in ref.series.items() if m != grid_modality
               for ds in _read_headers(list(dict.fromkeys(s.files)), cached)]
    algorithm = algorithm_identification(hd, provenance)
    descriptions = [segment_description(hd, numbers[int(lb.value)], lb.name, algorithm,
                                        LABEL_COLOURS.get(int(lb.value)))
                    for lb in sorted(manifest.labels, key=lambda x: x.value)]
    uids = _derived_uids(ref, provenance)
    model_name = provenance.get("model", manifest.name)
    try:
        return hd.seg.Segmentation(
            source_images=source,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=uids["series"],
            series_number=9000,
            sop_instance_uid=uids["instance"],
            instance_number=1,
            manufacturer="edge-infer",
            manufacturer_model_name=_lo(str(model_name)),
            software_versions=[_lo(f"edge-infer {__version__}"),
                               _lo(f"{model_name} {provenance.get('model_version', manifest.version)}")],
            device_serial_number=str(provenance.get("model_sha256", "unknown"))[:16],
            content_description=_lo(f"{manifest.name} {manifest.version} segmentation (research use only)"),
            content_label="TUMOUR",
            series_description=_lo(f"edge-infer {manifest.name} SEG"),
            further_source_images=further or None,
            omit_empty_frames=True,
        )
    except (AttributeError, ValueError, TypeError, KeyError, IndexError, NotImplementedError) as exc:
        # highdicom checks the source headers (pydicom parses their elements lazily: an unknown VR shows here)
        raise OutputError(f"the {grid_modality} series' headers cannot make a DICOM SEG ({reason(exc)}); write the "
                          "NIfTI mask instead (--format nifti)") from None


def shared_frame_geometry(ds):
    """A multi-frame source header with its Pixel Measures and Plane Orientation also in the
    shared functional group, where highdicom reads them.

    Both macros may be per frame (DICOM PS3.3 C.7.6.16; Philips Enhanced MR does so).
    The reader has checked that every frame's spacing and orientation agree, so the first
    frame's are copied into the shared group of this in-memory header. A single-frame
    header, or one that shares both already, is returned unchanged.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return ds
    from pydicom import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    if not ds.get("SharedFunctionalGroupsSequence"):
        ds.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
    shared = ds.SharedFunctionalGroupsSequence[0]
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword not in shared and keyword in per_frame[0]:
            setattr(shared, keyword, copy.deepcopy(per_frame[0][keyword].value))
    return ds


def check_one_source(headers: Sequence, modality: str) -> None:
    """Refuse grid images that differ in what a SEG needs to be one: study, series, frame of
    reference, rows and columns (highdicom's own criteria; the reader does not require the
    same frame of reference, so a series may mix them).

    Raises
    ------
    OutputError
        One line: which series, and to write the NIfTI mask instead.
    """
    keys = {(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")), ds.get("Rows"),
             ds.get("Columns"), str(ds.get("FrameOfReferenceUID", ""))) for ds in headers}
    if len(keys) > 1:
        raise OutputError(f"the {modality} series' images differ in study, series, frame of reference or size; a SEG "
                          "references one source grid: write the NIfTI mask instead (--format nifti)")


def with_slice_thickness(ds, slice_spacing: float):
    """A single-frame source header with a SliceThickness, where highdicom reads it for the
    SEG's Pixel Measures (DICOM PS3.3 C.7.6.2: type 2, so it may be absent or empty).

    An absent or empty one is set, in this in-memory header only, to the spacing between
    the scan's slices (what the reader measured from the positions). Multi-frame headers
    carry it in their functional groups and are returned unchanged.
    """
    if "PerFrameFunctionalGroupsSequence" not in ds and ds.get("SliceThickness") in (None, ""):
        ds.SliceThickness = round(slice_spacing, 6)
    return ds


def dicom_reference(scan) -> DicomReference:
    """The scan's :class:`~edge_infer.dicom.provenance.DicomReference`; OutputError if it was not read from DICOM."""
    ref = (scan.reference or {}).get("dicom")
    if not isinstance(ref, DicomReference) or not ref.series:
        raise OutputError(NOT_DICOM)
    return ref


def algorithm_identification(hd, provenance: Mapping[str, Any]):
    """Algorithm Identification Sequence: model name, version, family, sha256 in parameters."""
    params = {"model_sha256": str(provenance.get("model_sha256", "")),
              "artifact": str(provenance.get("artifact", "")),
              "precision": str(provenance.get("precision", "")),
              "software": str(provenance.get("software", f"edge-infer {__version__}"))}
    return hd.AlgorithmIdentificationSequence(
        name=_lo(str(provenance.get("model", "edge-infer model"))),
        family=_code(hd, ARTIFICIAL_INTELLIGENCE),
        version=_lo(str(provenance.get("model_version", "unknown"))),
        source="edge-infer",
        parameters=params,
    )


def contributing_equipment(manifest, provenance: Mapping[str, Any]):
    """Contributing Equipment Sequence (PS3.3 C.7.5.1.1.2) naming the model that made the SEG.

    One item, purpose (109102, DCM, "Processing Equipment"), with the model's name as
    ManufacturerModelName, its version and edge-infer's in SoftwareVersions, and its sha256 as
    DeviceSerialNumber (IHE AI Results identifies the algorithm here and in the segments'
    Algorithm Identification).
    """
    from pydicom import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    name = str(provenance.get("model", manifest.name))
    version = str(provenance.get("model_version", manifest.version))
    sha = str(provenance.get("model_sha256", "unknown"))
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = "109102", "DCM", "Processing Equipment"
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    item.Manufacturer = "edge-infer"
    item.ManufacturerModelName = _lo(name)
    item.SoftwareVersions = [_lo(f"{name} {version}"), _lo(f"edge-infer {__version__}")]
    item.DeviceSerialNumber = sha[:64]
    item.ContributionDescription = f"AI segmentation by model {name} version {version}, sha256 {sha}"[:1024]
    return DicomSequence([item])


def segment_description(hd, number: int, label_name: str, algorithm, rgb: tuple[int, int, int] | None = None):
    """One Segment Description item: coded category, type, anatomic region Brain, colour."""
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=_lo(label_name),
        segmented_property_category=_code(hd, MORPHOLOGICALLY_ABNORMAL),
        segmented_property_type=_code(hd, property_type(label_name)),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[_code(hd, BRAIN)],
        display_color=hd.color.CIELabColor.from_rgb(*rgb) if rgb else None,
    )


def _code(hd, term: Term):
    return hd.sr.CodedConcept(term.value, term.scheme, term.meaning)


def _lo(text: str) -> str:
    """A value that fits VR LO (64 characters, no backslash)."""
    return text.replace("\\", "/")[:64]


def _in_source_frame_order(frames: np.ndarray, grid: SeriesReference) -> np.ndarray:
    """Frames in slice order -> in the frame order of the one multi-frame source image (what
    highdicom pairs a multi-frame source with; :func:`check_seg_feasible` checked the numbers)."""
    numbers = np.asarray(grid.frame_numbers, dtype=np.int64)
    out = np.empty_like(frames)
    out[numbers - 1] = frames
    return out


def _grid_modality(scan, ref: DicomReference) -> str:
    """The modality whose series defines the scan's grid (its first channel that has one)."""
    for m in scan.modalities:
        if m in ref.series:
            return m
    raise OutputError(NOT_DICOM)


def _read_headers(files: Sequence[str], cached: Callable[[str], Any] | None = None) -> list:
    """Headers (no pixels) of the source files, in the order given (those ``cached`` has, from it)."""
    import pydicom.errors

    out = []
    for f in files:
        ds = cached(f) if cached is not None else None
        try:
            out.append(ds if ds is not None else pydicom.dcmread(f, stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError, ValueError) as exc:
            raise OutputError(f"cannot read source instance {f} for the SEG ({type(exc).__name__}); "
                              "was it removed after reading?") from exc
    return out


def _derived_uids(ref: DicomReference, provenance: Mapping[str, Any]) -> dict[str, str]:
    """Series and instance UIDs of the SEG, fixed by the source instances and the model."""
    from pydicom.uid import generate_uid

    sources = [ref.study_instance_uid]
    for m in sorted(ref.series):
        sources += list(ref.series[m].sop_instance_uids)
    sources.append(str(provenance.get("model_sha256", "")))
    return {"series": generate_uid(entropy_srcs=["seg-series", *sources]),
            "instance": generate_uid(entropy_srcs=["seg-instance", *sources])}


def _highdicom():
    try:
        from .highdicom_lookup import module as highdicom
    except ImportError:
        raise OutputError(f"DICOM SEG output needs highdicom: {INSTALL_HINT}") from None
    return highdicom
