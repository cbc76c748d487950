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
LINTED = ["edge_infer", "bench", "tests"]
TYPED = ["edge_infer"]


def needs_dev_extra(module: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{module} is not installed: pip install -e '.[dev]' (the test command does)",
    )


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


@needs_dev_extra("ruff")
class TestRuff:
    def test_clean(self):
        result = run_tool("ruff", "check", "--no-cache", *LINTED)
        assert result.returncode == 0, f"ruff found problems:\n{result.stdout}{result.stderr}"


@needs_dev_extra("mypy")
class TestMypy:
    def test_clean(self):
        result = run_tool("mypy", "--no-incremental", "--cache-dir", "/dev/null", *TYPED)
        assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"
