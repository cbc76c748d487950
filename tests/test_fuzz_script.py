"""``scripts/fuzz.py``, the long-run driver (issue 18), without running libFuzzer: its calls
to ``fuzz.atheris_main`` are replaced by a fake that writes libFuzzer's final stats."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("fuzz_script", ROOT / "scripts" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_script"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fuzz_script", None)


def fake_libfuzzer(calls, outcomes):
    """A libFuzzer stand-in: each call takes the next (executions, exit status) of ``outcomes``."""

    def run(harness, *args, log):
        calls.append(args)
        executions, rc = outcomes[len(calls) - 1]
        crash = "ValueError: boom\nTest unit written to /tmp/x/crash-1\n" if rc else ""
        with log.open("a") as out:
            out.write(f"{crash}stat::number_of_executed_units: {executions}\n")
        return rc

    return run


class TestFuzzOne:
    def test_runs_stop_the_harness_and_count_across_a_restart(self, script, tmp_path, monkeypatch):
        calls: list[tuple[str, ...]] = []
        monkeypatch.setattr(script, "libfuzzer", fake_libfuzzer(calls, [(40, 1), (60, 0)]))
        result = script.fuzz_one("manifest", 600.0, tmp_path, tmp_path / "crashes", runs=100)
        assert result.executions == 100
        assert [a for a in calls[0] if a.startswith("-runs=")] == ["-runs=100"]
        assert [a for a in calls[1] if a.startswith("-runs=")] == ["-runs=60"]
        assert len(result.crashes) == 1 and result.crashes[0].startswith("ValueError: boom [crash-1]")

    def test_no_runs_means_no_limit_and_the_input_budget_is_passed(self, script, tmp_path, monkeypatch):
        from fuzz.targets import TARGETS

        calls: list[tuple[str, ...]] = []
        monkeypatch.setattr(script, "libfuzzer", fake_libfuzzer(calls, [(7, 0)]))
        result = script.fuzz_one("dicom", 600.0, tmp_path, tmp_path / "crashes")
        assert result.executions == 7 and len(calls) == 1
        assert not any(a.startswith("-runs=") for a in calls[0])
        assert f"-max_len={TARGETS['dicom'].max_len}" in calls[0]


class TestFuzzAll:
    def test_results_come_back_in_the_order_named(self, script, tmp_path, monkeypatch):
        import time

        def one(name, seconds, work, crashes, runs):
            time.sleep(0.2 if name == "nifti" else 0.0)
            return script.Result(name, seconds, executions=runs, elapsed=2.0)

        monkeypatch.setattr(script, "fuzz_one", one)
        args = argparse.Namespace(jobs=2, minutes=1.0, crashes=tmp_path, runs=10)
        results = script.fuzz_all(["nifti", "seg", "dicom"], args, tmp_path)
        assert [r.harness for r in results] == ["nifti", "seg", "dicom"]
        assert [r.rate for r in results] == [5.0, 5.0, 5.0]


class TestTable:
    def test_rows_show_executions_and_their_rate(self, script):
        r = script.Result("node_store", 60.0, executions=123_456, elapsed=400.0, corpus=9, covered=1, lines=2)
        text = script.table([r], 85.0, "python scripts/fuzz.py --runs 100000")
        assert "| exec/s |" in text
        row = next(line for line in text.splitlines() if line.startswith("| node_store"))
        assert re.search(r"\| 400 \| 123,456 \| 309 \| 9 \| 1/2 \(50\.0%\) \| 0 \|$", row)


class TestLibfuzzer:
    def test_the_harness_gets_a_scratch_folder_removed_after_it(self, script, tmp_path, monkeypatch):
        from fuzz.targets import WORKDIR_ENV

        seen = {}

        def call(cmd, env, **kwargs):
            seen["folder"] = Path(env[WORKDIR_ENV])
            seen["existed"] = seen["folder"].is_dir()
            return 0

        monkeypatch.setattr(script.subprocess, "call", call)
        assert script.libfuzzer("manifest", "-runs=1", log=tmp_path / "log") == 0
        assert seen["existed"] and not seen["folder"].exists()
