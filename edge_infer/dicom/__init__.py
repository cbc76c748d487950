"""DICOM input: a folder of MR series read into a :class:`~edge_infer.scan.Scan`.

One module per concern: :mod:`.rules` (which series is which modality), :mod:`.guards`
(hostile-file guards), :mod:`.headers` (walking the folder, header records), :mod:`.geometry`
(slice order and affine), :mod:`.pixels` (decoding), :mod:`.cache` (files parsed ahead, for
the node), :mod:`.provenance` (source identity and the typed reference for the SEG writer),
:mod:`.reader` (the reader that strings them together).
"""

from .cache import ParseCache
from .geometry import POSITION_ATOL, POSITION_RTOL, dicom_affine
from .guards import CappedReader, deflate_limit, file_meta_syntax, pixel_length_problem
from .headers import has_dicom_files
from .pixels import CODECS_HINT
from .provenance import DicomReference, SeriesReference
from .reader import read_dicom_folder
from .rules import CLASSIFY_ORDER, DEFAULT_SERIES_RULES, SeriesInfo, map_series

__all__ = [
    "CLASSIFY_ORDER", "CODECS_HINT", "DEFAULT_SERIES_RULES", "POSITION_ATOL", "POSITION_RTOL", "CappedReader",
    "DicomReference", "ParseCache", "SeriesInfo", "SeriesReference", "deflate_limit", "dicom_affine",
    "file_meta_syntax", "has_dicom_files",
    "map_series", "pixel_length_problem", "read_dicom_folder",
]
