"""Tests of `edge-infer profile` and `edge-infer boards` (edge_infer.profiling)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edge_infer.cli import main
from edge_infer.manifest import load_manifest
from edge_infer.profiling import Variant, latency_stats, parse_compare
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
