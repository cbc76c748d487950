"""``from-nnunet``: an nnU-Net v2 results folder as an edge-infer model folder.

Everything comes from the folder itself: ``dataset.json`` (channel names -> modalities, labels
or regions with ``regions_class_order``), ``plans.json`` (the configuration's spacing, patch
size, normalisation schemes, ``transpose_forward``, network class and arguments) and
``fold_N/checkpoint_{final,best}.pth`` (the weights). The network is built by nnU-Net's own
``get_network_from_plans`` (no trainer class is needed), then :func:`export.byom.package`
exports and checks it. Test-time mirroring is not exported.

nnU-Net reads NIfTI through SimpleITK, whose arrays are ``[k, j, i]``: the network's axes are
the stored voxel axes reversed, then permuted by ``transpose_forward``. The manifest's
orientation says that (``--stored-orientation`` is how the training images were stored).
nnU-Net crops every case to its nonzero box before normalising: the manifest says the same
(``input.crop = {"mode": "nonzero"}``), so the runtime tiles the same box.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_infer.scan import canonical_modality

from .errors import SourceError, SpecError
from .spec import spec_from_dict

#: nnU-Net normalisation scheme -> manifest normalisation (use_mask_for_norm picks the nonzero form)
NORMALIZATION = {("ZScoreNormalization", False): "zscore", ("ZScoreNormalization", True): "zscore_nonzero",
                 ("CTNormalization", False): "clipped_zscore", ("CTNormalization", True): "clipped_zscore",
                 ("NoNormalization", False): "none", ("NoNormalization", True): "none",
                 ("RescaleTo01Normalization", False): "minmax", ("RescaleTo01Normalization", True): "minmax"}
CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}


def read_results(folder: Path, fold: int, checkpoint: str) -> tuple[dict, dict, Path]:
    """``(plans, dataset, checkpoint path)``; a missing file is named, with the folds that exist."""
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise SourceError(f"{folder} has no {name}: pass an nnU-Net results folder "
                              "(Dataset.../TRAINER__PLANS__CONFIGURATION)")
    ckpt = folder / f"fold_{fold}" / CHECKPOINTS[checkpoint]
    if not ckpt.is_file():
        have = sorted(p.parent.name for p in folder.glob(f"fold_*/{CHECKPOINTS[checkpoint]}"))
        raise SourceError(f"{ckpt.relative_to(folder)} does not exist; folds with {CHECKPOINTS[checkpoint]}: "
                          f"{', '.join(have) or 'none'}")
    return _json(folder / "plans.json"), _json(folder / "dataset.json"), ckpt


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path.name} cannot be read as JSON: {str(exc).splitlines()[0][:200]}") from None


def modalities(dataset: dict, override: dict[str, str] | None = None) -> tuple[str, ...]:
    """Modality per input channel from ``channel_names`` (``modality`` in old files), by the
    runtime's aliases (``T1c``, ``t1gd``, ``FLAIR``); ``override`` maps a channel name to one."""
    names = dataset.get("channel_names") or dataset.get("modality") or {}
    out = []
    for key in sorted(names, key=int):
        raw = str(names[key])
        mod = (override or {}).get(raw) or canonical_modality(raw)
        if mod is None:
            raise SourceError(f"channel {key} {raw!r} maps to no modality (t1, t1ce, t2, flair); "
                              f"map it with --modality-map {raw}=t1ce")
        out.append(mod)
    return tuple(out)


def output_fields(dataset: dict) -> dict[str, Any]:
    """The manifest's ``output``: sigmoid regions painted in ``regions_class_order``, or softmax classes."""
    labels = dataset["labels"]
    regions = [(name, v) for name, v in labels.items() if isinstance(v, (list, tuple)) or v != 0]
    if any(isinstance(v, (list, tuple)) for _, v in regions):
        order = dataset.get("regions_class_order")
        if order is None or len(order) != len(regions):
            raise SourceError("dataset.json has regions but no regions_class_order with one value per region")
        names = [n for n, _ in regions]
        return {"activation": "sigmoid", "channels": names, "threshold": 0.5,
                "labels": [{"value": int(v), "name": n, "region": n} for n, v in zip(names, order)]}
    classes = sorted(labels.items(), key=lambda kv: kv[1])
    names = [n for n, _ in classes]
    return {"activation": "softmax", "channels": names, "threshold": 0.5,
            "labels": [{"value": int(v), "name": n, "region": n} for n, v in classes if v != 0]}


def input_fields(plans: dict, config: dict, n_channels: int) -> dict[str, Any]:
    """The manifest's ``input`` (less modalities and orientation) from a plans configuration."""
    schemes = {(s, bool(m)) for s, m in zip(config["normalization_schemes"], config["use_mask_for_norm"])}
    kinds = {NORMALIZATION.get(s) for s in schemes}
    if None in kinds or len(kinds) != 1:
        raise SourceError(f"normalisation schemes {sorted(s for s, _ in schemes)} have no single manifest "
                          f"equivalent ({', '.join(sorted({k[0] for k in NORMALIZATION}))}, one for all channels)")
    norm = kinds.pop()
    patch = [int(p) for p in config["patch_size"]]
    out = {"layout": "NCHW" if len(patch) == 2 else "NCDHW", "tile": patch, "normalization": norm,
           "spacing_mm": [float(s) for s in config["spacing"]][-3:], "step": 0.5, "blending": "gaussian"}
    if len(patch) == 2:   # 2d: nnU-Net tiles each slice along the array's axis 0 in Gaussian-blended
        # patches; a 3D sliding window one slice deep does the same (the network wrapped by SliceStack)
        out["layout"], out["tile"] = "NCDHW", [1, *patch]
        out["spacing_mm"] = [float(plans["original_median_spacing_after_transp"][0]), *out["spacing_mm"][-2:]]
        out["spacing_mm"] = [float(plans["original_median_spacing_after_transp"][0]), *out["spacing_mm"][-2:]]
    if norm == "clipped_zscore":
        props = plans["foreground_intensity_properties_per_channel"]
        out["intensity"] = [{"low": props[str(c)]["percentile_00_5"], "high": props[str(c)]["percentile_99_5"],
                             "mean": props[str(c)]["mean"], "std": props[str(c)]["std"]} for c in range(n_channels)]
    return out


class SliceStack(torch.nn.Module):
    """A 2D network run on ``[N, C, D, H, W]`` windows: each of the D slices on its own (a 2d
    nnU-Net configuration as a 3D sliding window one slice deep)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape[0], x.shape[2]
        y = self.net(x.transpose(1, 2).flatten(0, 1))
        return y.unflatten(0, (n, d)).transpose(1, 2)


def network_orientation(stored: str, transpose_forward: list[int]) -> str:
    """The axis code of the network's array: SimpleITK reverses the stored axes, then
    ``transpose_forward`` permutes them (RAS-stored, [0, 1, 2] -> ``SAR``)."""
    rev = stored.upper()[::-1]
    return "".join(rev[t] for t in transpose_forward)


def build_network(config: dict, n_in: int, n_out: int) -> torch.nn.Module:
    """The plans' network class with its arguments, by nnU-Net's ``get_network_from_plans``
    (no deep supervision: one full-resolution output)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = config["architecture"]
    try:
        return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                      n_in, n_out, allow_init=False, deep_supervision=False)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"network class {arch['network_class_name']} named by plans.json is not in the "
                          f"installed nnU-Net / dynamic_network_architectures ({str(exc).splitlines()[0][:120]}); "
                          "install the package that defines it") from None


def load_nnunet(folder: str | Path, fold: int = 0, checkpoint: str = "final", stored_orientation: str = "RAS",
                modality_map: dict[str, str] | None = None) -> tuple[torch.nn.Module, dict]:
    """``(network with the fold's weights, spec dict)`` of an nnU-Net v2 results folder."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from .sources import load_weights

    folder = Path(folder)
    plans, dataset, ckpt_path = read_results(folder, fold, checkpoint)
    ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)  # nnU-Net's own pickle, as it loads it
    cfg_name = (ckpt.get("init_args") or {}).get("configuration") or folder.name.split("__")[-1]
    try:
        config = PlansManager(plans).get_configuration(cfg_name).configuration
    except RuntimeError as exc:
        raise SourceError(str(exc).splitlines()[0]) from None
    mods, output = modalities(dataset, modality_map), output_fields(dataset)
    net = build_network(config, len(mods), len(output["channels"]))
    load_weights(net, ckpt["network_weights"], f"{ckpt_path.parent.name}/{ckpt_path.name}")
    net = SliceStack(net) if len(config["patch_size"]) == 2 else net
    spec = {"name": f"{plans.get('dataset_name', folder.parent.name)}-{cfg_name}", "version": f"fold{fold}-{checkpoint}",
            "dims": 3, "output": output,
            "input": {**input_fields(plans, config, len(mods)), "modalities": list(mods),
                      "orientation": network_orientation(stored_orientation, plans["transpose_forward"]),
                      "crop": {"mode": "nonzero", "margin_mm": 0.0}},
            "intended_use": "imported from nnU-Net v2; validate on your own data before any use",
            "provenance": {"source": "nnU-Net v2", "configuration": cfg_name, "fold": fold, "checkpoint": ckpt_path.name,
                           "trainer": ckpt.get("trainer_name"), "network_class": config["architecture"]["network_class_name"],
                           "test_time_mirroring": False, "stored_orientation": stored_orientation.upper()}}
    try:
        spec_from_dict(spec, where="the spec made from plans.json")
    except SpecError as exc:
        raise SourceError(str(exc)) from None
    return net, spec


#: how the provenance names nnU-Net's predictor, as the parity check runs it
PREDICTOR = "nnUNetPredictor (step 0.5, Gaussian, mirroring off, CPU)"


def nnunet_reference(folder: str | Path, spec: dict, fold: int = 0, checkpoint: str = "final"):
    """nnU-Net's own ``nnUNetPredictor`` on a parity volume (:mod:`export.source_parity`):
    ``(labels, valid)`` on the volume's grid.

    The volume goes in as nnU-Net's SimpleITK reader gives it (axes and spacing reversed). On
    CPU the predictor blends in float16: where every window's weight times its logit
    underflows (a volume's corners) its logits are exactly 0; those voxels are not nnU-Net's
    answer but its rounding, and ``valid`` leaves them out.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from edge_infer.scan import voxel_spacing

    plans, dataset, ckpt_path = read_results(Path(folder), fold, checkpoint)
    weights = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)["network_weights"]
    prov = spec["provenance"]
    manager = PlansManager(plans)
    config = manager.get_configuration(prov["configuration"])

    def predict(vol, files):
        pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                               perform_everything_on_device=False, verbose=False, verbose_preprocessing=False,
                               allow_tqdm=False)
        net = build_network(config.configuration, len(spec["input"]["modalities"]), len(spec["output"]["channels"]))
        pred.manual_initialization(net, manager, config, [weights], dataset, prov["trainer"], None)
        image = np.ascontiguousarray(vol.data.transpose(0, 3, 2, 1))
        props = {"spacing": [float(s) for s in voxel_spacing(vol.affine)[::-1]]}
        seg, probs = pred.predict_single_npy_array(image, props, None, None, True)
        probs = np.asarray(probs, np.float32)
        rounded = (probs == 0.5).any(axis=0) if spec["output"]["activation"] == "sigmoid" else \
            (probs == np.float32(1.0 / len(probs))).all(axis=0)
        return np.asarray(seg).transpose(2, 1, 0), ~rounded.transpose(2, 1, 0)
    return predict
