"""What the ``byom`` benchmark runs on, built once and cached: a real nnU-Net v2 results folder
and a MONAI bundle, made by the export tests' own builders (``tests/export/nnunet_fixture.py``:
nnU-Net's planning on a tiny synthetic dataset, then a short training saved in nnU-Net's
checkpoint format; ``tests/export/monai_fixture.py``: a SegResNet bundle trained a few steps),
each exported by ``python -m export from-nnunet`` / ``from-monai-bundle``; and one phantom
volume written both as nnU-Net's raw input files and as an edge-infer NIfTI case.

Every folder is built under a temporary name and renamed when complete: an interrupted build
leaves nothing that a later run would take for finished.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .common import ROOT

#: the export tests' builders (a shared source of real artifacts; the tests import them too)
FIXTURES = ROOT / "tests" / "export"
#: bump when a builder changes, so that cached folders are rebuilt
VERSION = "v2"  # v2: input.windows (MONAI placement), nnU-Net 2d fixture
MODALITIES = ("t1", "t1ce", "t2", "flair")


def fixture(name: str):
    """The test-fixture module ``name`` (``nnunet_fixture``, ``monai_fixture``)."""
    if str(FIXTURES) not in sys.path:
        sys.path.insert(0, str(FIXTURES))
    import importlib

    return importlib.import_module(name)


def built(final: Path, build: Callable[[Path], None]) -> Path:
    """``final``, made by ``build(tmp)`` in a sibling temporary folder renamed at the end."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def nnunet_configurations() -> tuple[str, ...]:
    """The nnU-Net configurations the fixture can train here (``2d`` where its ``make_results``
    takes a ``configuration``)."""
    import inspect

    make = fixture("nnunet_fixture").make_results
    return ("3d_fullres", "2d") if "configuration" in inspect.signature(make).parameters else ("3d_fullres",)


def nnunet_results(cache: Path, configuration: str) -> Path:
    """The nnU-Net results folder ``.../nnUNetTrainer__nnUNetPlans__CONFIGURATION`` (planned and
    trained once, with the fixture's own training steps)."""
    def build(tmp: Path) -> None:
        make = fixture("nnunet_fixture").make_results
        if configuration == "3d_fullres":
            make(tmp)
        else:
            make(tmp, configuration=configuration)

    root = built(cache / f"nnunet-{VERSION}-{configuration}", build)
    return next(root.glob(f"res/Dataset*/nnUNetTrainer__nnUNetPlans__{configuration}"))


def monai_bundle(cache: Path, steps: int) -> Path:
    """The MONAI bundle folder (SegResNet, 3 sigmoid outputs, its own inference config)."""
    root = built(cache / f"monai-{VERSION}-{steps}", lambda tmp: fixture("monai_fixture").make_bundle(tmp, steps))
    return root / "tiny_brats_bundle"


def exported(source: Path, command: str, out: Path, threads: int) -> Path:
    """``python -m export from-nnunet|from-monai-bundle SOURCE OUT`` (fp32), once."""
    def build(tmp: Path) -> None:
        p = subprocess.run([sys.executable, "-m", "export", "--threads", str(threads), command, str(source),
                            str(tmp / "model")], capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            raise RuntimeError(f"export {command} exited {p.returncode}: {p.stderr.strip()[-400:]}")

    return built(out, build) / "model"


def volume(cache: Path, shape: tuple[int, int, int], seed: int = 2024) -> tuple[Path, list[Path]]:
    """One 4-channel phantom (not a training case) as ``(edge-infer case folder, nnU-Net input
    files _0000.._0003)``: the same arrays, RAS 1 mm, float32."""
    name = f"byom_{'x'.join(map(str, shape))}"

    def build(tmp: Path) -> None:
        import nibabel as nib
        import numpy as np

        image, _ = fixture("nnunet_fixture").phantom(seed, shape=shape)
        (tmp / "case" / name).mkdir(parents=True)
        (tmp / "nnunet").mkdir()
        for c, mod in enumerate(MODALITIES):
            img = nib.Nifti1Image(image[c].astype(np.float32), np.eye(4))
            nib.save(img, str(tmp / "case" / name / f"{name}_{mod}.nii.gz"))
            nib.save(img, str(tmp / "nnunet" / f"{name}_{c:04d}.nii.gz"))

    root = built(cache / f"volume-{VERSION}-{name}", build)
    return root / "case" / name, sorted((root / "nnunet").glob("*.nii.gz"))
