"""Shared fixtures of the export-stage tests: tiny phantom cases."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_cases():
    """Three small normalised phantom cases (64 x 64 x 32) with tumour slabs."""
    from export.data import phantom_cases

    return phantom_cases(range(3), shape=(64, 64, 32), skull=None)
