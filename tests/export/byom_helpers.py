"""A tiny 2D segmentation network and a spec for it, as a user would bring them."""

from __future__ import annotations

import torch
from torch import nn

#: a spec (manifest without artifacts) for :func:`tiny_seg`: BraTS regions, sigmoid
SPEC = {
    "name": "tiny-byom", "version": "0.1", "dims": 2,
    "input": {"layout": "NCHW", "modalities": ["t1", "t1ce", "t2", "flair"], "spacing_mm": [1, 1, 1],
              "orientation": "RAS", "slice_axis": 2, "tile": [32, 32], "divisible_by": 4,
              "normalization": "zscore_nonzero"},
    "output": {"activation": "sigmoid", "channels": ["WT", "TC", "ET"], "threshold": 0.5,
               "labels": [{"value": 2, "name": "edema", "region": "WT"},
                          {"value": 1, "name": "necrotic_core", "region": "TC"},
                          {"value": 4, "name": "enhancing", "region": "ET"}]},
    "intended_use": "tests only",
}


class TinySeg(nn.Module):
    """Conv-ReLU-Pool-Conv-Upsample: 4 channels in, 3 region logits out."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.dec = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.enc(x)))
        y = nn.functional.interpolate(torch.relu(self.dec(y)), scale_factor=2.0, mode="nearest")
        return self.head(y)


def tiny_seg() -> TinySeg:
    """The factory ``from-torch --factory byom_helpers:tiny_seg`` calls (seeded weights)."""
    torch.manual_seed(0)
    return TinySeg()


MODS = ("t1", "t1ce", "t2", "flair")


def write_nifti_case(folder, image) -> list:
    """``image`` ``[4, I, J, K]`` as ``C1_<modality>.nii.gz`` files (RAS, 1 mm) in ``folder/C1``."""
    import nibabel as nib
    import numpy as np

    case = folder / "C1"
    case.mkdir(parents=True)
    files = [case / f"C1_{mod}.nii.gz" for mod in MODS]
    for c, f in enumerate(files):
        nib.save(nib.Nifti1Image(image[c], np.eye(4)), f)
    return files


def edge_infer_dice(case, model, want, values, out_root, valid=None) -> dict:
    """``edge-infer run`` of ``model`` on ``case`` per precision (fp32, fp16): Dice per label
    value against the reference label map ``want``, whose labels must all be present; only
    over the ``valid`` voxels when given."""
    import nibabel as nib
    import numpy as np
    from click.testing import CliRunner

    from edge_infer.cli import main as edge_main
    from export.losses import dice

    report = {}
    for precision in ("fp32", "fp16"):
        out = out_root / f"out-{precision}"
        r = CliRunner().invoke(edge_main, ["run", str(case), "-o", str(out), "--model", str(model),
                                           "--precision", precision, "-q"], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        got = np.asarray(nib.load(next(out.rglob("*.nii.gz"))).dataobj)
        if valid is not None:
            got, want_v = got[valid], want[valid]
        else:
            want_v = want
        for value in values:
            assert (want_v == value).sum() > 0              # Dice of empty masks says nothing
            report[(precision, value)] = dice(got == value, want_v == value)
    return report
