"""A bound on what one received data set may hold in memory (``max_instance_mb``).

pynetdicom reads each PDU whole, as long as its header declares (up to 4 GiB, whatever
``max_pdu`` says), and keeps a data set's fragments in memory until the last one. So a peer
could make the node hold any amount. :class:`DataSetLimit` wraps an association socket's
``recv`` (pynetdicom's DUL reads a 6-byte PDU header, then the PDU's body, through it): a
P-DATA-TF PDU that would take the data set being received past the limit, or any other PDU
over :data:`OTHER_PDU_MAX`, is refused before its body is read. The association is then
dropped as a transport error; nothing of that instance was acknowledged or stored.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

P_DATA_TF = 0x04
#: the PDU types of PS3.8 9.3 (pynetdicom refuses others itself, before reading their body)
KNOWN_PDU_TYPES = frozenset(range(0x01, 0x08))
#: the largest PDU of another type (an A-ASSOCIATE-RQ of 128 contexts, the most PS3.8 allows, of
#: 10 transfer syntaxes each, encodes to 37 KB)
OTHER_PDU_MAX = 1 << 20


class DataSetTooLarge(OSError):
    """Raised from ``recv``: pynetdicom treats it as the connection closing."""


class DataSetLimit:
    """``recv(n)`` of an association socket that refuses a PDU taking a data set past ``limit`` bytes.

    ``refused(reason)`` is called once, before the error is raised.
    """

    def __init__(self, recv: Callable[[int], bytes], limit: int, refused: Callable[[str], object]) -> None:
        self._recv = recv
        self.limit = limit
        self._refused = refused
        self.pending = 0  # bytes of the data set being received so far
        self._body: int | None = None  # the length of the PDU body to come, once its header was read
        self._type = 0

    def __call__(self, nr_bytes: int) -> bytes:
        data = self._recv(nr_bytes)
        if self._body is None:
            if len(data) == 6:
                self._header(data)
        elif nr_bytes == self._body:
            self._body = None
            if self._type == P_DATA_TF:
                self._count(data)
        return data

    def _header(self, data: bytes) -> None:
        pdu_type, _, length = struct.unpack(">BBL", data)
        if pdu_type == P_DATA_TF and self.pending + length > self.limit:
            self._refuse(f"a data set larger than max_instance_mb ({self.limit // 2**20} MB)")
        if pdu_type in KNOWN_PDU_TYPES and pdu_type != P_DATA_TF and length > OTHER_PDU_MAX:
            self._refuse(f"a PDU of type 0x{pdu_type:02X} declaring {length} bytes")
        self._type, self._body = pdu_type, length

    def _count(self, body: bytes | bytearray) -> None:
        """Add the data set fragments of a P-DATA-TF body (PDV items: length, context id,
        message control header, fragment); a last fragment ends the data set."""
        at = 0
        while at + 6 <= len(body):
            (length,) = struct.unpack_from(">L", body, at)
            control = body[at + 5]
            if not control & 0x01:  # a data set fragment, not a command
                self.pending += max(0, length - 2)
                if control & 0x02:
                    self.pending = 0
            at += 4 + length

    def _refuse(self, reason: str) -> None:
        self._refused(reason)
        raise DataSetTooLarge(reason)
