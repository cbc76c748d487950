"""Training on BraTS-layout data: slice / patch sampling, the loop, checkpoints, validation.

The loss is equally weighted BCE-with-logits + soft Dice over the WT/TC/ET regions; Adam
with a step learning-rate schedule. 2D models see axial slices ``[C, I, J]`` (axis 2 of the
RAS volume, as the runtime slices), sampled with a bias toward slices holding tumour and
cropped to the training tile around a tumour voxel; 3D models see patches.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .data import REGIONS, Case
from .errors import CheckpointError
from .losses import bce_dice_loss, region_dice
from .zoo import create_model


@dataclass
class TrainConfig:
    """Settings of one training run (all recorded in the checkpoint and the manifest)."""

    arch: str = "flat_unet2d"
    model_kwargs: dict = field(default_factory=dict)
    steps: int = 600
    batch: int = 8
    lr: float = 2e-3
    lr_step: int = 200
    lr_gamma: float = 0.5
    tile: tuple[int, ...] = (128, 128)
    tumour_p: float = 0.8
    flip: bool = True
    seed: int = 0
    threads: int = 2

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tile"] = list(self.tile)
        return d


def set_threads(n: int) -> None:
    """Limit torch to ``n`` threads (the machines this runs on are small and shared)."""
    torch.set_num_threads(max(1, int(n)))


# -- sampling ------------------------------------------------------------------------------
def _crop_start(size: int, tile: int, centre: int | None, rng: np.random.Generator) -> int:
    if size <= tile:
        return 0
    if centre is None:
        return int(rng.integers(0, size - tile + 1))
    jitter = int(rng.integers(-tile // 3, tile // 3 + 1))
    return int(np.clip(centre - tile // 2 + jitter, 0, size - tile))


def _crop(arr: np.ndarray, starts: Sequence[int], tile: Sequence[int]) -> np.ndarray:
    """Crop the trailing spatial axes of ``arr`` at ``starts``; zero-pad up to ``tile``."""
    sl = tuple(slice(s, s + t) for s, t in zip(starts, tile))
    out = arr[(..., *sl)]
    pad = [(0, 0)] * (out.ndim - len(tile)) + [(0, t - n) for t, n in zip(tile, out.shape[-len(tile):])]
    return np.pad(out, pad) if any(p[1] for p in pad) else out


def sample_slices(cases: Sequence[Case], batch: int, tile: Sequence[int], tumour_p: float,
                  rng: np.random.Generator, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A batch of axial slices ``[B, C, h, w]`` and targets ``[B, 3, h, w]``.

    With probability ``tumour_p`` a slice holding tumour is drawn and the crop is centred
    (with jitter) on a random tumour pixel; otherwise any slice holding brain.
    """
    xs, ys = [], []
    for _ in range(batch):
        case = cases[int(rng.integers(len(cases)))]
        wt = case.target[0]
        tumour_k = np.nonzero(wt.any(axis=(0, 1)))[0]
        centre = None
        if len(tumour_k) and rng.random() < tumour_p:
            k = int(rng.choice(tumour_k))
            pts = np.argwhere(wt[:, :, k])
            centre = pts[int(rng.integers(len(pts)))]
        else:
            brain_k = np.nonzero((case.image[0] != 0).any(axis=(0, 1)))[0]
            k = int(rng.choice(brain_k)) if len(brain_k) else int(rng.integers(wt.shape[2]))
        img, tgt = case.image[:, :, :, k], case.target[:, :, :, k]
        starts = [_crop_start(img.shape[1 + a], tile[a], None if centre is None else int(centre[a]), rng)
                  for a in range(2)]
        x, y = _crop(img, starts, tile), _crop(tgt, starts, tile)
        if flip and rng.random() < 0.5:         # left-right flip (axis I is R-L)
            x, y = x[:, ::-1], y[:, ::-1]
        xs.append(x)
        ys.append(y)
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


def sample_patches(cases: Sequence[Case], batch: int, tile: Sequence[int], tumour_p: float,
                   rng: np.random.Generator, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A batch of 3D patches ``[B, C, d, h, w]`` (centred on tumour with probability ``tumour_p``)."""
    xs, ys = [], []
    for _ in range(batch):
        case = cases[int(rng.integers(len(cases)))]
        pts = np.argwhere(case.target[0]) if rng.random() < tumour_p else np.empty((0, 3))
        centre = pts[int(rng.integers(len(pts)))] if len(pts) else None
        starts = [_crop_start(case.image.shape[1 + a], tile[a], None if centre is None else int(centre[a]), rng)
                  for a in range(3)]
        x, y = _crop(case.image, starts, tile), _crop(case.target, starts, tile)
        if flip and rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        xs.append(x)
        ys.append(y)
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)


# -- checkpoints ---------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer=None, scheduler=None,
                    step: int = 0, config: TrainConfig | None = None, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"arch": model.info.arch, "model_config": model.info.config, "state_dict": model.state_dict(),
             "step": step, "train_config": config.to_dict() if config else None, "extra": extra or {}}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many types for a broken file
        raise CheckpointError(f"checkpoint {path} is not readable by torch.load ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or "state_dict" not in state or "arch" not in state:
        raise CheckpointError(f"{path} is not an edge-infer export checkpoint (no arch/state_dict)")
    return state


def load_weights(model: nn.Module, state_dict: dict, source: str) -> None:
    """Load ``state_dict`` into ``model``; a mismatch names the first differing tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong:
        what = (f"tensor {wrong[0]} is {tuple(state_dict[wrong[0]].shape)} there but {tuple(own[wrong[0]].shape)} here"
                if wrong else f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise CheckpointError(f"checkpoint {source} does not match architecture {model.info.arch} "
                              f"with {model.info.config}: {what}")
    model.load_state_dict(state_dict)


def model_from_checkpoint(path: str | os.PathLike, arch: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was saved from; ``arch`` (if given) must agree."""
    state = read_checkpoint(path)
    if arch is not None and arch != state["arch"]:
        raise CheckpointError(f"checkpoint {path} holds a {state['arch']} model, not {arch}")
    model = create_model(state["arch"], **state["model_config"])
    load_weights(model, state["state_dict"], str(path))
    return model, state


# -- the loop ------------------------------------------------------------------------------
def train(model: nn.Module, cases: Sequence[Case], config: TrainConfig, checkpoint: str | os.PathLike | None = None,
          resume: bool = False, checkpoint_every: int = 100, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` in place for ``config.steps`` steps; returns the loss per step.

    With ``resume`` and an existing ``checkpoint`` the weights, optimizer, scheduler and step
    are restored (the architecture must match) and training continues from there.
    """
    set_threads(config.threads)
    torch.manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, config.lr_step), gamma=config.lr_gamma)
    start = 0
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        state = read_checkpoint(checkpoint)
        if state["arch"] != model.info.arch:
            raise CheckpointError(f"checkpoint {checkpoint} holds a {state['arch']} model, not {model.info.arch}")
        load_weights(model, state["state_dict"], str(checkpoint))
        if "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            sched.load_state_dict(state["scheduler"])
        start = int(state.get("step", 0))
    rng = np.random.default_rng([config.seed, start])
    sample = sample_slices if model.info.dims == 2 else sample_patches
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, desc=f"train {model.info.arch}", unit="step")
    model.train()
    for step in range(start, config.steps):
        x, y = sample(cases, config.batch, config.tile, config.tumour_p, rng, config.flip)
        loss = bce_dice_loss(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        val = float(loss.detach())
        if not math.isfinite(val):
            raise FloatingPointError(f"the loss became {val} at step {step}; lower the learning rate")
        losses.append(val)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{val:.3f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        if on_step is not None:
            on_step(step, val)
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == config.steps):
            save_checkpoint(checkpoint, model, opt, sched, step + 1, config)
    if bar is not None:
        bar.close()
    model.eval()
    return losses


# -- prediction and validation ----------------------------------------------------------------
def _pad_to(x: np.ndarray, mult: int, axes: Sequence[int]) -> tuple[np.ndarray, tuple]:
    pad = [(0, 0)] * x.ndim
    for a in axes:
        pad[a] = (0, (-x.shape[a]) % mult)
    return np.pad(x, pad), tuple(slice(0, n) for n in x.shape)


@torch.no_grad()
def predict_logits(run: Callable[[np.ndarray], np.ndarray], image: np.ndarray, dims: int, divisible_by: int,
                   batch: int = 16, tile: Sequence[int] | None = None) -> np.ndarray:
    """Logits ``[3, I, J, K]`` of a normalised case through ``run(batch_float32) -> logits``.

    2D: axial slices in batches, padded to ``divisible_by`` (or to ``tile`` when the model
    has a fixed size). 3D: the whole padded volume at once (phantom-sized cases), or window
    by window as the runtime runs it when the model has a fixed ``tile``.
    """
    if dims == 2:
        slices = np.moveaxis(image, 3, 0)              # [K, C, I, J]
        if tile is not None:
            pad = [(0, 0), (0, 0), (0, max(0, tile[0] - slices.shape[2])), (0, max(0, tile[1] - slices.shape[3]))]
            padded, keep = np.pad(slices, pad), (slice(None), slice(None), slice(0, slices.shape[2]), slice(0, slices.shape[3]))
        else:
            padded, keep = _pad_to(slices, divisible_by, (2, 3))
        outs = [run(np.ascontiguousarray(padded[i:i + batch]))[keep] for i in range(0, len(padded), batch)]
        return np.moveaxis(np.concatenate(outs), 0, 3)
    if tile is not None:
        return _predict_windows(run, image, divisible_by, tile)
    padded, keep = _pad_to(image[None], divisible_by, (2, 3, 4))
    return run(np.ascontiguousarray(padded))[0][(slice(None), *keep[2:])]


def _predict_windows(run: Callable[[np.ndarray], np.ndarray], image: np.ndarray, divisible_by: int,
                     tile: Sequence[int]) -> np.ndarray:
    """3D logits by the runtime's own sliding window (fixed ``tile``, overlap 0.5, Gaussian
    blending), the volume padded as the runtime pads it."""
    from edge_infer.engines import Windows, run_windows
    from edge_infer.prepare import crop, pad, pad_widths

    widths = pad_widths(image.shape[1:], tuple(tile), (divisible_by,) * 3)
    padded = np.ascontiguousarray(pad(image, widths), dtype=np.float32)
    out = np.empty((len(REGIONS), *padded.shape[1:]), np.float32)
    run_windows(padded, run, out, Windows(tuple(tile), overlap=0.5, batch=1))
    return np.ascontiguousarray(crop(out, widths))


def torch_runner(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model.eval()
    return lambda x: model(torch.from_numpy(x)).numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


def evaluate(probs: Sequence[np.ndarray], cases: Sequence[Case], threshold) -> dict[str, float]:
    """Mean Dice per region over cases (each case's 3D Dice)."""
    scores = np.array([region_dice(p, c.target, threshold) for p, c in zip(probs, cases)])
    return {r: float(scores[:, i].mean()) for i, r in enumerate(REGIONS)}


def sweep_thresholds(probs: Sequence[np.ndarray], cases: Sequence[Case],
                     grid: Sequence[float] = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))) -> dict:
    """Best global threshold (mean Dice over regions) and best threshold per region."""
    table = np.array([[list(evaluate(probs, cases, t).values())] for t in grid])[:, 0, :]   # [T, 3]
    g = int(np.argmax(table.mean(axis=1)))
    per = [float(grid[int(np.argmax(table[:, r]))]) for r in range(len(REGIONS))]
    return {"global": float(grid[g]), "global_dice": {r: float(table[g, i]) for i, r in enumerate(REGIONS)},
            "per_region": per,
            "per_region_dice": {r: float(table[:, i].max()) for i, r in enumerate(REGIONS)},
            "grid": [float(t) for t in grid]}
