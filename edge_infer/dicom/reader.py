"""Read a folder of DICOM MR series into a :class:`~edge_infer.scan.Scan`.

The reader walks the folder, reads headers only, groups the files by SeriesInstanceUID, maps
series to the requested modalities by regular expressions on SeriesDescription (then
ProtocolName), orders each series' slices by position along the slice normal, checks the
geometry, and only then reads the pixels of the series it needs into one preallocated float32
array ``[C, I, J, K]`` (``I`` columns, ``J`` rows, ``K`` slices; see
:func:`~edge_infer.dicom.geometry.dicom_affine`).

Patient data never goes into ``Scan.source`` (UIDs are hashed); raw UIDs and file paths go
into ``Scan.reference["dicom"]`` (a :class:`~edge_infer.dicom.provenance.DicomReference`) for
the DICOM SEG writer only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..crop import foreground_profiles
from ..errors import ModalityError
from ..library_messages import capture_library_messages
from ..scan import Scan, check_finite, check_same_grid, check_volume_size
from ..uids import uid_hash
from .cache import ParseCache
from .geometry import build_stack
from .headers import Instance, scan_folder
from .pixels import check_decoders, check_pixel_format, read_pixels
from .provenance import reference_of, series_warnings, source_of
from .rules import SeriesInfo, canonical_modalities, map_series


def read_dicom_folder(
    folder: str | Path,
    modalities: Sequence[str],
    rules: Mapping[str, Sequence[str]] | None = None,
    cache: ParseCache | None = None,
) -> Scan:
    """Read the series of ``modalities`` from a DICOM folder.

    Parameters
    ----------
    folder : walked recursively; hidden files and symlinked folders are skipped, files that
        are not DICOM (no ``DICM`` at byte 128) are ignored
    modalities : channel names, in the order wanted (``t1``, ``t1ce``, ``t2``, ``flair`` or aliases)
    rules : modality -> regular expressions replacing :data:`DEFAULT_SERIES_RULES` for it
    cache : headers and pixels parsed ahead (:class:`~edge_infer.dicom.cache.ParseCache`), used
        for the files unchanged since; the checks and messages are those of a cold read

    Returns
    -------
    Scan
        ``data`` float32 ``[C, I, J, K]`` after RescaleSlope/Intercept, ``affine`` to RAS+ (see
        :func:`~edge_infer.dicom.geometry.dicom_affine`), ``source`` without patient data,
        ``reference["dicom"]`` with the
        raw UIDs and files in slice order.

    Raises
    ------
    ScanError
        No DICOM files, a corrupt file, an inconsistent or implausible series.
    ModalityError
        A modality maps to no series or to several.
    GeometryError
        The series are not on one grid, or a series' orientation is inconsistent.
    UnsupportedTransferSyntaxError
        A series is compressed with a syntax no installed decoder handles.
    """
    with capture_library_messages("DICOM reader") as library:
        scan = _read_folder(Path(folder), canonical_modalities(modalities), rules, cache)
    scan.source["warnings"].extend(library)
    return scan


def _read_folder(folder: Path, wanted: tuple[str, ...], rules: Mapping[str, Sequence[str]] | None,
                 cache: ParseCache | None) -> Scan:
    """:func:`read_dicom_folder` without the capture of library messages."""
    instances, warnings = scan_folder(folder, cache.parse_file if cache else None)
    by_series = _group_by_series(instances)
    infos = [_series_info(uid, files) for uid, files in by_series.items()]
    mapped = map_series(infos, wanted, rules)
    _check_one_study({m: by_series[s.uid] for m, s in mapped.items()})
    warnings += _skipped_warning(by_series, {s.uid for s in mapped.values()})
    stacks = [build_stack(m, mapped[m], by_series[mapped[m].uid]) for m in wanted]
    check_same_grid({s.modality: s.shape for s in stacks}, {s.modality: s.affine for s in stacks})
    check_volume_size(stacks[0].shape, len(stacks), f"DICOM series {stacks[0].series.label()}")
    for stack in stacks:
        check_pixel_format(stack)
        check_decoders(stack)
    data = np.empty((len(stacks), *stacks[0].shape), dtype=np.float32)
    for c, stack in enumerate(stacks):
        read_pixels(stack, data[c], cache.decode_pixels if cache else None)
    check_finite(data, wanted)
    warnings += series_warnings(stacks)
    return Scan(data, stacks[0].affine.copy(), wanted, source_of(stacks, warnings), reference_of(stacks),
                profiles=foreground_profiles(data))  # issue 15: the crop box, from the assembled volume


def _group_by_series(instances: list[Instance]) -> dict[str, list[Instance]]:
    groups: dict[str, list[Instance]] = {}
    for inst in instances:
        groups.setdefault(inst.series_uid, []).append(inst)
    return groups


def _series_info(uid: str, instances: list[Instance]) -> SeriesInfo:
    """What the rules see of a series: images counted by frames (a multi-frame file counts each)."""
    description = next((i.description for i in instances if i.description), "")
    protocol = next((i.protocol for i in instances if i.protocol), "")
    frames: dict = {}
    for inst in instances:
        frames[inst.path] = max(frames.get(inst.path, 0), inst.frames)
    problem = next((f"{i.path.name} {i.problem}" for i in instances if i.problem), "")
    return SeriesInfo(uid, description, protocol, sum(frames.values()), len(frames), problem)


def _skipped_warning(by_series: dict[str, list[Instance]], used: set[str]) -> list[str]:
    """A warning naming the unusable files of series that were not chosen (they were skipped)."""
    skipped = [i for uid, files in by_series.items() if uid not in used for i in files if i.problem]
    if not skipped:
        return []
    first = skipped[0]
    more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
    return [(f"skipped {len(skipped)} unusable DICOM file(s) in series the model does not use "
            f"({first.path.name} {first.problem}{more})")]


def _check_one_study(selected: dict[str, list[Instance]]) -> None:
    """The mapped series must come from one study (the SEG references a single study)."""
    studies = {m: files[0].study_uid for m, files in selected.items()}
    if len(set(studies.values())) > 1:
        parts = ", ".join(f"{m} from study {uid_hash(s)[:8]}" for m, s in studies.items())
        raise ModalityError(
            f"the selected series come from different studies ({parts}); put one study per folder "
            "or choose series of one study with --series-rule MODALITY=REGEX"
        )
