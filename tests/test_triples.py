"""Shapes and spacings as 3-tuples (edge_infer.triples)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer.triples import int_triple, triple


class TestTriple:
    def test_values_kept_as_they_are(self):
        out = triple([1.5, 2, 3.0])
        assert out == (1.5, 2, 3.0) and isinstance(out, tuple) and type(out[1]) is int

    @pytest.mark.parametrize("values", [(1, 2), (1, 2, 3, 4)])
    def test_other_counts_refused(self, values):
        with pytest.raises(ValueError, match="values to unpack"):
            triple(values)


class TestIntTriple:
    def test_numpy_shape_as_python_ints(self):
        out = int_triple(np.zeros((2, 5, 6, 7)).shape[1:])
        assert out == (5, 6, 7) and all(type(n) is int for n in out)

    def test_numpy_integers_converted(self):
        out = int_triple(np.array([4, 5, 6], dtype=np.int64))
        assert out == (4, 5, 6) and all(type(n) is int for n in out)

    def test_two_sizes_refused(self):
        with pytest.raises(ValueError, match="expected 3, got 2"):
            int_triple([3, 4])
