"""One-command recipes: the bundled default models (2D and 3D) and the bundled sample scan."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .phantoms import MODALITIES, make_case, tumour_slab_bounds

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO / "edge_infer" / "models" / "default"
DEFAULT_3D_MODEL_DIR = REPO / "edge_infer" / "models" / "default-3d"
SAMPLE_DIR = REPO / "edge_infer" / "data" / "sample"

#: phantom seeds: training, validation (threshold sweep, model card) and the bundled sample
TRAIN_SEEDS = tuple(range(0, 8))
VAL_SEEDS = tuple(range(1000, 1003))
SAMPLE_SEED = 2024


def make_sample(out: str | os.PathLike = SAMPLE_DIR, seed: int = SAMPLE_SEED, slices: int = 40,
                shape: Sequence[int] = (240, 240, 155), skull: bool = False) -> Path:
    """Write the bundled sample scan: a held-out phantom cropped to ``slices`` axial slices.

    Files ``sample_{t1,t1ce,t2,flair}.nii.gz`` (int16) and ``sample_seg.nii.gz`` (uint8,
    BraTS labels), RAS, 1 mm; the affine keeps the crop's true position. Skull-stripped by
    default, like BraTS releases (and a smaller file).
    """
    import nibabel as nib

    out = Path(out)
    images, seg, affine = make_case(shape, seed=seed, skull=skull)
    k0, k1 = tumour_slab_bounds(seg, slices)
    aff = affine.copy()
    aff[:3, 3] = affine[:3, :3] @ np.array([0, 0, k0]) + affine[:3, 3]
    arrays = {m: np.clip(np.rint(images[m][..., k0:k1]), 0, 32767).astype(np.int16) for m in MODALITIES}
    arrays["seg"] = seg[..., k0:k1]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        for name, arr in arrays.items():
            img = nib.Nifti1Image(arr, aff)
            img.set_qform(aff, code=1)
            img.set_sform(aff, code=1)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, tmp / f"sample_{name}.nii.gz")
        (tmp / "README.md").write_text(
            f"# Sample scan (synthetic)\n\nA synthetic BraTS-like phantom made by `python -m export make-sample` "
            f"(`export.phantoms.make_case(shape={tuple(shape)}, seed={seed}, skull={skull})`, axial slices {k0}..{k1 - 1} "
            f"around the tumour). Not a real patient; no clinical meaning. Labels in `sample_seg.nii.gz`: "
            f"1 necrotic core, 2 edema, 4 enhancing tumour.\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def make_default(out: str | os.PathLike = DEFAULT_MODEL_DIR, steps: int = 150, features: int = 16,
                 depth: int = 4, train_seeds: Sequence[int] = TRAIN_SEEDS, val_seeds: Sequence[int] = VAL_SEEDS,
                 precisions: Sequence[str] = ("fp32", "fp16"), threads: int = 2, keep_slices: int = 64,
                 checkpoint: str | os.PathLike | None = None, progress: bool = True,
                 shape: Sequence[int] = (240, 240, 155)) -> Path:
    """Train the bundled default model on phantoms, export, verify and document it.

    A 2D Flat U-Net (``features`` filters at every one of ``depth + 1`` levels), 4 -> 3,
    trained on ``train_seeds`` phantoms (half skull-stripped), its threshold swept on
    ``val_seeds``, exported to ONNX and TFLite at ``precisions``, verified through the
    runtime against PyTorch, and described by ``MODEL_CARD.md``.
    """
    from .train import TrainConfig

    cfg = TrainConfig(arch="flat_unet2d", model_kwargs=dict(features=features, depth=depth), steps=steps,
                      batch=8, lr=2e-3, lr_step=max(1, steps // 3), lr_gamma=0.3, tile=(128, 128),
                      tumour_p=0.8, threads=threads)
    model, losses, training, val = _train_on_phantoms(cfg, train_seeds, val_seeds, shape, keep_slices, checkpoint,
                                                      progress, f"{keep_slices} axial slices around the tumour")
    return _document(model, out, "default", losses, training, val, val_seeds, precisions, (240, 240), threads,
                     "python -m export make-default")


def make_default_3d(out: str | os.PathLike = DEFAULT_3D_MODEL_DIR, steps: int = 300, features: int = 8,
                    depth: int = 3, train_seeds: Sequence[int] = TRAIN_SEEDS, val_seeds: Sequence[int] = VAL_SEEDS[:2],
                    precisions: Sequence[str] = ("fp32", "fp16"), threads: int = 1, keep_slices: int = 48,
                    checkpoint: str | os.PathLike | None = None, progress: bool = True,
                    shape: Sequence[int] = (240, 240, 155), tile: Sequence[int] = (96, 96, 48)) -> Path:
    """Train the bundled 3D model (``default-3d``) on phantoms, export, verify and document it.

    A 3D Flat U-Net (``features`` filters at every one of ``depth + 1`` levels), 4 -> 3,
    trained on patches of ``train_seeds`` phantoms (``keep_slices`` axial slices around the
    tumour, half skull-stripped), exported with the sliding-window ``tile`` to ONNX and TFLite
    at ``precisions`` and verified window by window through the runtime against PyTorch.
    """
    from .train import TrainConfig

    cfg = TrainConfig(arch="flat_unet3d", model_kwargs=dict(features=features, depth=depth), steps=steps,
                      batch=2, lr=3e-3, lr_step=max(1, steps // 3), lr_gamma=0.3, tile=(64, 64, 32),
                      tumour_p=0.7, threads=threads)
    model, losses, training, val = _train_on_phantoms(cfg, train_seeds, val_seeds, shape, keep_slices, checkpoint,
                                                      progress, f"patches of {keep_slices} axial slices around the tumour")
    return _document(model, out, "default-3d", losses, training, val, val_seeds, precisions, tuple(tile), threads,
                     "python -m export --threads 1 make-default-3d")


def _train_on_phantoms(cfg, train_seeds: Sequence[int], val_seeds: Sequence[int], shape: Sequence[int],
                       keep_slices: int, checkpoint, progress: bool, what: str):
    """Make the phantoms, train ``cfg.arch`` on them; (model, losses, training provenance, val cases)."""
    from .data import phantom_cases
    from .train import set_threads, train
    from .zoo import create_model

    set_threads(cfg.threads)
    t0 = time.perf_counter()
    cases = phantom_cases(train_seeds, shape, keep_slices, skull=None)
    val = phantom_cases(val_seeds, shape, keep_slices, skull=None)
    t_data = time.perf_counter() - t0
    model = create_model(cfg.arch, **cfg.model_kwargs)
    t1 = time.perf_counter()
    losses = train(model, cases, cfg, checkpoint=checkpoint, resume=checkpoint is not None, progress=progress)
    training = {**cfg.to_dict(), "data": f"synthetic phantoms export.phantoms.make_case(shape={list(shape)}), "
                f"seeds {list(train_seeds)} (odd seeds skull-stripped), {what}",
                "seconds": round(time.perf_counter() - t1, 1), "data_seconds": round(t_data, 1)}
    return model, losses, training, val


def _document(model, out, name: str, losses: Sequence[float], training: dict, val, val_seeds: Sequence[int],
              precisions: Sequence[str], tile: tuple[int, ...], threads: int, command: str) -> Path:
    """Sweep the threshold on ``val``, export to ``out`` (verified), write the model card."""
    from .model_card import write_model_card
    from .model_folder import ExportSpec, export_folder
    from .train import predict_logits, sigmoid, sweep_thresholds, torch_runner
    from .verify import verify_folder

    dims, div = model.info.dims, model.info.divisible_by
    probs = [sigmoid(predict_logits(torch_runner(model), c.image, dims, div)) for c in val]
    sweep = sweep_thresholds(probs, val)
    provenance = {
        "training": {**training, "loss": "BCE-with-logits + soft Dice, equal weights, over WT/TC/ET",
                     "optimizer": "Adam, StepLR",
                     "final_loss_mean_last_50": float(np.mean(losses[-50:])) if losses else None},
        "validation": {"seeds": list(val_seeds), "threshold_sweep": sweep},
        "command": command,
    }
    spec = ExportSpec(name=name, version="1.0.0", backends=("onnx", "tflite"), precisions=tuple(precisions),
                      tile=tile, threshold=sweep["global"], provenance=provenance)
    check = lambda folder, manifest: verify_folder(folder, model, val[:2], threads=threads)  # noqa: E731
    manifest = export_folder(model, out, spec, check=check, overwrite=True)
    write_model_card(Path(out), manifest)
    return Path(out)


def calibration_batches(sample_shape: Sequence[int], n: int = 16, seeds: Sequence[int] = (3000, 3001)):
    """Normalised phantom slices (2D) or patches (3D), one per batch, for int8 calibration.

    Held-out seeds (not training, validation or the sample), tumour-biased like training.
    """
    from .data import phantom_cases
    from .train import sample_patches, sample_slices

    dims = len(sample_shape) - 1
    shape = (240, 240, 155) if dims == 2 else tuple(max(s, 64) for s in sample_shape[1:])
    cases = phantom_cases(seeds, shape, keep_slices=48 if dims == 2 else None, skull=None)
    rng = np.random.default_rng(0)
    sample = sample_slices if dims == 2 else sample_patches
    for _ in range(n):
        x, _ = sample(cases, 1, sample_shape[1:], 0.6, rng, flip=False)
        yield x
