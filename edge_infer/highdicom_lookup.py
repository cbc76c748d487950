"""highdicom with its IOD lookup memoised: imported by :mod:`edge_infer.seg` to write a SEG.

highdicom's ``is_attribute_in_iod`` walks every attribute of every module of an IOD in its
copy of the standard on each call. Building one SEG calls it about 500 times (for each source
image, whether its SOP class holds pixel data): on the node's bench study (4 series of 40
instances) that was about a third of the job's SEG write. The answer depends only on the
arguments, so it is cached once per process; the SEG is the same.

The function lives in highdicom's private ``_standard_utils``: if a release moves it, nothing
is cached (same output, slower) and :func:`memoise_iod_lookup` says so by returning False.
"""

from __future__ import annotations

import functools
from typing import Any


def memoise_iod_lookup() -> bool:
    """Cache highdicom's ``is_attribute_in_iod`` where highdicom calls it (idempotent); True when cached."""
    try:
        import highdicom._standard_utils as standard
        import highdicom.base as base
    except ImportError:
        return False
    lookup = getattr(standard, "is_attribute_in_iod", None)
    if lookup is None:
        return False
    if getattr(lookup, "__wrapped__", None) is not None:   # cached already (functools.wraps sets it)
        return True
    cached = functools.lru_cache(maxsize=4096)(
        lambda attribute, sop_class_uid, exclude: lookup(attribute, sop_class_uid, exclude))

    @functools.wraps(lookup)
    def is_attribute_in_iod(attribute, sop_class_uid, exclude_path_elements=None):
        exclude = tuple(exclude_path_elements) if exclude_path_elements is not None else None
        return cached(attribute, sop_class_uid, exclude)

    standard.is_attribute_in_iod = base.is_attribute_in_iod = is_attribute_in_iod  # base imported it by name
    return True


def __getattr__(name: str) -> Any:
    """``module``: highdicom, imported now (ImportError when it is not installed), its lookup cached."""
    if name != "module":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import highdicom

    memoise_iod_lookup()
    return highdicom
