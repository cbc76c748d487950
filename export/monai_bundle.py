"""``from-monai-bundle``: a MONAI bundle folder as an edge-infer model folder.

``configs/inference.json`` (or ``.yaml``) is read with MONAI's own ``ConfigParser``;
``network_def`` is built by it and ``models/model.pt`` loaded into it. The preprocessing,
inferer and postprocessing it lists are mapped to manifest fields one transform at a time;
a transform with no manifest equivalent is refused by name, never skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import SourceError

#: transforms that only load, type or move data: nothing for the manifest to say
NEUTRAL = {"LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "EnsureTyped", "EnsureType",
           "ToTensord", "ToTensor", "CastToTyped", "ToDeviced", "Invertd", "SaveImaged", "CopyItemsd", "DeleteItemsd",
           "SplitDimd", "AsChannelFirstd"}
#: MONAI's BraTS conversion (ConvertToMultiChannelBasedOnBratsClasses): channel order and labels
BRATS_CHANNELS = ("TC", "WT", "ET")
BRATS_LABELS = [{"value": 2, "name": "edema", "region": "WT"}, {"value": 1, "name": "necrotic_core", "region": "TC"},
                {"value": 4, "name": "enhancing", "region": "ET"}]
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def _name(transform: Any) -> str:
    target = transform.get("_target_", "?") if isinstance(transform, dict) else type(transform).__name__
    return str(target).rsplit(".", 1)[-1].split("#")[-1]


def _transforms(section: Any) -> list[dict]:
    if section is None:
        return []
    if isinstance(section, dict) and _name(section) == "Compose":
        return list(section.get("transforms", []))
    return list(section) if isinstance(section, list) else [section]


def map_preprocessing(transforms: list[dict]) -> dict[str, Any]:
    """Manifest ``input`` fields from the bundle's preprocessing transforms."""
    out: dict[str, Any] = {"orientation": "RAS", "spacing_mm": [1.0, 1.0, 1.0], "normalization": "none"}
    for t in transforms:
        name = _name(t)
        if name in NEUTRAL:
            continue
        if name == "Orientationd":
            out["orientation"] = str(t.get("axcodes", "RAS"))
        elif name == "Spacingd":
            pix = t.get("pixdim")
            out["spacing_mm"] = [float(p) for p in (pix if isinstance(pix, (list, tuple)) else [pix] * 3)]
        elif name == "NormalizeIntensityd" and t.get("channel_wise", False) and t.get("subtrahend") is None:
            out["normalization"] = "zscore_nonzero" if t.get("nonzero", False) else "zscore"
        elif name == "ScaleIntensityRanged" and t.get("clip", False):
            out.update(_scale_range(t))
        else:
            raise SourceError(f"bundle preprocessing transform {name} has no manifest equivalent "
                              f"(mapped: Orientationd, Spacingd, NormalizeIntensityd channel_wise, ScaleIntensityRanged clip)")
    return out


def _scale_range(t: dict) -> dict[str, Any]:
    """``ScaleIntensityRanged(a_min, a_max, b_min, b_max, clip=True)`` is clipped_zscore with
    ``std = (a_max - a_min) / (b_max - b_min)`` and ``mean = a_min - b_min * std``."""
    a_min, a_max = float(t["a_min"]), float(t["a_max"])
    b_min, b_max = float(t.get("b_min", 0.0)), float(t.get("b_max", 1.0))
    std = (a_max - a_min) / (b_max - b_min)
    return {"normalization": "clipped_zscore", "intensity_one": {"low": a_min, "high": a_max,
                                                                 "mean": a_min - b_min * std, "std": std}}


def map_inferer(inferer: Any) -> dict[str, Any]:
    """``tile``, ``step`` and ``blending`` from a ``SlidingWindowInferer``."""
    name = _name(inferer) if inferer is not None else "none"
    if name != "SlidingWindowInferer":
        raise SourceError(f"bundle inferer {name} has no manifest equivalent (mapped: SlidingWindowInferer with roi_size)")
    mode = str(inferer.get("mode", "constant"))
    if mode not in ("constant", "gaussian"):
        raise SourceError(f"bundle inferer mode {mode!r} has no manifest equivalent (constant, gaussian)")
    for key, default in (("sigma_scale", 0.125), ("padding_mode", "constant"), ("cval", 0.0)):
        if inferer.get(key, default) != default:
            raise SourceError(f"bundle inferer {key}={inferer[key]!r} has no manifest equivalent (only {default!r})")
    return {"tile": [int(r) for r in inferer["roi_size"]], "step": 1.0 - float(inferer.get("overlap", 0.25)),
            "blending": mode, "windows": "monai"}


def map_postprocessing(transforms: list[dict], n_out: int) -> dict[str, Any]:
    """Manifest ``output`` from ``Activationsd`` / ``AsDiscreted`` (sigmoid with threshold, or
    softmax with argmax); 3 sigmoid channels are MONAI's BraTS conversion (TC, WT, ET)."""
    act, thr = None, 0.5
    for t in transforms:
        name = _name(t)
        if name in NEUTRAL:
            continue
        if name == "Activationsd":
            act = "sigmoid" if t.get("sigmoid") else "softmax" if t.get("softmax") else None
        elif name == "AsDiscreted":
            thr = float(t.get("threshold", 0.5)) if t.get("threshold") is not None else thr
        else:
            raise SourceError(f"bundle postprocessing transform {name} has no manifest equivalent "
                              "(mapped: Activationsd sigmoid/softmax, AsDiscreted threshold/argmax)")
    if act == "sigmoid" and n_out == 3:
        return {"activation": "sigmoid", "channels": list(BRATS_CHANNELS), "threshold": thr, "labels": BRATS_LABELS}
    if act == "softmax":
        names = [f"class{k}" for k in range(n_out)]
        return {"activation": "softmax", "channels": names, "threshold": 0.5,
                "labels": [{"value": k, "name": names[k], "region": names[k]} for k in range(1, n_out)]}
    raise SourceError(f"bundle postprocessing gives {act or 'no activation'} over {n_out} channels; mapped: "
                      "sigmoid over 3 (BraTS TC, WT, ET) or softmax")


def config_path(bundle: Path) -> Path:
    for name in CONFIG_NAMES:
        if (bundle / "configs" / name).is_file():
            return bundle / "configs" / name
    raise SourceError(f"{bundle} has no configs/inference.json or .yaml: pass a MONAI bundle folder")


def load_bundle(bundle: str | Path) -> tuple[Any, dict]:
    """``(network with models/model.pt, spec dict)`` of a MONAI bundle folder."""
    from monai.bundle import ConfigParser

    from .sources import load_weights, read_state_dict

    bundle = Path(bundle)
    cfg_file = config_path(bundle)
    weights = bundle / "models" / "model.pt"
    if not weights.is_file():
        raise SourceError(f"{bundle} has no models/model.pt")
    parser = ConfigParser()
    parser.read_config(str(cfg_file))
    if "network_def" not in parser:
        raise SourceError(f"{cfg_file.name} defines no network_def")
    try:
        net = parser.get_parsed_content("network_def")
    except Exception as exc:  # MONAI raises many types for a config it cannot build
        raise SourceError(f"network_def of {cfg_file.name} cannot be built: {str(exc).splitlines()[0][:200]}") from None
    load_weights(net, read_state_dict(weights), "models/model.pt")
    raw = parser.get  # the unparsed config: mapped field by field, nothing instantiated
    n_out = _out_channels(net)
    inp = {**map_preprocessing(_transforms(raw("preprocessing"))), **map_inferer(raw("inferer"))}
    intensity = inp.pop("intensity_one", None)
    n_in = int(getattr(net, "in_channels", 0) or _in_channels(net))
    mods = ["t1", "t1ce", "t2", "flair"] if n_in == 4 else [f"channel{c}" for c in range(n_in)]
    if intensity is not None:
        inp["intensity"] = [intensity] * n_in
    spec = {"name": bundle.name, "version": str((raw("version") or "1")), "dims": len(inp["tile"]),
            "input": {**inp, "layout": "NCDHW" if len(inp["tile"]) == 3 else "NCHW", "modalities": mods},
            "output": map_postprocessing(_transforms(raw("postprocessing")), n_out),
            "intended_use": "imported from a MONAI bundle; validate on your own data before any use",
            "provenance": {"source": "MONAI bundle", "config": cfg_file.name, "network": type(net).__name__}}
    return net.eval(), spec


def _out_channels(net) -> int:
    import torch

    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d))]
    return int(getattr(net, "out_channels", 0) or convs[-1].out_channels)


def _in_channels(net) -> int:
    import torch

    return next(m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d))).in_channels


#: how the provenance names a bundle's own pipeline, as the parity check runs it
BUNDLE_INFERER = "the bundle's own preprocessing, inferer and postprocessing (MONAI)"


def paint_labels(out: np.ndarray, spec: dict) -> np.ndarray:
    """A label map from the bundle's postprocessed output: sigmoid channels painted in the
    spec's label order (inner regions last), or softmax classes (one index channel or one-hot)."""
    channels, labels = spec["output"]["channels"], spec["output"]["labels"]
    if spec["output"]["activation"] == "softmax":
        index = out[0].astype(int) if len(out) == 1 else out.argmax(axis=0)
        return np.asarray(index, np.uint8)
    painted = np.zeros(out.shape[1:], np.uint8)
    for lb in labels:
        painted[out[channels.index(lb["region"])] > 0.5] = lb["value"]
    return painted


def bundle_reference(bundle: str | Path, net, spec: dict):
    """The bundle's own pipeline on a parity volume (:mod:`export.source_parity`): its
    preprocessing on the volume's NIfTI files, ``net`` through its inferer, its postprocessing."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_path(Path(bundle))))

    def predict(vol, files):
        data = parser.get_parsed_content("preprocessing")({"image": [str(f) for f in files]})
        with torch.no_grad():
            pred = parser.get_parsed_content("inferer")(data["image"][None], net.eval())[0]
        out = np.asarray(parser.get_parsed_content("postprocessing")({"pred": pred})["pred"], np.float32)
        if out.shape[1:] != vol.data.shape[1:]:
            raise SourceError(f"the bundle's pipeline returns a {list(out.shape[1:])} grid for a "
                              f"{list(vol.data.shape[1:])} parity volume: give --parity-scan a scan already at "
                              "the bundle's orientation and spacing")
        return paint_labels(out, spec), None
    return predict
