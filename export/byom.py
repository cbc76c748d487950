"""Bring your own model: package any PyTorch module as an edge-infer model folder.

:func:`package` works on a copy of the user's module (float32, CPU, eval, pruning made
permanent; the user's module is left as it was), exports it as the zoo export does
(:func:`export.model_folder.write_artifacts`), writes the manifest from the user's spec
(:mod:`export.spec`) and checks every artifact against eager PyTorch
(:func:`export.parity.check_parity`), and a whole volume against the source's own predictor
when one is given (:mod:`export.source_parity`), before the folder appears under its final
name; the figures go to the manifest's provenance and the model card.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from edge_infer.manifest import Manifest, load_manifest
from edge_infer.vocab import BACKENDS, PRECISIONS

from .errors import SourceError, SpecError
from .model_card import write_model_card
from .model_folder import add_verification, pinned_artifacts, staged_folder, write_artifacts, write_manifest
from .parity import check_parity
from .source_parity import SourceCheck, source_parity
from .spec import load_spec, spec_from_dict
from .zoo import ModelInfo

#: spatial size of the export sample of a fully convolutional 2D model (rounded up to divisible_by)
DYNAMIC_SAMPLE = 64


class Packaged(nn.Module):
    """The user's network with the ``info`` the exporters read; a list or tuple output (deep
    supervision) is reduced to its first, full-resolution element."""

    def __init__(self, inner: nn.Module, info: ModelInfo):
        super().__init__()
        self.inner = inner
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y[0] if isinstance(y, (list, tuple)) else y


def permanent_copy(module: nn.Module) -> tuple[nn.Module, int]:
    """A float32, CPU, eval-mode deep copy of ``module`` with every ``torch.nn.utils.prune``
    reparametrisation made permanent; returns ``(copy, number of pruned tensors)``."""
    memo = {}    # a pruned tensor is computed by a hook (not a leaf): give deepcopy a detached copy
    for sub in module.modules():
        for hook in getattr(sub, "_forward_pre_hooks", {}).values():
            if isinstance(hook, prune.BasePruningMethod) and isinstance(getattr(sub, hook._tensor_name, None), torch.Tensor):
                tensor = getattr(sub, hook._tensor_name)
                memo[id(tensor)] = tensor.detach().clone()
    dup = copy.deepcopy(module, memo)
    pruned = 0
    for sub in dup.modules():
        for hook in list(getattr(sub, "_forward_pre_hooks", {}).values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(sub, hook._tensor_name)
                pruned += 1
    return dup.float().cpu().eval(), pruned


def sample_tile(spec: Manifest) -> tuple[int, ...]:
    """The spatial size exported and checked: the spec's tile, else DYNAMIC_SAMPLE rounded up."""
    if spec.tile is not None:
        return tuple(spec.tile)
    side = math.ceil(DYNAMIC_SAMPLE / spec.divisible_by) * spec.divisible_by
    return (side,) * spec.dims


def _check_request(spec: Manifest, backends: Sequence[str], precisions: Sequence[str]) -> None:
    bad = [b for b in backends if b not in BACKENDS] + [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise SpecError(f"unknown backend/precision {bad[0]!r}; backends: {', '.join(BACKENDS)}; "
                        f"precisions: {', '.join(PRECISIONS)}")
    if not spec.layout.startswith("NC"):
        raise SpecError(f"spec input.layout {spec.layout} is channels-last; a PyTorch module is channels-first "
                        f"({'NCHW' if spec.dims == 2 else 'NCDHW'})")
    if "tflite" in backends and spec.tile is None:
        raise SpecError("TFLite graphs have a fixed size: set input.tile in the spec, or export ONNX only")


def package(module: nn.Module, out: str | os.PathLike, spec: Manifest | dict | str | os.PathLike, *,
            backends: Sequence[str] = ("onnx",), precisions: Sequence[str] = ("fp32",),
            parity_input: np.ndarray | SourceCheck | None = None, provenance: dict | None = None,
            overwrite: bool = False) -> Manifest:
    """Export ``module`` to the model folder ``out`` described by ``spec``, checked against PyTorch.

    Parameters
    ----------
    module : the network as the user has it (fp32 or fp16, pruned or not, on CPU); not modified
    spec : the manifest without artifacts: a :class:`Manifest` from :func:`export.spec.load_spec`,
        a dict of its fields, or a ``.json`` / ``.toml`` file
    parity_input : float32 ``[N, C, *spatial]`` batches, already prepared as the manifest says
        (default: two seeded standard-normal samples); also the int8 calibration data. Or a
        :class:`export.source_parity.SourceCheck`: a whole volume and the source's own
        predictor (``nnUNetPredictor``, a bundle's inferer), compared label by label through
        the runtime, on top of the default samples' check against eager PyTorch.
        The figures go to ``provenance.parity`` and ``MODEL_CARD.md``.
    provenance : merged into the manifest's provenance (where the model came from)

    Raises
    ------
    SpecError, SourceError, ConversionError, ParityError
        one line each; nothing is left at ``out``.
    """
    spec = spec if isinstance(spec, Manifest) else spec_from_dict(spec) if isinstance(spec, dict) else load_spec(spec)
    backends, precisions = tuple(dict.fromkeys(backends)), tuple(dict.fromkeys(("fp32", *precisions)))
    _check_request(spec, backends, precisions)
    tile = sample_tile(spec)
    sample = (len(spec.modalities), *tile)
    tiles = None if parity_input is None or isinstance(parity_input, SourceCheck) else parity_input
    x = np.asarray(tiles if tiles is not None else np.random.default_rng(0).standard_normal((2, *sample)), np.float32)
    if x.ndim != spec.dims + 2 or x.shape[1] != len(spec.modalities):
        raise SpecError(f"parity input of shape {x.shape} is not [N, {len(spec.modalities)}, ...] for a {spec.dims}D model")
    net, pruned = permanent_copy(module)
    info = ModelInfo(arch=type(module).__name__, dims=spec.dims, divisible_by=spec.divisible_by, default_tile=tile,
                     dynamic_spatial=spec.tile is None, config={})
    model = Packaged(net, info).eval()
    ref_logits = _eager(model)(x)        # fails early, in one line, if the module refuses the input
    prov = {**spec.provenance, "exporter": "edge-infer export package", "architecture": info.arch,
            "source_dtype": str(next(module.parameters(), torch.empty(0)).dtype).replace("torch.", ""),
            "pruned_tensors_made_permanent": pruned, **(provenance or {})}
    with staged_folder(out, overwrite) as tmp:
        order, not_made = write_artifacts(model, tmp, backends, precisions, sample,
                                          [x[i:i + 1] for i in range(len(x))])
        prov = {**prov, "not_made": not_made} if not_made else prov   # e.g. no TFLite fp16 for CONV_3D
        manifest = dataclasses.replace(spec, artifacts=pinned_artifacts(tmp, order), provenance=prov,
                                       parameters=sum(p.numel() for p in net.parameters()),
                                       macs=_macs(model, tmp, order, sample))
        manifest = write_manifest(tmp, manifest)
        verification = check_parity(tmp, manifest, x, lambda _: ref_logits)
        about = {"kind": "synthetic" if tiles is None else "user", "shape": list(x.shape),
                 **({"seed": 0} if tiles is None else {})}
        parity = source_parity(tmp, manifest, verification, parity_input, about)
        write_model_card(tmp, add_verification(tmp, manifest, verification, parity))
    return load_manifest(out)


def _eager(model: nn.Module):
    """Eager PyTorch logits of ``model`` on channels-first batches, with a one-line error
    when the module does not accept the spec's input."""
    def run(x: np.ndarray) -> np.ndarray:
        try:
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()
        except Exception as exc:  # the user's forward may raise anything
            raise SourceError(f"the module fails on a {list(x.shape)} input as the spec describes it: "
                              f"{str(exc).splitlines()[0][:200]}") from None
    return run


def _macs(model: nn.Module, folder: Path, order, sample: tuple[int, ...]) -> int:
    """Multiply-accumulates per tile, counted on the exported ONNX graph (any source), else on the module."""
    from .macs import count_macs, onnx_macs

    if ("onnx", "fp32") in order:
        return onnx_macs(folder / "model.onnx", (1, *sample))
    return count_macs(model, sample)
