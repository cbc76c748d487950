"""Which received instances start a job, and which are only kept (PS3.4 Annex B storage classes).

A PACS sends a study with whatever it holds: the MR series, and also segmentations, structured
reports, key-object selections, presentation states, secondary captures, CT, RT objects. The
node accepts storage of every standard storage SOP class (so a sender's store job does not fail
at the first non-image instance), but only instances whose SOP class and Modality are both in
the configured sets join the job's input; the rest are kept aside in the spool and audited.
"""

from __future__ import annotations

from collections.abc import Iterable

#: the SOP classes that start a job by default (MR, Enhanced MR, Legacy Converted Enhanced MR)
MR_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1",
    "1.2.840.10008.5.1.4.1.1.4.4",
)
#: the modalities that start a job by default
DEFAULT_MODALITIES = ("MR",)
#: image SOP classes whose pixel data the node can read (others never join a job)
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
}


def storage_classes() -> list[str]:
    """Every standard storage SOP class UID pynetdicom knows (Part 4 Annex B), sorted."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    return sorted(str(uid) for uid in _STORAGE_CLASSES.values())


def class_name(uid: str) -> str:
    """The standard name of a SOP class UID, or the UID itself (UIDs of classes hold no patient data)."""
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


def starts_job(sop_class: str, modality: str, sop_classes: Iterable[str], modalities: Iterable[str]) -> bool:
    """True when an instance of ``sop_class`` and ``modality`` joins a job's input."""
    return sop_class in tuple(sop_classes) and modality.strip().upper() in {m.upper() for m in modalities}
