"""The benchmarks, by name: one registry read by the command line and the README report."""

from __future__ import annotations

import importlib

#: the one registry: benchmark name -> module (each has ``run(ctx) -> Result``)
REGISTRY = {
    "runtime": "bench.runtime",
    "profile-overhead": "bench.profile_overhead",
    "volume2d": "bench.volume2d",
    "volume3d": "bench.volume3d",
    "precision": "bench.precision",
    "limit": "bench.limit",
    "scaling": "bench.scaling",
    "dicom-node": "bench.node",
    "batch": "bench.batch",
    "crop": "bench.crop",
    "byom": "bench.byom",
}


def benchmark(name: str):
    """The ``run`` function of benchmark ``name``; an unknown name lists the known ones."""
    try:
        return importlib.import_module(REGISTRY[name]).run
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(REGISTRY)}, all") from None
