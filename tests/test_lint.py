"""Lint (ruff: pycodestyle, pyflakes, import order, bugbear, complexity...) and type checks (mypy)
as part of the suite. Both tools come with the `dev` extra, which the test command installs
(scripts/test.sh); where one is missing the test is skipped and says how to install it.
Their configuration lives in pyproject.toml ([tool.ruff], [tool.mypy])."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the runtime only for now: bench/ and tests/ have about 40 and 160 findings to clean first
LINTED = ["edge_infer"]
TYPED = ["edge_infer"]


def needs_dev_extra(module: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{module} is not installed: pip install -e '.[dev]' (the test command does)",
    )


def assert_clean(*args: str) -> None:
    """Run ``python -m <args>`` at the repository root; fail with the tool's own report."""
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{args[0]} exited {result.returncode}:\n{result.stdout}{result.stderr}", pytrace=False)


@needs_dev_extra("ruff")
class TestRuff:
    def test_clean(self):
        assert_clean("ruff", "check", "--no-cache", "--output-format", "concise", *LINTED)


@needs_dev_extra("mypy")
class TestMypy:
    def test_clean(self):
        assert_clean("mypy", "--no-incremental", "--cache-dir", "/dev/null", *TYPED)
