"""Tests of `edge-infer profile` and `edge-infer boards` (edge_infer.profiling)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from edge_infer.cli import main
from edge_infer.manifest import load_manifest
from edge_infer.boards import get_board
from edge_infer.errors import InputError
from edge_infer.profile_file import profile_file, synthetic_input
from edge_infer.profile_verdict import verdict
from edge_infer.invoke_timing import latency_stats
from edge_infer.profiling import Variant, parse_compare
from test_backends import dual_model  # noqa: F401  (fixture)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


class TestLatencyStats:
    def test_ordered_and_exact(self):
        s = latency_stats([float(v) for v in range(1, 101)])
        assert s["min"] == 1 and s["max"] == 100 and s["mean"] == 50.5
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]


class TestParseCompare:
    def test_backends_and_precisions(self, dual_model):  # noqa: F811
        m = load_manifest(dual_model)
        assert parse_compare(["onnx", "tflite"], m) == [Variant("onnx", "fp32"), Variant("tflite", "fp32")]
        assert parse_compare(["onnx", "fp16"], m) == [Variant("onnx", "fp16")]
        assert parse_compare([], m) == [Variant("onnx", "fp32")]

    def test_board_choice_not_installed_is_followed_by_one_that_is(self, dual_model):  # noqa: F811
        m = load_manifest(dual_model)
        assert parse_compare([], m, get_board("rpi4"), installed=["onnx", "tflite"]) == [Variant("tflite", "fp32")]
        assert parse_compare([], m, get_board("rpi4"), installed=["onnx"]) == [Variant("tflite", "fp32"),
                                                                                Variant("onnx", "fp32")]
        assert parse_compare([], m, get_board("rpi3"), installed=["onnx"]) == [Variant("tflite", "fp32")]

    def test_unknown_word(self, dual_model):  # noqa: F811
        from edge_infer.errors import InputError

        with pytest.raises(InputError, match="unknown 'gpu'"):
            parse_compare(["gpu"], load_manifest(dual_model))


class TestProfileCommand:
    def test_json_fields(self, model2d, tmp_path):
        pytest.importorskip("matplotlib")  # --plot needs the `plot` extra
        r = invoke("profile", model2d, "--shape", "48x48x12", "--runs", "20", "--warmup", "2", "--board", "x86-host",
                   "--json", "--plot", tmp_path / "lat.png")
        assert r.exit_code in (0, 3), r.output
        d = json.loads(r.stdout)
        v = d["variants"][0]
        for key in ("load_ms", "first_inference_ms", "warmup_ms_mean", "latency_ms", "units_per_s", "top_ops", "volume", "ratio_to_first"):
            assert key in v, key
        s = v["latency_ms"]
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
        for stage in ("read", "prepare", "infer", "finish", "write"):
            assert stage in v["volume"]["timings_s"]
        assert v["volume"]["peak_rss_mb"] > 0 and v["volume"]["units"] == 12
        ops = [o["op"] for o in v["top_ops"]]               # a 48x48 plane: layout reorders can time
        assert "Conv" in ops[:3] and ops == list(dict.fromkeys(ops)), ops   # close to Conv on a busy machine
        assert "ESTIMATE" in d["estimate"]["label"] and d["verdict"]["board"] == "x86-host"
        assert (r.exit_code == 0) == d["verdict"]["ok"]
        assert (tmp_path / "lat.png").read_bytes()[:4] == b"\x89PNG"

    def test_compare_backends_side_by_side(self, dual_model):  # noqa: F811
        r = invoke("profile", dual_model, "--compare", "onnx,tflite", "--shape", "64x64x8", "--runs", "5", "--no-volume")
        assert r.exit_code == 0, r.output
        assert "| onnx/fp32 |" in r.stdout and "| tflite/fp32 |" in r.stdout
        assert "per-operator" not in r.stdout  # the note lives in JSON; the table shows ORT's ops
        assert "top operators (onnx/fp32" in r.stdout

    def test_over_budget_exits_3(self, model2d, tmp_path):
        from pathlib import Path

        from edge_infer.boards import get_board

        text = Path(get_board("x86-host").source).read_text()
        (tmp_path / "slow.toml").write_text(text.replace('name = "x86-host"', 'name = "slow"')
                                            .replace("latency_per_unit_ms = 200", "latency_per_unit_ms = 0.000001"))
        r = invoke("profile", model2d, "--shape", "32x32x8", "--runs", "3", "--no-volume", "--board", "slow",
                   "--profiles-dir", tmp_path)
        assert r.exit_code == 3 and "DOES NOT FIT" in r.stdout and "does not fit slow's budgets" in r.stderr

    @pytest.mark.parametrize("args, match", [
        (["--runs", "0"], "--runs"),
        (["--board", "rpi9"], "unknown board 'rpi9'"),
        (["--shape", "10x10"], "is not IxJxK"),
    ])
    def test_bad_input(self, model2d, args, match):
        r = invoke("profile", model2d, *args)
        assert r.exit_code == 2 and match in r.output

    def test_not_a_model(self, tmp_path):
        (tmp_path / "model.json").write_text("{}")
        r = invoke("profile", tmp_path)
        assert r.exit_code == 2 and "error: manifest field 'schema'" in r.stderr


def without_litert(monkeypatch):
    """This process as a default install: LiteRT and tflite-runtime cannot be imported."""
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)


class TestProfileWithoutLiteRT:
    def test_rpi4_judges_the_variants_that_ran(self, monkeypatch):
        """`profile default --board rpi4` (the help's first example) on a default install:
        the board's first choice, TFLite, is skipped with the install hint; ONNX is judged."""
        without_litert(monkeypatch)
        r = CliRunner().invoke(main, ["profile", "default", "--board", "rpi4", "--runs", "2", "--warmup", "0",
                                      "--no-volume", "--json"])
        d = json.loads(r.stdout)
        assert [v["variant"] for v in d["variants"]] == ["tflite/fp32", "onnx/fp32"]
        assert "pip install 'edge-infer[tflite]'" in d["verdict"]["skipped"]["tflite/fp32"]
        assert list(d["verdict"]["per_variant"]) == ["onnx/fp32"]
        assert r.exit_code == (0 if d["verdict"]["ok"] else 3) and d["verdict"]["per_variant"]["onnx/fp32"]["basis"]

    def test_table_lists_the_skipped(self, monkeypatch):
        without_litert(monkeypatch)
        r = CliRunner().invoke(main, ["profile", "default", "--board", "rpi4", "--runs", "2", "--warmup", "0", "--no-volume"])
        assert "(judged on the variants that ran)" in r.stdout
        assert "  tflite/fp32: not judged, skipped: the tflite backend needs LiteRT: pip install" in r.stdout

    def test_nothing_runnable_is_exit_2_not_3(self, monkeypatch):
        without_litert(monkeypatch)
        r = CliRunner().invoke(main, ["profile", "default", "--board", "rpi3", "--runs", "2", "--no-volume"])
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1
        assert lines[0].startswith("error: nothing could be profiled here: tflite/fp32: the tflite backend needs LiteRT")

    def test_backend_the_board_lacks_is_skipped(self, dual_model):  # noqa: F811
        r = invoke("profile", dual_model, "--board", "rpi3", "--compare", "onnx,tflite", "--runs", "2", "--shape",
                   "64x64x8", "--no-volume", "--json")
        d = json.loads(r.stdout)
        assert d["verdict"]["skipped"] == {"onnx/fp32": "rpi3 runs TFLite only: there is no onnxruntime for it"}
        assert list(d["verdict"]["per_variant"]) == ["tflite/fp32"]


def bare_copy(folder, name, tmp_path):
    """The model file ``name`` of ``folder`` alone in a folder without a manifest."""
    (tmp_path / "bare").mkdir(exist_ok=True)
    return shutil.copy(folder / name, tmp_path / "bare" / name)


class TestProfileFile:
    @pytest.mark.parametrize("name", ["model.onnx", "model.tflite"])
    def test_bare_file_from_the_command(self, dual_model, tmp_path, name):  # noqa: F811
        path = bare_copy(dual_model, name, tmp_path)
        r = invoke("profile", path, "--runs", "5", "--warmup", "1", "--json")
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        (v,) = d["variants"]
        assert v["variant"] == f"{name.split('.')[1]}/fp32" and d["input"]["unit_shape"] == [1, 4, 64, 64]
        s = v["latency_ms"]
        assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
        assert "volume" not in v and "verdict" not in d and "estimate" not in d
        assert ("Conv" in [o["op"] for o in v["top_ops"]]) == (name == "model.onnx")

    def test_table(self, dual_model, tmp_path):  # noqa: F811
        r = invoke("profile", bare_copy(dual_model, "model.onnx", tmp_path), "--runs", "3")
        assert r.exit_code == 0 and "no volume stage" in r.stdout and "| onnx/fp32 |" in r.stdout
        assert "top operators (onnx/fp32" in r.stdout and "budget verdict" not in r.stdout

    def test_free_dimensions(self, model2d, tmp_path):
        """The rule model's input is batch x 4 x H x W with H, W free."""
        d = profile_file(bare_copy(model2d, "model.onnx", tmp_path), runs=2, warmup=0)
        assert d["input"]["unit_shape"] == [1, 4, 128, 128] and "free dimensions set to 128" in d["input"]["source"]

    def test_file_listed_in_a_manifest_beside_it_is_that_variant(self, dual_model):  # noqa: F811
        r = invoke("profile", dual_model / "model.tflite", "--runs", "2", "--shape", "64x64x8", "--no-volume", "--json")
        d = json.loads(r.stdout)
        assert [v["variant"] for v in d["variants"]] == ["tflite/fp32"] and d["model"]["name"] == "test-rule"

    @pytest.mark.parametrize("args, match", [
        (["--board", "rpi4"], "error: --board needs a model folder with its manifest (model.json)"),
        (["--scan", "x", "--compare", "fp16"], "error: --scan, --compare need a model folder"),
    ])
    def test_options_that_need_a_manifest(self, dual_model, tmp_path, args, match):  # noqa: F811
        r = invoke("profile", bare_copy(dual_model, "model.onnx", tmp_path), *args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(match), r.output

    def test_folder_refused(self, tmp_path):
        with pytest.raises(InputError, match=r"^model is not a \.onnx or \.tflite file; profile a model folder"):
            profile_file(tmp_path / "model", runs=1)

    def test_other_file_refused(self, tmp_path):
        (tmp_path / "model.pt").write_bytes(b"x")
        r = invoke("profile", tmp_path / "model.pt")
        assert r.exit_code == 2 and "error: model.pt is not a model: give a model folder" in r.stderr


class TestSyntheticInput:
    def test_shape(self):
        from edge_infer.backends.base import TensorSpec

        assert synthetic_input(TensorSpec("x", (None, 4, None, 64), "float32")).shape == (1, 4, 128, 64)
        assert synthetic_input(TensorSpec("x", (2, 4, 8), "int8")).dtype == "float32"


class TestVerdict:
    EST = {"per_variant": {"onnx/fp32": {"estimate_ms": 10.0}, "tflite/fp32": {"estimate_ms": 5000.0}}}

    def row(self, name):
        return {"variant": name, "latency_ms": {"p95": 1.0}}

    def test_skipped_never_a_breach(self):
        rows = [{"variant": "tflite/fp32", "skipped": "LiteRT is missing"}, self.row("onnx/fp32")]
        v = verdict(rows, get_board("rpi4"), self.EST, on_board=False)
        assert v["ok"] and v["skipped"] == {"tflite/fp32": "LiteRT is missing"} and list(v["per_variant"]) == ["onnx/fp32"]

    def test_breach_of_a_variant_that_ran(self):
        v = verdict([self.row("onnx/fp32"), self.row("tflite/fp32")], get_board("rpi4"), self.EST, on_board=False)
        assert not v["ok"] and v["per_variant"]["tflite/fp32"]["reasons"] == ["5000.0 ms per unit > 1000 ms"]

    def test_failed_volume_run_is_not_a_breach_but_a_refused_one_is(self):
        failed = {**self.row("onnx/fp32"), "volume": {"error": "scan unreadable"}}
        refused = {**self.row("onnx/fp32"), "volume": {"error": "needs 900 MB > 500 MB", "budget": True}}
        assert verdict([failed], get_board("rpi4"), self.EST, on_board=False)["ok"]
        assert not verdict([refused], get_board("rpi4"), self.EST, on_board=False)["ok"]


class TestBoardsCommand:
    def test_lists_shipped(self):
        r = invoke("boards")
        assert r.exit_code == 0
        for name in ("rpi3", "rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "x86-host"):
            assert name in r.stdout

    def test_malformed_user_profile_named(self, tmp_path):
        (tmp_path / "bad.toml").write_text('name = "bad"\n')
        r = invoke("boards", "--profiles-dir", tmp_path)
        assert r.exit_code == 2 and "missing field" in r.stderr and "bad.toml" in r.stderr


class TestRunVolume:
    def test_a_run_that_dies_is_an_error_not_a_crash(self, model2d, monkeypatch):
        """The child is killed (as the OOM killer would): the row says so and the profile goes on."""
        from edge_infer import profiling

        monkeypatch.setattr(profiling, "_volume_report", _die)
        rep = profiling.run_volume(str(model2d), [], Variant("onnx", "fp32"), 1)
        assert rep == {"error": "the volume run's process died (out of memory, or a crash in the runtime)"}

    def test_report_of_a_real_run(self, case_dir, model2d):
        from edge_infer.profiling import run_volume

        rep = run_volume(str(model2d), [case_dir], Variant("onnx", "fp32"), 1)
        assert rep["plan"]["units"] == 32 and rep["peak_rss_mb"] > 0 and "infer" in rep["timings_s"]

    def test_bad_input_is_an_error_row(self, tmp_path, model2d):
        from edge_infer.profiling import run_volume

        rep = run_volume(str(model2d), [tmp_path / "missing"], Variant("onnx", "fp32"), 1)
        assert rep == {"error": f"input {tmp_path / 'missing'} does not exist"}


def _die(*args):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
