"""What a caller chooses for a run, as small frozen records: model, reading, finishing,
outputs and tuning. The CLI, the node and ``edge-infer batch`` build these and hand them to
:func:`edge_infer.run.run_case`; no click option name is part of the library's API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

#: the mask formats a run can write
MASK_FORMATS = ("nifti", "seg")


@dataclass(frozen=True)
class ModelChoice:
    """Which model runs, and how: backend, precision and threads from the ``board`` where not given.

    ``threads`` are the run's CPU threads in all (0: the board's, else every core);
    ``workers`` backend calls run at once on different slices (None: the default for the model).
    """

    model: str | Path | None = None
    backend: str | None = None
    precision: str | None = None
    threads: int = 0
    workers: int | None = None
    board: Any = None


@dataclass(frozen=True)
class ReadOptions:
    """How the inputs become a scan: files named by modality, DICOM series rules (modality -> regexes)."""

    by_modality: Mapping[str, Path] | None = None
    series_rules: Mapping[str, list[str]] | None = None


@dataclass(frozen=True)
class FinishOptions:
    """How probabilities become the final labels."""

    threshold: float | None = None
    keep_largest: bool = False
    min_blob_mm3: float = 0.0


@dataclass(frozen=True)
class OutputSpec:
    """Where and what to write: mask ``formats`` (``nifti``, ``seg``), an overlay PNG, the file-name
    stem (None: from the input), and ``strict``: a board budget breach writes nothing."""

    out_dir: Path = Path(".")
    formats: tuple[str, ...] = ("nifti",)
    overlay: bool = False
    name: str | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        unknown = [f for f in self.formats if f not in MASK_FORMATS]
        if unknown or not self.formats:
            raise InputError(f"unknown mask format(s) {unknown or '(none)'}; choose from {', '.join(MASK_FORMATS)}")


@dataclass(frozen=True)
class RunTuning:
    """Batch (slices or tiles per backend call), sliding-window overlap, and the progress bar
    (``progress`` None: shown only when stderr is a terminal and not ``quiet``)."""

    batch: int | None = None
    overlap: float | None = None
    quiet: bool = True
    progress: bool | None = None
    crop: bool = True           # follow the manifest's crop rule; False: the full field of view (--no-crop)
