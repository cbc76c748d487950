"""Loading a PyTorch model from a file: TorchScript, a ``torch.export`` program (``.pt2``),
or ``package.module:factory`` plus a state dict (``.pt``, ``.pth``, ``.safetensors``).

State dicts may be fp16 and may still hold ``torch.nn.utils.prune`` pairs
(``weight_orig`` + ``weight_mask``), which are folded into ``weight``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .errors import SourceError

STATE_SUFFIXES = (".pt", ".pth", ".safetensors")
#: how many missing / unexpected keys an error names
SHOWN_KEYS = 4


def load_torch_source(path: str | Path, factory: str | None = None) -> nn.Module:
    """The module stored at ``path``: with ``factory`` a state dict loaded into ``factory()``,
    else a ``.pt2`` program or a TorchScript file."""
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"{p} does not exist or is not a file")
    if factory is not None:
        if p.suffix.lower() not in STATE_SUFFIXES:
            raise SourceError(f"{p.name}: a state dict must end in {', '.join(STATE_SUFFIXES)}")
        module = build_from_factory(factory)
        load_weights(module, read_state_dict(p), p.name)
        return module
    if p.suffix.lower() == ".pt2":
        try:
            return torch.export.load(str(p)).module()
        except Exception as exc:  # torch.export raises many types on a bad archive
            raise SourceError(f"{p.name} is not a torch.export program: {_first(exc)}") from None
    try:
        return torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # a plain state dict or pickle lands here too
        raise SourceError(f"{p.name} is not a TorchScript file ({_first(exc)}); for a state dict "
                          "pass --factory package.module:function that builds the network") from None


def build_from_factory(factory: str) -> nn.Module:
    """``package.module:function`` called without arguments; must return an ``nn.Module``."""
    mod_name, _, fn_name = factory.partition(":")
    if not mod_name or not fn_name:
        raise SourceError(f"--factory {factory!r} must look like package.module:function")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"--factory {factory!r} cannot be imported: {_first(exc)}") from None
    module = fn()
    if not isinstance(module, nn.Module):
        raise SourceError(f"--factory {factory!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pt``/``.pth`` state dict (also under a
    ``state_dict`` / ``network_weights`` / ``model`` key), loaded with ``weights_only``."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load / safetensors raise many types on bad files
        raise SourceError(f"{path.name} cannot be read as a state dict: {_first(exc)}") from None
    for key in ("state_dict", "network_weights", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError(f"{path.name} holds no state dict (a mapping of names to tensors)")
    return dict(obj)


def fold_pruning(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``x_orig`` and ``x_mask`` pairs of a pruned module's state dict -> ``x = x_orig * x_mask``."""
    out = dict(state)
    for key in [k for k in state if k.endswith("_orig") and k[:-5] + "_mask" in state]:
        base = key[:-5]
        out[base] = out.pop(key) * out.pop(base + "_mask")
    return out


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` (fp16 or fp32, pruned pairs folded) strictly; a mismatch names the first keys."""
    state = fold_pruning(state)
    have = module.state_dict()
    missing, unexpected = [k for k in have if k not in state], [k for k in state if k not in have]
    if missing or unexpected:
        raise SourceError(f"{what} does not fit the network: missing {missing[:SHOWN_KEYS]} "
                          f"({len(missing)}), unexpected {unexpected[:SHOWN_KEYS]} ({len(unexpected)})")
    wrong = [k for k in have if tuple(have[k].shape) != tuple(state[k].shape)]
    if wrong:
        k = wrong[0]
        raise SourceError(f"{what} does not fit the network: {k} is {tuple(state[k].shape)}, "
                          f"the network wants {tuple(have[k].shape)} ({len(wrong)} tensors differ)")
    module.load_state_dict({k: v.to(have[k].dtype) for k, v in state.items()})


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
