"""Benchmark models: the default model's architecture, built, (briefly) trained and exported once.

Everything is cached under ``<cache>/models/<key>`` where the key hashes what defines the
result (architecture, widths, training steps, seed, pruning, backends, precisions, tile), so
a second run reuses the folders. A folder holds the runtime's ``model.json`` with its
artifacts (written by :func:`export.model_folder.export_folder`) and ``torch.pt`` (architecture,
config and weights) for the PyTorch and MONAI peers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .common import ROOT

DEFAULT_MANIFEST = ROOT / "edge_infer" / "models" / "default" / "model.json"
#: the architecture of ``export.recipes.make_default`` (until the trained default is bundled)
FALLBACK_2D = ("flat_unet2d", {"features": 16, "depth": 4})


@dataclass(frozen=True)
class Spec:
    """What defines a benchmark model folder."""

    arch: str
    config: tuple                    # sorted (key, value) pairs for the zoo constructor
    tile: tuple[int, ...]            # export size: TFLite's fixed slice size, 3D window
    backends: tuple[str, ...] = ("onnx",)
    precisions: tuple[str, ...] = ("fp32",)
    train_steps: int = 0
    train_shape: tuple[int, int, int] = (240, 240, 155)
    prune: float = 0.0               # structured L1 pruning amount (fraction of parameters)
    finetune_steps: int = 0          # training steps after pruning
    seed: int = 0

    @property
    def kwargs(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config}

    def key(self, weights_only: bool = False) -> str:
        d = asdict(self)
        if not d["finetune_steps"]:
            d.pop("finetune_steps")      # keys made before the field existed stay valid
        if "int8" in self.precisions and not weights_only:
            d["calibration"] = CALIBRATION  # int8 folders are rebuilt when the calibration changes
        if weights_only:
            for k in ("tile", "backends", "precisions"):
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def default_arch() -> tuple[str, dict, str]:
    """(architecture, constructor config, where it came from): the bundled default model's
    when ``edge_infer/models/default/model.json`` exists, else ``make_default``'s."""
    if DEFAULT_MANIFEST.is_file():
        prov = json.loads(DEFAULT_MANIFEST.read_text()).get("provenance", {})
        arch, cfg = prov.get("architecture"), dict(prov.get("model_config") or {})
        if arch:
            cfg.pop("in_channels", None)
            cfg.pop("out_channels", None)
            return arch, _plain(arch, cfg), str(DEFAULT_MANIFEST.relative_to(ROOT))
    return FALLBACK_2D[0], dict(FALLBACK_2D[1]), "export.recipes.make_default (features=16, depth=4); no default model bundled yet"


def _plain(arch: str, cfg: dict) -> dict:
    """Drop explicit ``enc``/``dec`` widths when they are the ones ``features``/``depth`` imply."""
    if "enc" not in cfg and "dec" not in cfg:
        return cfg
    from export.zoo import create_model

    rest = {k: v for k, v in cfg.items() if k not in ("enc", "dec")}
    plain = create_model(arch, **rest).info.config
    same = all([list(map(list, cfg.get(k, []))) == plain[k] for k in ("enc", "dec")])
    return rest if same else cfg


def spec_2d(tile: tuple[int, int], *, quick: bool, **kw) -> Spec:
    arch, cfg, _ = default_arch()
    if quick:
        kw.setdefault("train_steps", 0)
    else:
        kw.setdefault("train_steps", 60)
    return Spec(arch, tuple(sorted((k, _freeze(v)) for k, v in cfg.items())), tuple(tile), **kw)


def spec_3d(tile: tuple[int, int, int], *, quick: bool, features: int = 8, depth: int = 3, **kw) -> Spec:
    # trained in a full run so the masks compared are not all background or all foreground
    # (80 steps gave WT/TC Dice 0.89/0.88 against a 128x128x64 phantom's truth; ~2 min, cached)
    kw.setdefault("train_steps", 0 if quick else 120)
    kw.setdefault("train_shape", (96, 96, 96))
    return Spec("flat_unet3d", (("depth", depth), ("features", features)), tuple(tile), **kw)


def _freeze(v):
    return tuple(_freeze(x) for x in v) if isinstance(v, list) else v


def weights(spec: Spec, cache: Path):
    """The torch model of ``spec`` (trained and pruned as it says), cached as ``torch.pt``."""
    import torch

    from export.zoo import create_model

    path = cache / "weights" / f"{spec.key(weights_only=True)}.pt"
    if path.is_file():
        state = torch.load(path, weights_only=False)
        model = create_model(state["arch"], **state["config"])
        model.load_state_dict(state["state_dict"])
        return model.eval()
    torch.manual_seed(spec.seed)
    if spec.prune:
        from export.prune import prune

        base = weights(replace(spec, prune=0.0, finetune_steps=0), cache)
        model, _ = prune(base, "l1", spec.prune)
        if spec.finetune_steps:
            _train(model, replace(spec, train_steps=spec.finetune_steps))
    else:
        model = create_model(spec.arch, **spec.kwargs)
        if spec.train_steps:
            _train(model, spec)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": model.info.arch, "config": model.info.config, "state_dict": model.state_dict()}, path)
    return model


def _train(model, spec: Spec) -> None:
    """A short training on phantoms, so masks look like tumours (not a quality claim)."""
    from export.data import phantom_cases
    from export.train import TrainConfig, train

    dims = model.info.dims
    cases = phantom_cases((11, 12), spec.train_shape, keep_slices=32 if dims == 2 else None, skull=None)
    tile = (128, 128) if dims == 2 else (48, 48, 48)
    cfg = TrainConfig(arch=spec.arch, model_kwargs=spec.kwargs, steps=spec.train_steps, batch=8 if dims == 2 else 2,
                      lr=2e-3, lr_step=max(1, spec.train_steps // 2), lr_gamma=0.3, tile=tile, seed=spec.seed)
    train(model, cases, cfg, progress=False)


#: what int8 calibration sees (part of int8 folders' keys): phantoms like the benchmark's
#: scans (with skull: a skull-stripped calibration left the scalp's intensities out of the
#: activation ranges, and int8 masks at Dice 0.82-0.88 against fp32). 2D: four phantoms of
#: different slice counts (the z-score, and so the activations' range, changes with the
#: tumour's share of the volume; one 64-slice phantom left a 40-slice scan's tumour
#: activations clipped: ET Dice 0.92-0.93 against fp32)
CALIBRATION = "4 x 8 slices of phantoms seeds 77-80 (40/64/96/155 slices) / 4 patches of seed 77, with skull"
#: (seed, slice count) of the 2D calibration phantoms
CALIBRATION_2D = ((77, 40), (78, 64), (79, 96), (80, 155))


def calibration(spec: Spec, n: int = 8):
    """``f(sample_shape) -> batches`` of normalised phantom slices/patches for int8."""
    def batches(sample_shape):
        from export.data import phantom_cases

        spatial = tuple(sample_shape[1:])
        if len(spatial) == 2:
            for seed, depth in CALIBRATION_2D:
                img = phantom_cases((seed,), (*spatial, depth), skull=True)[0].image
                for k in np.linspace(4, depth - 4, n).astype(int):
                    yield np.ascontiguousarray(img[None, ..., k])
            return
        img = phantom_cases((77,), tuple(max(2 * s, 16) for s in spatial), skull=True)[0].image
        for corner in [(0, 0, 0), (1, 1, 1), (1, 0, 1), (0, 1, 0)]:  # patches around the centre
            lo = [s // 4 + c * s // 4 for s, c in zip(spatial, corner)]
            yield np.ascontiguousarray(img[None, :, lo[0]:lo[0] + spatial[0], lo[1]:lo[1] + spatial[1],
                                           lo[2]:lo[2] + spatial[2]])
    return batches


def build(spec: Spec, cache: Path) -> Path:
    """The model folder of ``spec`` (exported through :func:`export.model_folder.export_folder`)."""
    folder = cache / "models" / spec.key()
    if (folder / "model.json").is_file() and (folder / "torch.pt").is_file():
        return folder
    from export.model_folder import ExportSpec, export_folder

    model = weights(spec, cache)
    es = ExportSpec(name=f"bench-{spec.arch}", version="0", backends=spec.backends, precisions=spec.precisions,
                    tile=spec.tile, threshold=0.5,
                    provenance={"bench_spec": json.loads(json.dumps(asdict(spec)))})
    cal = calibration(spec) if "int8" in spec.precisions else None
    export_folder(model, folder, es, calibration=cal, overwrite=True)
    shutil.copy(cache / "weights" / f"{spec.key(weights_only=True)}.pt", folder / "torch.pt")
    return folder


def describe(folder: Path) -> dict:
    """Name, architecture, parameters, MACs and artifact sizes of a model folder."""
    m = json.loads((folder / "model.json").read_text())
    return {"arch": m["provenance"]["architecture"], "config": m["provenance"].get("model_config"),
            "parameters": m["parameters"], "macs_per_unit": m["macs"], "tile": m["input"]["tile"],
            "artifacts": {f"{a['backend']}/{a['precision']}": a["bytes"] for a in m["artifacts"]}}
