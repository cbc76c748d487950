"""A real nnU-Net v2 results folder, made by nnU-Net's own planning, trained briefly here.

A tiny synthetic BraTS-like dataset (4 channels, nested tumour regions, no zero background so
nnU-Net's crop to nonzero is a no-op) is written in nnU-Net's raw format; nnU-Net extracts its
fingerprint and plans the experiment (a subprocess, with nnU-Net's environment variables);
each configuration's network (3d_fullres, 2d) is built from those plans, trained for a few
hundred steps by a plain loop, and saved in nnU-Net's checkpoint format (``network_weights``, ``init_args``,
``trainer_name``, ``inference_allowed_mirroring_axes``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

DATASET = "Dataset501_TinyBraTS"
CHANNELS = {"0": "T1", "1": "T1c", "2": "T2", "3": "FLAIR"}
LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
SHAPE = (40, 40, 32)
#: mean intensity per channel of background, edema, core, enhancing
MEANS = np.array([[100, 90, 70, 80], [120, 130, 110, 260], [90, 150, 170, 140], [110, 200, 120, 150]], np.float32)


def phantom(seed: int, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """``(image [4, I, J, K], labels [I, J, K])``: nested ellipsoids (1 outer, 2, 3 inner) in noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    centre = np.array([rng.uniform(0.35, 0.65) * n for n in shape], np.float32)[:, None, None, None]
    r = np.sqrt((((grid - centre) / np.array([rng.uniform(8, 12) for _ in shape], np.float32)[:, None, None, None]) ** 2).sum(0))
    lab = np.select([r < 0.45, r < 0.7, r < 1.0], [3, 2, 1], 0).astype(np.uint8)
    img = MEANS[:, lab] + rng.normal(0, 12, (4, *shape)).astype(np.float32)
    return np.maximum(img, 1.0), lab


def write_raw(raw: Path, cases: int = 6) -> Path:
    root = raw / DATASET
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    for i in range(cases):
        img, lab = phantom(i)
        for c in range(4):
            nib.save(nib.Nifti1Image(img[c], np.eye(4)), root / "imagesTr" / f"case{i:03d}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"case{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": CHANNELS, "labels": LABELS, "regions_class_order": [1, 2, 3],
        "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


PLAN = ("from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments;"
        "extract_fingerprints([501], num_processes=1, check_dataset_integrity=False, verbose=False, show_progress_bar=False);"
        "plan_experiments([501])")


def plan(root: Path) -> Path:
    """nnU-Net's fingerprint and plans (a subprocess: nnU-Net reads its paths at import); made
    once per ``root``, shared by the configurations trained there."""
    if (root / "pre" / DATASET / "nnUNetPlans.json").is_file():
        return root / "pre" / DATASET
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"),
           "nnUNet_results": str(root / "res"), "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", PLAN], env=env, check=True, capture_output=True, timeout=600)
    return root / "pre" / DATASET


def train(net, cases, patch, steps: int, seed: int = 0):
    """A plain loop: random patches, BCE + soft Dice on the three regions. A 2D ``patch``
    trains on slices along the array's first spatial axis (as nnU-Net's 2d configuration)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    flat = len(patch) == 2
    patch = [1, *patch] if flat else patch
    for _ in range(steps):
        img, reg = cases[rng.integers(len(cases))]
        fg = np.argwhere(reg[2] > 0) if rng.random() < 0.67 else None    # oversample the tumour, as nnU-Net does
        at = fg[rng.integers(len(fg))] if fg is not None and len(fg) else None
        lo = [int(rng.integers(0, n - p + 1)) if at is None else int(np.clip(c - p // 2, 0, n - p))
              for n, p, c in zip(img.shape[1:], patch, at if at is not None else patch)]
        sl = tuple(slice(a, a + p) for a, p in zip(lo, patch))
        x = torch.from_numpy(img[(slice(None), *sl)][None])
        y = torch.from_numpy(reg[(slice(None), *sl)][None])
        x, y = (x[:, :, 0], y[:, :, 0]) if flat else (x, y)
        out = net(x)
        p, dims = torch.sigmoid(out), (0, *range(2, x.ndim))
        soft_dice = (2 * (p * y).sum(dims) + 1) / (p.sum(dims) + y.sum(dims) + 1)      # per region
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y) + 1 - soft_dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def nnunet_array(img: np.ndarray) -> np.ndarray:
    """What nnU-Net's SimpleITK reader gives for a RAS-stored ``[C, I, J, K]`` image: ``[C, K, J, I]``."""
    return np.ascontiguousarray(img.transpose(0, 3, 2, 1))


def zscore(a: np.ndarray) -> np.ndarray:
    return ((a - a.mean(axis=(1, 2, 3), keepdims=True)) / a.std(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


#: network width per stage written over the planned one (nnU-Net plans 32, 64, ...: minutes
#: per step on a shared 2-core CI machine); the importer reads whatever the plans say
WIDTH = [4, 8, 16, 32]
#: training patch per configuration (the planned 3D patch is the whole 40 x 40 x 32 case);
#: the networks are fully convolutional
TRAIN_PATCH = {"3d_fullres": [16, 16, 16], "2d": [32, 32]}
#: steps per training round per configuration (a 2D step is a single small slice)
STEPS = {"3d_fullres": 60, "2d": 150}


def all_regions_found(net, dims: int = 3) -> bool:
    """Whether the network finds every region (over 20 voxels) on a held-out phantom (a 2D
    network slice by slice along the array's first spatial axis)."""
    import torch

    img, _ = phantom(1000)
    x = torch.from_numpy(zscore(nnunet_array(img)))
    with torch.no_grad():
        out = (net(x[None])[0] if dims == 3 else net(x.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)).numpy()
    return bool(((out > 0).reshape(3, -1).sum(1) > 20).all())


#: training rounds of ``steps`` at most (a round is about a minute on a shared 2-core machine)
MAX_ROUNDS = 4


def make_results(root: Path, steps: int | None = None, configuration: str = "3d_fullres") -> Path:
    """Write, plan (once per ``root``) and train ``configuration`` (``3d_fullres`` or ``2d``);
    returns ``res/DATASET/nnUNetTrainer__nnUNetPlans__CONFIGURATION``."""
    import torch

    from export.nnunet import build_network

    write_raw(root / "raw")
    pre = plan(root)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    for cfg in plans["configurations"].values():
        if "architecture" in cfg:
            n = len(cfg["architecture"]["arch_kwargs"]["features_per_stage"])
            cfg["architecture"]["arch_kwargs"]["features_per_stage"] = (WIDTH * 2)[:n]
    config = plans["configurations"][configuration]
    out = root / "res" / DATASET / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    (out / "fold_0").mkdir(parents=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=2))
    shutil.copy(pre / "dataset.json", out / "dataset.json")
    shutil.copy(pre / "dataset_fingerprint.json", out / "dataset_fingerprint.json")
    torch.set_num_threads(2)
    cases = []
    for i in range(6):
        img, lab = phantom(i)
        reg = np.stack([lab >= 1, lab >= 2, lab >= 3]).astype(np.float32)
        cases.append((zscore(nnunet_array(img)), np.ascontiguousarray(reg.transpose(0, 3, 2, 1))))
    net = build_network(config, 4, 3)
    for round_ in range(MAX_ROUNDS):       # train until a held-out phantom gets all three regions
        net = train(net, cases, TRAIN_PATCH[configuration], steps or STEPS[configuration], seed=round_)
        if all_regions_found(net, len(config["patch_size"])):
            break
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": configuration, "fold": 0,
                              "dataset_json": json.loads((out / "dataset.json").read_text()), "device": "cpu"},
                "inference_allowed_mirroring_axes": tuple(range(len(config["patch_size"])))}, out / "fold_0" / "checkpoint_final.pth")
    return out
