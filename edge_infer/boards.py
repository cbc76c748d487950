"""Board profiles: memory and latency budgets, threads, backends, precisions, and the
board's compute and bandwidth for estimates. One TOML file per board.

Profiles are found in the shipped ``firmware_profiles`` package, then in folders named by
``--profiles-dir`` or the ``EDGE_INFER_PROFILES`` environment variable (``:``-separated); a
user profile with a shipped name replaces the shipped one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ProfileError
from .fields import MISSING, short_repr, typed_field
from .toml_files import read_toml
from .vocab import BACKENDS, PRECISIONS

PROFILES_ENV = "EDGE_INFER_PROFILES"
KNOWN_BACKENDS = BACKENDS
KNOWN_PRECISIONS = PRECISIONS


@dataclass(frozen=True)
class BoardProfile:
    """A validated board profile."""

    name: str
    description: str
    arch: str
    ram_mb: int
    memory_fraction: float
    latency_per_unit_ms: float
    latency_per_volume_s: float
    threads: int
    backends: tuple[str, ...]
    providers: tuple[str, ...]
    precisions: tuple[str, ...]
    fp16_arithmetic: bool
    max_batch: int
    max_tile: tuple[int, int, int]
    peak_gflops: float
    sustained_fraction: float
    bandwidth_gbs: float
    source: str = ""

    @property
    def memory_budget_mb(self) -> float:
        return self.ram_mb * self.memory_fraction

    def with_ram(self, ram_mb: int | None) -> BoardProfile:
        """The same board with another RAM size (e.g. the 2 GB or 8 GB Pi 4)."""
        if ram_mb is None:
            return self
        if ram_mb <= 0:
            raise ProfileError(f"--ram-mb must be positive, got {ram_mb}")
        return replace(self, ram_mb=int(ram_mb))

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["memory_budget_mb"] = round(self.memory_budget_mb, 1)
        return d


def _field(d: dict, key: str, where: str, kind, path: str, *, positive: bool = False, default: Any = MISSING):
    def fail(msg: str) -> ProfileError:
        return ProfileError(f"board profile {path}: {msg}")

    val = typed_field(d, key, where, kind, fail, default)
    full = f"{where}.{key}" if where else key
    if positive and key in d and isinstance(val, (int, float)) and not (val > 0 and math.isfinite(val)):
        raise fail(f"field {full!r} must be positive, got {short_repr(val)}")
    return val


def parse_profile(d: dict, path: str = "<profile>") -> BoardProfile:
    """Validate a profile dictionary; errors name the file and the field."""
    name = _field(d, "name", "", str, path)
    budget = _field(d, "budget", "", dict, path)
    comp = _field(d, "compute", "", dict, path)
    frac = _field(budget, "memory_fraction", "budget", float, path, positive=True)
    if frac > 1.0:
        raise ProfileError(f"board profile {path}: field 'budget.memory_fraction' must be at most 1, got {frac}")
    backends = tuple(_field(comp, "backends", "compute", list, path))
    for b in backends:
        if b not in KNOWN_BACKENDS:
            raise ProfileError(f"board profile {path}: field 'compute.backends' has {b!r}; "
                               f"known: {', '.join(KNOWN_BACKENDS)}")
    if not backends:
        raise ProfileError(f"board profile {path}: field 'compute.backends' must list at least one backend")
    precisions = tuple(_field(comp, "precisions", "compute", list, path))
    for p in precisions:
        if p not in KNOWN_PRECISIONS:
            raise ProfileError(f"board profile {path}: field 'compute.precisions' has {p!r}; "
                               f"known: {', '.join(KNOWN_PRECISIONS)}")
    if not precisions:
        raise ProfileError(f"board profile {path}: field 'compute.precisions' must list at least one precision")
    tile = _field(comp, "max_tile", "compute", list, path)
    if len(tile) != 3 or not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in tile):
        raise ProfileError(f"board profile {path}: field 'compute.max_tile' must be three positive integers, "
                           f"got {tile!r}")
    providers = tuple(_field(comp, "providers", "compute", list, path, default=[]))
    if not all(isinstance(p, str) for p in providers):
        raise ProfileError(f"board profile {path}: field 'compute.providers' must be a list of names")
    return BoardProfile(
        name=name,
        description=_field(d, "description", "", str, path, default=""),
        arch=_field(d, "arch", "", str, path),
        ram_mb=_field(d, "ram_mb", "", int, path, positive=True),
        memory_fraction=frac,
        latency_per_unit_ms=_field(budget, "latency_per_unit_ms", "budget", float, path, positive=True),
        latency_per_volume_s=_field(budget, "latency_per_volume_s", "budget", float, path, positive=True),
        threads=_field(comp, "threads", "compute", int, path, positive=True),
        backends=backends,
        providers=providers,
        precisions=precisions,
        fp16_arithmetic=_field(comp, "fp16_arithmetic", "compute", bool, path),
        max_batch=_field(comp, "max_batch", "compute", int, path, positive=True),
        max_tile=tuple(tile),
        peak_gflops=_field(comp, "peak_gflops", "compute", float, path, positive=True),
        sustained_fraction=min(1.0, _field(comp, "sustained_fraction", "compute", float, path, positive=True)),
        bandwidth_gbs=_field(comp, "bandwidth_gbs", "compute", float, path, positive=True),
        source=path,
    )


def load_profile_file(path: Path) -> BoardProfile:
    prof = parse_profile(read_toml(path, "board profile", ProfileError), str(path))
    if prof.name != path.stem:
        raise ProfileError(f"board profile {path}: field 'name' is {prof.name!r} "
                           f"but the file is named {path.stem!r}.toml")
    return prof


def profile_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Shipped profiles first, then $EDGE_INFER_PROFILES folders, then ``extra`` folders."""
    dirs = [Path(str(resources.files("firmware_profiles")))]
    env = os.environ.get(PROFILES_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    for d in dirs[1:]:
        if not d.is_dir():
            raise ProfileError(f"profiles folder {d} does not exist (from --profiles-dir or ${PROFILES_ENV})")
    return dirs


def board_files(extra: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Board name -> TOML file; later folders override earlier ones."""
    found: dict[str, Path] = {}
    for d in profile_dirs(extra):
        for p in sorted(d.glob("*.toml")):
            found[p.stem] = p
    return found


def get_board(name: str, extra: Sequence[str | Path] = (), ram_mb: int | None = None) -> BoardProfile:
    """The validated profile of board ``name``; an unknown name lists the known boards."""
    files = board_files(extra)
    if name not in files:
        raise ProfileError(f"unknown board {name!r}; known boards: {', '.join(sorted(files))} "
                           f"(add your own TOML with --profiles-dir or ${PROFILES_ENV})")
    return load_profile_file(files[name]).with_ram(ram_mb)


def all_boards(extra: Sequence[str | Path] = ()) -> list[BoardProfile]:
    return [load_profile_file(p) for _, p in sorted(board_files(extra).items())]
