"""ONNX external-data checks on the protobuf wire format (no ``onnx`` dependency).

An ONNX model whose tensors keep their weights in "external data" files named by a path the
backend resolves can steer it outside the model folder (onnx CVE-2022-25882 and
CVE-2024-27318; onnxruntime validates these paths only from 1.24 on). This module reads the
protobuf wire format itself: it walks every ``TensorProto`` reachable from ``ModelProto``
(graph initializers, sparse initializers, node attributes, subgraphs, functions, training
info) and reports each one whose ``data_location`` is ``EXTERNAL`` or that has
``external_data`` entries. Policy: edge-infer refuses external data outright. The manifest
pins one sha256 per artifact; a weight file beside it would not be pinned, so the model that
runs could differ from the one that was verified. Models for edge boards are far below
protobuf's 2 GB limit and can always be saved as one file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError


# -- protobuf wire format ----------------------------------------------------------------------
class WireFormatError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


class NestingError(WireFormatError):
    """Messages nest deeper than :data:`MAX_NESTING`: refused, not left to the backend."""


_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return ``(value, next position)``."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise WireFormatError("varint runs past the end of the message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise WireFormatError("varint longer than 10 bytes")


def iter_fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield ``(field number, wire type, value)`` of each field of one message.

    ``value`` is an int for varint and fixed-width fields and a memoryview (no copy) for
    length-delimited ones. Groups (deprecated, unused by ONNX) are skipped as protobuf skips
    unknown fields; malformed bytes raise :class:`WireFormatError`.
    """
    pos, end = 0, len(buf)
    while pos < end:
        number, wire, value, pos = _read_field(buf, pos)
        if wire == _SGROUP:
            pos = _skip_group(buf, pos, number)
        elif wire == _EGROUP:
            raise WireFormatError("end of a group that was not started")
        else:
            yield number, wire, value


def _read_field(buf: memoryview, pos: int) -> tuple[int, int, int | memoryview, int]:
    """One field at ``pos``: ``(number, wire type, value, next position)``."""
    end = len(buf)
    key, pos = read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise WireFormatError("field number 0")
    value: int | memoryview = 0
    if wire == _VARINT:
        value, pos = read_varint(buf, pos)
    elif wire == _I64 or wire == _I32:
        width = 8 if wire == _I64 else 4
        if pos + width > end:
            raise WireFormatError("fixed-width field runs past the end of the message")
        value = int.from_bytes(buf[pos:pos + width], "little")
        pos += width
    elif wire == _LEN:
        size, pos = read_varint(buf, pos)
        if size > end - pos:
            raise WireFormatError("length-delimited field runs past the end of the message")
        value = buf[pos:pos + size]
        pos += size
    elif wire not in (_SGROUP, _EGROUP):
        raise WireFormatError(f"invalid wire type {wire}")
    return number, wire, value, pos


def _skip_group(buf: memoryview, pos: int, number: int) -> int:
    """Position after the end-group tag matching a start-group tag of field ``number``."""
    open_groups = [number]
    while open_groups:
        if pos >= len(buf):
            raise WireFormatError("group runs past the end of the message")
        n, wire, _, pos = _read_field(buf, pos)
        if wire == _SGROUP:
            open_groups.append(n)
        elif wire == _EGROUP:
            if n != open_groups.pop():
                raise WireFormatError("mismatched end of group")
    return pos


# message kind -> {field number: message kind of that (repeated) field}, from onnx.proto
# (checked against the onnx package's descriptors in tests/test_reliability.py)
ONNX_SCHEMA: dict[str, dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 25: "FunctionProto", 20: "TrainingInfoProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "NodeProto": {5: "AttributeProto"},
    "FunctionProto": {7: "NodeProto", 11: "AttributeProto"},
    "AttributeProto": {5: "TensorProto", 6: "GraphProto", 10: "TensorProto", 11: "GraphProto",
                       22: "SparseTensorProto", 23: "SparseTensorProto"},
    "SparseTensorProto": {1: "TensorProto", 2: "TensorProto"},
}
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
DATA_LOCATION_EXTERNAL = 1
#: protobuf's default recursion limit: a deeper message does not parse in the backend either
MAX_NESTING = 100


@dataclass(frozen=True)
class ExternalRef:
    """A tensor whose data lives outside the model file.

    Attributes
    ----------
    tensor : the tensor's name
    location : the ``location`` entry of its ``external_data`` (``""`` if none)
    entries : every ``external_data`` key and value (location, offset, length, checksum)
    """

    tensor: str
    location: str
    entries: tuple[tuple[str, str], ...]


def _text(view: memoryview) -> str:
    return bytes(view).decode("utf-8", "replace")


def _tensor_ref(buf: memoryview) -> ExternalRef | None:
    """The external-data reference of one serialized TensorProto, or None."""
    name, entries, external = "", [], False
    # a value is a memoryview exactly when its wire type is _LEN (see iter_fields)
    for number, wire, value in iter_fields(buf):
        if number == TENSOR_NAME and isinstance(value, memoryview):
            name = _text(value)
        elif number == TENSOR_DATA_LOCATION and wire == _VARINT:
            external = external or value == DATA_LOCATION_EXTERNAL
        elif number == TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            key = val = ""
            for n, _, v in iter_fields(value):
                if n == ENTRY_KEY and isinstance(v, memoryview):
                    key = _text(v)
                elif n == ENTRY_VALUE and isinstance(v, memoryview):
                    val = _text(v)
            entries.append((key, val))
    if not external and not entries:
        return None
    location = next((v for k, v in entries if k == "location"), "")
    return ExternalRef(name, location, tuple(entries))


def external_data_refs(data: bytes | memoryview) -> list[ExternalRef]:
    """Every tensor of a serialized ``ModelProto`` that keeps its data outside the file.

    Raises
    ------
    WireFormatError
        The bytes are not a well-formed protobuf message, or subgraphs nest deeper than
        :data:`MAX_NESTING`.
    """
    refs: list[ExternalRef] = []
    stack: list[tuple[str, memoryview, int]] = [("ModelProto", memoryview(data), 0)]
    while stack:
        kind, buf, depth = stack.pop()
        if kind == "TensorProto":
            ref = _tensor_ref(buf)
            if ref is not None:
                refs.append(ref)
            continue
        if depth > MAX_NESTING:
            raise NestingError(f"messages nest deeper than {MAX_NESTING} levels")
        fields = ONNX_SCHEMA[kind]
        for number, _, value in iter_fields(buf):
            child = fields.get(number)
            if child is not None and isinstance(value, memoryview):  # length-delimited
                stack.append((child, value, depth + 1))
    return refs


def location_problem(location: str, model_dir: str | Path) -> str:
    """What is wrong with an external-data ``location`` beyond being external at all.

    Returns a short phrase: ``"an absolute path"``, ``"a path that escapes the model
    folder"``, ``"a symbolic link"``, ``"missing"`` or ``"inside the model folder"``.
    """
    if not location or "\x00" in location:
        return "an empty or NUL-holding path"
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        return "an absolute path"
    if ".." in Path(location).parts:
        return "a path that escapes the model folder"
    folder, probe = Path(model_dir), Path(model_dir)
    for part in Path(location).parts:
        probe = probe / part
        if probe.is_symlink():
            return "a symbolic link"
    if folder.resolve() not in probe.resolve().parents:
        return "a path that escapes the model folder"
    if not probe.is_file():
        return "missing"
    return "inside the model folder"


def check_onnx_self_contained(path: str | Path, content: bytes | None = None) -> None:
    """Refuse an ONNX file that keeps any tensor in external data (``content``: its bytes,
    already read, so that the bytes checked are the bytes that will be run).

    Bytes that are not a well-formed protobuf message are left to the backend, whose parser
    refuses the same bytes (it follows the same wire format; groups are skipped alike).

    Raises
    ------
    ModelError
        One line naming the first external tensor, its location and what is wrong with it,
        and the fix: save the model as a single file.
    """
    p = Path(path)
    try:
        refs = external_data_refs(p.read_bytes() if content is None else content)
    except NestingError as exc:
        raise ModelError(f"{p.name} cannot be checked for external data ({exc}); re-export the model") from None
    except WireFormatError:
        return
    except OSError as exc:
        raise ModelError(f"cannot read {p}: {exc.strerror or exc}") from None
    if refs:
        ref = refs[0]
        more = f" (and {len(refs) - 1} more tensors)" if len(refs) > 1 else ""
        raise ModelError(
            f"{p.name} keeps tensor {ref.tensor!r}{more} in external data {ref.location!r} "
            f"({location_problem(ref.location, p.parent)}); edge-infer runs only self-contained ONNX "
            "files whose every byte the manifest's sha256 pins: re-save it as a single file "
            "(onnx.save_model(model, path, save_as_external_data=False))"
        )


def describe_onnx_external_data(path: str | Path) -> list[dict[str, str]]:
    """For ``edge-infer verify``: each external tensor with its location and what is wrong."""
    p = Path(path)
    try:
        refs = external_data_refs(p.read_bytes())
    except (WireFormatError, OSError) as exc:
        return [{"tensor": "", "location": "", "problem": f"not a well-formed ONNX file ({exc})"}]
    return [{"tensor": r.tensor, "location": r.location, "problem": location_problem(r.location, p.parent)}
            for r in refs]
