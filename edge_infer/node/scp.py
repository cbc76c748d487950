"""The DICOM Storage SCP: C-ECHO and C-STORE of image instances into the spool.

An instance is checked (it parses, its UIDs are valid and match the request, its pixel data
is complete) and written to the spool atomically before success (0x0000) is returned. A bad
instance is answered with a failure status and kept in quarantine. SOP classes other than
the image classes below are not accepted at association (their presentation contexts are
rejected). pynetdicom's logging of request and response identifiers (which may hold patient
names and IDs) is turned off on import.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from typing import Callable

import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from ..uids import uid_hash
from .audit import AuditLog
from .config import NodeConfig
from .spool import Spool

log = logging.getLogger("edge_infer.node")

try:
    from pynetdicom import _config as _pynetdicom_config

    _pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    _pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
except ImportError:  # pragma: no cover - reported by require_pynetdicom()
    _pynetdicom_config = None

INSTALL_HINT = "pip install 'edge-infer[dicom]'"

#: SOP classes accepted for storage (MR, Enhanced MR, Legacy Converted Enhanced MR, CT, Enhanced CT)
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
}
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
    """The UIDs that place an instance in the spool (raw: never log them)."""

    study: str
    series: str
    sop: str


class InstanceProblem(Exception):
    """An instance that cannot be accepted, with the DIMSE status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def require_pynetdicom():
    try:
        import pynetdicom
    except ImportError:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(f"edge-infer serve needs pynetdicom: {INSTALL_HINT}") from None
    return pynetdicom


def check_instance(data: bytes, sop_class: str | None = None, sop_instance: str | None = None) -> InstanceIds:
    """Parse an encoded instance (Part 10 bytes) and check it can be spooled.

    Raises
    ------
    InstanceProblem
        It does not parse, is not an accepted image SOP class, has invalid or mismatching
        UIDs, lacks image attributes, or its native pixel data is shorter than its header says.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        ids = InstanceIds(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        sop_class_uid = str(ds.SOPClassUID)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, AttributeError, OverflowError,
            NotImplementedError, IndexError, BytesLengthException, struct.error) as exc:
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"cannot parse the instance ({type(exc).__name__})") from None
    if sop_class_uid not in IMAGE_SOP_CLASSES or (sop_class and sop_class_uid != sop_class):
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "SOP class is not an accepted image class or differs from the request")
    if sop_instance and ids.sop != sop_instance:
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "SOPInstanceUID differs from the request's AffectedSOPInstanceUID")
    for name, uid in (("StudyInstanceUID", ids.study), ("SeriesInstanceUID", ids.series), ("SOPInstanceUID", ids.sop)):
        if not UID(uid).is_valid:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, f"{name} is not a valid UID")
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
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "image attributes (Rows, Columns, BitsAllocated, PixelData) are missing") from None
    if rows <= 0 or cols <= 0 or bits not in (8, 16, 32):
        raise InstanceProblem(STATUS_DATASET_MISMATCH, f"implausible image header ({rows}x{cols}, {bits} bits)")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = rows * cols * samples * frames * bits // 8
        got = len(pixel.value or b"")
        if got < expected:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, f"pixel data is truncated ({got} of {expected} bytes)")


class StoreHandler:
    """The C-STORE handler: check, spool, then report the arrival."""

    def __init__(self, spool: Spool, audit: AuditLog, on_stored: Callable[[str], None]) -> None:
        self.spool = spool
        self.audit = audit
        self.on_stored = on_stored

    def __call__(self, event) -> int:
        try:
            data = event.encoded_dataset(include_meta=True)
        except (ValueError, AttributeError, KeyError) as exc:
            log.warning("cannot read a C-STORE dataset: %s", type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        request = event.request
        try:
            ids = check_instance(data, str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID))
        except InstanceProblem as problem:
            path = self.spool.quarantine(data, str(problem))
            log.warning("refused an instance (status 0x%04X): %s; kept as quarantine/%s", problem.status, problem, path.name)
            self.audit.record("instance_refused", reason=str(problem), files=path.name)
            return problem.status
        try:
            self.spool.store_instance(data, ids.study, ids.series, ids.sop)
        except OSError as exc:
            log.error("cannot write an instance to the spool: %s", exc.strerror or type(exc).__name__)
            return STATUS_OUT_OF_RESOURCES
        self.on_stored(f"study:{uid_hash(ids.study)}")
        return STATUS_OK


def make_ae(config: NodeConfig):
    """A pynetdicom AE configured as Verification and Storage SCP for image classes."""
    pn = require_pynetdicom()
    from pynetdicom.sop_class import Verification

    ae = pn.AE(ae_title=config.ae_title)
    ae.maximum_associations = config.max_associations
    ae.maximum_pdu_size = config.max_pdu
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    if config.allowed_aes:
        ae.require_calling_aet = list(config.allowed_aes)
    ae.add_supported_context(Verification)
    for uid in IMAGE_SOP_CLASSES:
        ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
    return ae


def start_server(config: NodeConfig, handler: StoreHandler, audit: AuditLog):
    """Start the SCP in background threads; returns pynetdicom's server (``shutdown()`` stops it)."""
    pn = require_pynetdicom()
    evt = pn.evt

    def on_echo(event) -> int:
        return STATUS_OK

    def on_rejected(event) -> None:
        calling = event.assoc.requestor.ae_title
        log.warning("association from AE %r at %s rejected", calling, event.assoc.requestor.address)
        audit.record("association_rejected", calling_ae=str(calling), reason="calling AE title not allowed")

    handlers = [(evt.EVT_C_ECHO, on_echo), (evt.EVT_C_STORE, handler), (evt.EVT_REJECTED, on_rejected)]
    ae = make_ae(config)
    return ae.start_server((config.bind, config.port), block=False, evt_handlers=handlers)
