"""A MONAI bundle folder: SegResNet (4 channels in, 3 sigmoid outputs in MONAI's BraTS order
TC, WT, ET), trained a few steps on phantoms, with MONAI's own inference config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnunet_fixture import phantom

NET = {"_target_": "SegResNet", "spatial_dims": 3, "blocks_down": [1, 2, 2], "blocks_up": [1, 1], "init_filters": 8,
       "in_channels": 4, "out_channels": 3}
ROI = [32, 32, 32]


def inference_config(roi=ROI, extra_pre=()) -> dict:
    return {
        "network_def": NET,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.0, 1.0, 1.0], "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            *extra_pre, {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi), "sw_batch_size": 1, "overlap": 0.5,
                    "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
            {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}]},
    }


def brats_regions(lab: np.ndarray) -> np.ndarray:
    """MONAI's ConvertToMultiChannelBasedOnBratsClasses order for phantom labels 1 (edema), 2, 3."""
    return np.stack([lab >= 2, lab >= 1, lab >= 3]).astype(np.float32)


def make_bundle(root: Path, steps: int = 30) -> Path:
    import torch
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    torch.set_num_threads(2)
    net = SegResNet(**{k: v for k, v in NET.items() if k != "_target_"})
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    cases = []
    for i in range(4):
        img, lab = phantom(i)
        nz = img.reshape(4, -1)
        cases.append((((img - nz.mean(1)[:, None, None, None]) / nz.std(1)[:, None, None, None]).astype(np.float32),
                      brats_regions(lab)))
    net.train()
    for _ in range(steps):
        img, reg = cases[rng.integers(len(cases))]
        fg = np.argwhere(reg[1] > 0)
        at = fg[rng.integers(len(fg))]
        lo = [int(np.clip(c - r // 2, 0, n - r)) for c, r, n in zip(at, ROI, img.shape[1:])]
        sl = tuple(slice(a, a + r) for a, r in zip(lo, ROI))
        x, y = torch.from_numpy(img[(slice(None), *sl)][None]), torch.from_numpy(reg[(slice(None), *sl)][None])
        out = net(x)
        p = torch.sigmoid(out)
        dice = (2 * (p * y).sum((0, 2, 3, 4)) + 1) / (p.sum((0, 2, 3, 4)) + y.sum((0, 2, 3, 4)) + 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y) + 1 - dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    bundle = root / "tiny_brats_bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference_config(), indent=2))
    torch.save(net.eval().state_dict(), bundle / "models" / "model.pt")
    return bundle
