"""What a DICOM scan records about its source: patient-free identity for reports, and the typed
reference (raw UIDs, files in slice order) that only the DICOM SEG writer reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import UID

from ..uids import uid_hash
from .geometry import Stack


@dataclass(frozen=True)
class SeriesReference:
    """One source series as the DICOM SEG writer references it.

    Raw UIDs are left out of ``repr`` so that a stray log line cannot reveal them.

    Attributes
    ----------
    series_instance_uid : SeriesInstanceUID
    files : the image files, one per slice in slice order (a multi-frame file repeats)
    sop_instance_uids : SOPInstanceUID of each slice's file
    frame_numbers : each slice's frame in its file (1-based; 1 for single-frame images)
    sop_class_uid : SOPClassUID of the series' images
    frame_of_reference_uid : FrameOfReferenceUID of the series
    """

    series_instance_uid: str = field(repr=False)
    files: tuple[str, ...] = field(repr=False)
    sop_instance_uids: tuple[str, ...] = field(repr=False)
    frame_numbers: tuple[int, ...] = ()
    sop_class_uid: str = ""
    frame_of_reference_uid: str = field(default="", repr=False)


@dataclass(frozen=True)
class DicomReference:
    """The source of a scan read from DICOM: its study and, per modality, its series.

    Attributes
    ----------
    study_instance_uid : StudyInstanceUID (raw; never logged)
    series : canonical modality -> :class:`SeriesReference`
    """

    study_instance_uid: str = field(repr=False)
    series: Mapping[str, SeriesReference] = field(default_factory=dict)


LOSSY_SYNTAXES = {  # JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, HTJ2K
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203",
}


def series_warnings(stacks: list[Stack]) -> list[str]:
    warnings = []
    for stack in stacks:
        lossy = sorted({i.transfer_syntax for i in stack.instances} & LOSSY_SYNTAXES)
        if lossy:
            names = ", ".join(UID(s).name for s in lossy)
            warnings.append(
                f"{stack.modality} series is lossy-compressed ({names}); intensities differ from the scanner's"
            )
    if len({s.instances[0].frame_of_reference_uid for s in stacks}) > 1:
        warnings.append("the series have different FrameOfReferenceUIDs; their positions may not be comparable")
    return warnings


def source_of(stacks: list[Stack], warnings: list[str]) -> dict[str, Any]:
    """Identity of the input without patient data: descriptions, counts and UID hashes."""
    series = [
        {
            "modality": s.modality,
            "series_uid_sha256": uid_hash(s.series.uid),
            "series_description": s.series.description,
            "instances": len(s.instances),
            "transfer_syntax": ",".join(sorted({i.transfer_syntax for i in s.instances})),
        }
        for s in stacks
    ]
    return {
        "format": "dicom",
        "series": series,
        "study_uid_sha256": uid_hash(stacks[0].instances[0].study_uid),
        "warnings": warnings,
    }


def reference_of(stacks: list[Stack]) -> dict[str, DicomReference]:
    """Raw UIDs and files in slice order, for the DICOM SEG writer (never logged)."""
    series = {
        s.modality: SeriesReference(
            series_instance_uid=s.series.uid,
            files=tuple(str(i.path) for i in s.instances),
            sop_instance_uids=tuple(i.sop_uid for i in s.instances),
            frame_numbers=tuple(i.frame + 1 for i in s.instances),
            sop_class_uid=s.instances[0].sop_class_uid,
            frame_of_reference_uid=s.instances[0].frame_of_reference_uid,
        )
        for s in stacks
    }
    return {"dicom": DicomReference(stacks[0].instances[0].study_uid, series)}
