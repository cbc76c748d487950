"""Shared fixtures: phantom scans written as real NIfTI files and tiny real models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from export.phantoms import make_case, write_case  # noqa: E402  (numpy + nibabel only)
from model_factory import write_model  # noqa: E402

SMALL = (64, 64, 32)


@pytest.fixture(scope="session")
def phantom():
    """A small phantom: (images dict, seg, affine)."""
    return make_case(shape=SMALL, seed=7)


@pytest.fixture(scope="session")
def case_dir(tmp_path_factory) -> Path:
    """A BraTS-layout case folder (64x64x32, 1 mm)."""
    return write_case(tmp_path_factory.mktemp("cases"), "case", shape=SMALL, seed=7)


@pytest.fixture(scope="session")
def model2d(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model2d"))


@pytest.fixture(scope="session")
def model3d(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model3d"), dims=3, tile=(16, 16, 16))



@pytest.fixture(params=["isal", "zlib"])
def gzip_impl(request, monkeypatch):
    """Run a test through each gzip path of edge_infer.gz: ISA-L (python-isal) and zlib."""
    from edge_infer import gz

    if request.param == "isal":
        if gz.igzip() is None:
            pytest.skip("python-isal is not installed (pip install 'edge-infer[fast-gzip]')")
    else:
        monkeypatch.setattr(gz, "igzip", lambda: None)
    return request.param
