"""Tests of edge_infer.board_backends: a board's backends against --backend and what is installed,
through the functions, choose_artifact and `edge-infer run --board`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edge_infer.board_backends import check_board_backend, missing_runtimes, not_on_board, runs_only
from edge_infer.boards import get_board
from edge_infer.cli import main
from edge_infer.errors import BackendUnavailableError, InputError
from edge_infer.manifest import load_manifest
from edge_infer.plan import choose_artifact


class TestRunsOnly:
    def test_one_and_two(self):
        assert runs_only(get_board("rpi3")) == "rpi3 runs TFLite only"
        assert runs_only(get_board("rpi4")) == "rpi4 runs TFLite or ONNX"


class TestNotOnBoard:
    def test_onnx_on_rpi3(self):
        assert not_on_board(get_board("rpi3"), "onnx") == "rpi3 runs TFLite only: there is no onnxruntime for it"

    def test_backend_the_board_runs(self):
        assert not_on_board(get_board("rpi3"), "tflite") is None


class TestMissingRuntimes:
    def test_rpi3_without_litert(self):
        assert missing_runtimes(get_board("rpi3"), ["onnx"]) == (
            "rpi3 runs TFLite only, and LiteRT is not installed here: pip install 'edge-infer[tflite]'")

    def test_one_of_several_is_enough(self):
        assert missing_runtimes(get_board("rpi4"), ["onnx"]) is None

    def test_none_of_several(self):
        msg = missing_runtimes(get_board("rpi4"), [])
        assert msg.startswith("rpi4 runs TFLite or ONNX, and none of LiteRT, onnxruntime is installed here")


class TestCheckBoardBackend:
    def test_refuses_backend_the_board_lacks(self):
        with pytest.raises(InputError, match="^rpi3 runs TFLite only: there is no onnxruntime for it; use --backend tflite"):
            check_board_backend(get_board("rpi3"), "onnx", ["onnx", "tflite"])

    def test_refuses_when_no_runtime_installed(self):
        with pytest.raises(BackendUnavailableError, match=r"pip install 'edge-infer\[tflite\]'$"):
            check_board_backend(get_board("rpi3"), None, ["onnx"])

    def test_passes(self):
        check_board_backend(get_board("rpi3"), "tflite", [])        # the backend's own load says what is missing
        check_board_backend(get_board("rpi4"), None, ["onnx"])


class TestChooseArtifact:
    def test_rpi3_without_litert_says_what_to_install(self, model2d):
        with pytest.raises(BackendUnavailableError, match="rpi3 runs TFLite only, and LiteRT is not installed"):
            choose_artifact(load_manifest(model2d), get_board("rpi3"), installed=("onnx",))

    def test_rpi3_backend_onnx_refused(self, model2d):
        with pytest.raises(InputError, match="there is no onnxruntime for it"):
            choose_artifact(load_manifest(model2d), get_board("rpi3"), backend="onnx")


class TestRunWithBoard:
    def one_line_error(self, args, monkeypatch, installed=("onnx", "tflite")):
        import edge_infer.planning as planning

        monkeypatch.setattr(planning, "installed_backends", lambda: list(installed))
        r = CliRunner().invoke(main, [str(a) for a in args])
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and "Traceback" not in r.output, r.output
        return lines[0]

    def test_rpi3_without_litert(self, case_dir, model2d, tmp_path, monkeypatch):
        line = self.one_line_error(["run", case_dir, "-o", tmp_path / "o", "--model", model2d, "--board", "rpi3"],
                                   monkeypatch, installed=("onnx",))
        assert line == "error: rpi3 runs TFLite only, and LiteRT is not installed here: pip install 'edge-infer[tflite]'"
        assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())

    def test_rpi3_with_onnx_backend(self, case_dir, model2d, tmp_path, monkeypatch):
        line = self.one_line_error(["run", case_dir, "-o", tmp_path / "o", "--model", model2d, "--board", "rpi3",
                                    "--backend", "onnx"], monkeypatch)
        assert line.startswith("error: rpi3 runs TFLite only: there is no onnxruntime for it")
