"""outputs.gc_paused: the cyclic garbage collector paused while a SEG is built, then restored."""

from __future__ import annotations

import gc

import pytest

from edge_infer.outputs import gc_paused


@pytest.fixture
def gc_state():
    enabled = gc.isenabled()
    yield
    (gc.enable if enabled else gc.disable)()


class TestGcPaused:
    def test_paused_inside_and_enabled_after(self, gc_state):
        gc.enable()
        with gc_paused():
            assert not gc.isenabled()
        assert gc.isenabled()

    def test_enabled_again_after_an_exception(self, gc_state):
        gc.enable()
        with pytest.raises(ValueError, match="boom"), gc_paused():
            raise ValueError("boom")
        assert gc.isenabled()

    def test_left_disabled_if_it_was(self, gc_state):
        gc.disable()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
