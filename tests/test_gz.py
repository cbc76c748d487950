"""Tests of edge_infer.gz: gzip through ISA-L or zlib, standard streams either way."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from edge_infer import gz


@pytest.fixture(params=["isal", "zlib"])
def path(request, monkeypatch):
    if request.param == "isal":
        if gz.igzip() is None:
            pytest.skip("python-isal is not installed (pip install 'edge-infer[fast-gzip]')")
    else:
        monkeypatch.setattr(gz, "igzip", lambda: None)
    return request.param


class TestCompress:
    DATA = np.random.default_rng(0).integers(0, 3, 200_000).astype(np.uint8).tobytes()

    def test_standard_gzip_round_trip(self, path):
        assert gzip.decompress(gz.compress(self.DATA)) == self.DATA

    def test_deterministic(self, path):
        a, b = gz.compress(self.DATA), gz.compress(self.DATA)
        assert a == b and a[4:8] == b"\0\0\0\0"          # no timestamp in the header

    def test_level_above_isal_range(self, path):
        assert gzip.decompress(gz.compress(self.DATA, level=6)) == self.DATA

    def test_memoryview(self, path):
        assert gzip.decompress(gz.compress(memoryview(self.DATA))) == self.DATA
