"""Tests of edge_infer.gz: gzip through ISA-L or zlib, standard streams either way."""

from __future__ import annotations

import gzip

import numpy as np
from edge_infer import gz


class TestCompress:
    DATA = np.random.default_rng(0).integers(0, 3, 200_000).astype(np.uint8).tobytes()

    def test_standard_gzip_round_trip(self, gzip_impl):
        assert gzip.decompress(gz.compress(self.DATA)) == self.DATA

    def test_deterministic(self, gzip_impl):
        a, b = gz.compress(self.DATA), gz.compress(self.DATA)
        assert a == b and a[4:8] == b"\0\0\0\0"          # no timestamp in the header

    def test_level_above_isal_range(self, gzip_impl):
        assert gzip.decompress(gz.compress(self.DATA, level=6)) == self.DATA

    def test_memoryview(self, gzip_impl):
        assert gzip.decompress(gz.compress(memoryview(self.DATA))) == self.DATA
