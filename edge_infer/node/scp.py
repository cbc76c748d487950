"""The DICOM Storage SCP's C-STORE handler: check an instance and spool it (the listener, what it
refuses and its stop are in :mod:`.server`).

An instance is checked (it parses, its UIDs are valid and match the request; for an instance
that starts a job, its pixel data is complete) and written to the spool atomically before
success (0x0000) is returned. Instances whose SOP class and modality start no job (SEG, SR,
KO, PR, SC, CT, RT... see :mod:`.classes`) are acknowledged the same way but kept aside, out
of the input, with one log line and one audit record per series. A bad instance is answered
with a failure status and kept in quarantine. pynetdicom's logging of request and response
identifiers (which may hold patient names and IDs) is turned off on import, and its lines
about malformed PDUs lose their tracebacks (:mod:`.peerlog`).
"""

from __future__ import annotations

import io
import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from ..uids import uid_hash
from .audit import AuditLog
from .classes import IMAGE_SOP_CLASSES, MR_SOP_CLASSES, class_name, starts_job
from .config import NodeConfig
from .part10 import encoded_instance
from .spool import Spool

log = logging.getLogger("edge_infer.node")

try:
    from pynetdicom import _config as _pynetdicom_config
except ImportError:  # pragma: no cover - reported by require_pynetdicom()
    pass
else:
    _pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    _pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    # its per-PDU and per-message log handlers format their lines even when they are not shown
    # (with the File Meta encoding of part10.py, 0.85 ms per instance): bound only with -v
    # (cli_node._setup_logging)
    _pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    from .peerlog import quiet_peer_errors

    quiet_peer_errors()  # a peer's malformed PDUs: one line each, no traceback, no line per junk byte

INSTALL_HINT = "pip install 'edge-infer[dicom]'"

#: transfer syntaxes accepted (no Deflated: it would be inflated in memory, a zip-bomb risk)
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",     # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.5",     # RLE Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
)

STATUS_OK = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class InstanceIds:
    """The UIDs that place an instance in the spool (raw: never log them), and what it is."""

    study: str
    series: str
    sop: str
    sop_class: str = ""
    modality: str = ""
    usable: bool = True


class InstanceProblem(Exception):
    """An instance that cannot be accepted, with the DIMSE status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def skip_value_validation() -> None:
    """Turn off pydicom's validation of every value it reads, for this (receiving) process.

    pydicom checks each value read (each UID of each command set, each copied presentation
    context, each element of a received data set) against its VR with a regular expression and
    only warns: about 0.7 ms of CPU per instance received, a sixth of what the node spends on
    one (A/B on the bench study). What decides whether an instance is accepted are the
    node's own checks (:func:`check_instance`: UIDs valid and matching, image attributes,
    pixel length), which do not depend on it. Jobs of this process then carry no "a header
    value is not valid for VR ..." note in their report.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def require_pynetdicom():
    try:
        import pynetdicom
    except ImportError:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(f"edge-infer serve needs pynetdicom: {INSTALL_HINT}") from None
    return pynetdicom


def check_instance(data: bytes, sop_class: str | None = None, sop_instance: str | None = None, *,
                   job_classes=MR_SOP_CLASSES, job_modalities=("MR",)) -> InstanceIds:
    """Parse an encoded instance (Part 10 bytes) and check it can be spooled.

    The result's ``usable`` says whether it starts a job: its SOP class is one of
    ``job_classes`` (and an image class the node reads) and its Modality one of ``job_modalities``.

    Raises
    ------
    InstanceProblem
        It does not parse, its SOP class differs from the request, has invalid or mismatching
        UIDs; or, usable, lacks image attributes or its native pixel data is shorter than its
        header says.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        sop_class_uid = str(ds.SOPClassUID)
        ids = InstanceIds(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                          sop_class_uid, str(ds.get("Modality", "") or ""))
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, AttributeError, OverflowError,
            NotImplementedError, IndexError, BytesLengthException, struct.error) as exc:
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"cannot parse the instance ({type(exc).__name__})") from None
    if sop_class and sop_class_uid != sop_class:
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "SOPClassUID differs from the request's AffectedSOPClassUID")
    if sop_instance and ids.sop != sop_instance:
        raise InstanceProblem(STATUS_DATASET_MISMATCH,
                              "SOPInstanceUID differs from the request's AffectedSOPInstanceUID")
    for name, uid in (("StudyInstanceUID", ids.study), ("SeriesInstanceUID", ids.series), ("SOPInstanceUID", ids.sop)):
        if not UID(uid).is_valid:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, f"{name} is not a valid UID")
    usable = sop_class_uid in IMAGE_SOP_CLASSES and starts_job(sop_class_uid, ids.modality, job_classes, job_modalities)
    if not usable:
        return InstanceIds(ids.study, ids.series, ids.sop, ids.sop_class, ids.modality, usable=False)
    _check_pixels(ds)
    return ids


def _check_pixels(ds) -> None:
    """Image attributes present; native pixel data at least as long as Rows x Columns x frames."""
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        pixel = ds["PixelData"]
    except (KeyError, AttributeError, TypeError, ValueError, BytesLengthException, NotImplementedError,
            struct.error):  # also a value of the wrong length, or an unknown VR, read lazily here
        raise InstanceProblem(STATUS_DATASET_MISMATCH,
                              "image attributes (Rows, Columns, BitsAllocated, PixelData) are missing") from None
    if rows <= 0 or cols <= 0 or bits not in (8, 16, 32):
        raise InstanceProblem(STATUS_DATASET_MISMATCH, f"implausible image header ({rows}x{cols}, {bits} bits)")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = rows * cols * samples * frames * bits // 8
        got = len(pixel.value or b"")
        if got < expected:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, f"pixel data is truncated ({got} of {expected} bytes)")


class StoreHandler:
    """The C-STORE handler (and STOW-RS's, through :meth:`store`): check, spool (input or kept
    aside), then report the arrival."""

    def __init__(self, spool: Spool, audit: AuditLog, on_stored: Callable[[str], object],
                 config: NodeConfig | None = None, metrics=None,
                 kept_aside: Callable[[str, str, str], object] | None = None) -> None:
        self.spool = spool
        self.audit = audit
        self.on_stored = on_stored
        self.job_classes = config.job_sop_classes if config else MR_SOP_CLASSES
        self.job_modalities = config.job_modalities if config else ("MR",)
        self.metrics = metrics
        #: ``(study hash, series hash, why)`` of each instance kept aside; a receiver process
        #: passes it on to the node's :meth:`series_kept_aside`
        self.kept_aside = kept_aside or self.series_kept_aside
        self._recorded: set[tuple[str, str]] = set()  # series logged and audited
        self._lock = threading.Lock()

    def __call__(self, event) -> int:
        try:
            data = encoded_instance(event)
        except (ValueError, AttributeError, KeyError) as exc:
            log.warning("cannot read a C-STORE dataset: %s", type(exc).__name__)
            return self._count(STATUS_CANNOT_UNDERSTAND, "unreadable")
        request = event.request
        return self.store(data, str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID))

    def store(self, data: bytes, sop_class: str | None = None, sop_instance: str | None = None) -> int:
        """Check and spool one Part 10 instance (from C-STORE or STOW-RS); returns the DIMSE status."""
        try:
            ids = check_instance(data, sop_class, sop_instance,
                                 job_classes=self.job_classes, job_modalities=self.job_modalities)
        except InstanceProblem as problem:
            try:
                kept = "quarantine/" + self.spool.quarantine(data, str(problem)).name
            except OSError as exc:  # the disk is full: refuse it all the same, say so
                kept = f"not kept ({exc.strerror or type(exc).__name__})"
            log.warning("refused an instance (status 0x%04X): %s; %s", problem.status, problem, kept)
            self.audit.record("instance_refused", reason=str(problem), files=kept)
            return self._count(problem.status, "invalid")
        try:
            self.spool.store_instance(data, ids.study, ids.series, ids.sop, usable=ids.usable)
        except OSError as exc:
            cause = exc.strerror or type(exc).__name__
            why = f"cannot write the instance to the spool ({cause}); answered 0xA700, not kept"
            log.error("%s", why)
            self.audit.record("instance_refused", reason=why)
            return self._count(STATUS_OUT_OF_RESOURCES, "spool_write")
        if not ids.usable:
            self._kept_aside(ids)
        self.on_stored(f"study:{uid_hash(ids.study)}")
        return self._count(STATUS_OK, "input" if ids.usable else "kept_aside")

    def _kept_aside(self, ids: InstanceIds) -> None:
        why = f"{class_name(ids.sop_class)}, modality {ids.modality or 'none'}: starts no job"
        self.kept_aside(uid_hash(ids.study), uid_hash(ids.series), why)

    def series_kept_aside(self, study: str, series: str, why: str) -> None:
        """One log line and one audit record per series kept aside, however many associations
        and receiver processes its instances came through."""
        with self._lock:
            if (study, series) in self._recorded:
                return
            self._recorded.add((study, series))
        log.info("study %s series %s kept aside, not input (%s)", study, series, why)
        self.audit.record("series_kept_aside", study=study, series=series, reason=why)

    def _count(self, status: int, kind: str) -> int:
        if self.metrics is not None:
            self.metrics.instance(kind, refused=status != STATUS_OK)
        return status
