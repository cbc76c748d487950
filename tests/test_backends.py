"""Tests of edge_infer.backends: the registry, onnxruntime and TFLite, and their agreement."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from edge_infer.backends import REGISTRY, load_backend
from edge_infer.backends.native_output import first_line, is_chatter, native_stderr
from edge_infer.backends.onnx import choose_providers
from edge_infer.errors import InputError
from model_factory import rule_weights, write_model


def tflite_rule_model(path, dims=2):
    """The same fixed-weight convolution as the ONNX rule model, converted by litert-torch."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    w, b = rule_weights(dims)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(4, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
        conv.bias.copy_(torch.from_numpy(b))
    x = torch.zeros((1, 4, 64, 64) if dims == 2 else (1, 4, 16, 16, 16))
    litert_torch.convert(conv.eval(), (x,)).export(str(path))
    return path


@pytest.fixture(scope="session")
def dual_model(tmp_path_factory):
    """A model folder holding the rule model as ONNX and as TFLite (fixed 64x64 slices)."""
    folder = tmp_path_factory.mktemp("dual")
    tflite_rule_model(folder / "model.tflite")
    from model_factory import conv_model

    return write_model(folder, conv_model(2, tile=(64, 64)), tile=(64, 64),
                       extra_artifacts=[(folder / "model.tflite", "tflite", "fp32")])


class TestRegistry:
    def test_unknown_lists_known(self, tmp_path):
        with pytest.raises(InputError, match="unknown backend 'tensorrt'; known backends: onnx, tflite"):
            load_backend("tensorrt", tmp_path / "x")

    def test_names(self):
        assert set(REGISTRY) == {"onnx", "tflite"}


class TestChooseProviders:
    def test_gpu_first_cpu_last(self):
        avail = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
        assert choose_providers(avail) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def test_cpu_only(self):
        assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]

    def test_wanted_order_and_cpu_fallback(self):
        assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider"]) == [
            "CUDAExecutionProvider", "CPUExecutionProvider"]


class TestOnnxBackend:
    def test_fixed_batch_is_split(self, tmp_path):
        import onnx

        from model_factory import conv_model

        m = conv_model(2, tile=(8, 8))
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
        m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
        onnx.save(m, tmp_path / "m.onnx")
        be = load_backend("onnx", tmp_path / "m.onnx", threads=1)
        x = np.random.default_rng(0).normal(size=(5, 4, 8, 8)).astype(np.float32)
        y = be.run(x)
        assert y.shape == (5, 3, 8, 8)
        assert np.allclose(y[3], be.run(x[3:4])[0])


class TestTFLiteBackend:
    def test_matches_onnx(self, dual_model):
        x = np.random.default_rng(1).normal(size=(3, 4, 64, 64)).astype(np.float32)
        onnx_be = load_backend("onnx", dual_model / "model.onnx", threads=1)
        tfl_be = load_backend("tflite", dual_model / "model.tflite", threads=1)
        assert tfl_be.input.shape[1:] == (4, 64, 64)
        assert np.allclose(onnx_be.run(x), tfl_be.run(x), atol=1e-4)
        assert tfl_be.describe()["runtime"] in ("ai-edge-litert", "tflite-runtime")

    def test_replicas_run_concurrently(self, dual_model):
        """A TFLite replica is a second interpreter on the same bytes; onnxruntime's is the
        session itself (its run is thread-safe). Concurrent runs give the serial results."""
        from concurrent.futures import ThreadPoolExecutor

        from edge_infer.model import load_model

        x = np.random.default_rng(2).normal(size=(8, 1, 4, 64, 64)).astype(np.float32)
        for backend in ("onnx", "tflite"):
            lm = load_model(dual_model, backend=backend, threads=1)
            a, b = lm.runners(2)
            assert (a is b) == (backend == "onnx")
            want = [a.run(xi) for xi in x]
            with ThreadPoolExecutor(2) as pool:                  # each thread owns one runner, as workers do
                halves = list(pool.map(lambda r: [r[0].run(xi) for xi in x[r[1]::2]], [(a, 0), (b, 1)]))
            got = [halves[i % 2][i // 2] for i in range(len(x))]
            assert all(np.array_equal(g, w) for g, w in zip(got, want))

    def test_pipeline_agreement(self, dual_model, case_dir):
        """The whole pipeline with each backend: Dice at least 0.999 per region."""
        from edge_infer.model import load_model
        from edge_infer.segmentation import segment
        from edge_infer.samples import brats_region_dice
        from edge_infer.readers import read_scan

        scan = read_scan([case_dir], ("t1", "t1ce", "t2", "flair"))
        a = segment(scan, load_model(dual_model, backend="onnx", threads=1)).labels
        b = segment(scan, load_model(dual_model, backend="tflite", threads=1)).labels
        assert (a > 0).sum() > 0
        assert min(brats_region_dice(a, b).values()) >= 0.999

    def test_bad_resolver_env(self, dual_model, monkeypatch):
        monkeypatch.setenv("EDGE_INFER_TFLITE_RESOLVER", "nonsense")
        with pytest.raises(InputError, match="is not one of"):
            load_backend("tflite", dual_model / "model.tflite")

    def test_missing_runtime_gives_install_hint(self, dual_model):
        """With LiteRT and tflite-runtime hidden, loading says how to install them."""
        code = (
            "import sys; sys.modules['ai_edge_litert'] = None; sys.modules['tflite_runtime'] = None\n"
            "from edge_infer.backends import load_backend\n"
            "from edge_infer.errors import BackendUnavailableError\n"
            f"try:\n    load_backend('tflite', r'{dual_model / 'model.tflite'}')\n"
            "except BackendUnavailableError as e:\n    print(e)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert "pip install 'edge-infer[tflite]'" in out


    def test_nothing_on_stderr_when_loading_and_running(self, dual_model):
        """LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate" (native, fd 2, once per
        process: so a fresh one) is captured on a successful load and run."""
        code = ("import numpy as np\nfrom edge_infer.backends import load_backend\n"
                f"be = load_backend('tflite', r'{dual_model / 'model.tflite'}', threads=1)\n"
                "be.run(np.zeros((2, 4, 64, 64), np.float32))\nprint('ran')")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert p.stdout.strip() == "ran" and p.stderr == ""

    def test_bad_model_is_one_line(self, tmp_path):
        (tmp_path / "bad.tflite").write_bytes(b"TFL3" + bytes(100))
        code = ("from edge_infer.backends import load_backend\nfrom edge_infer.errors import ModelError\n"
                f"try:\n    load_backend('tflite', r'{tmp_path / 'bad.tflite'}')\n"
                "except ModelError as e:\n    print(e)")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert p.stderr == "" and p.stdout.startswith("the TFLite runtime cannot load bad.tflite: ")
        assert len(p.stdout.strip().splitlines()) == 1


    def test_bad_input_after_loading_is_one_line(self, dual_model, case_dir, tmp_path):
        """`edge-infer run --backend tflite` on a case that lacks a modality: the model loads
        first (XNNPACK would speak then), and stderr holds the one error line only."""
        folder = tmp_path / "case"
        folder.mkdir()
        for f in case_dir.iterdir():
            if "flair" not in f.name:
                (folder / f.name).write_bytes(f.read_bytes())
        p = subprocess.run([sys.executable, "-m", "edge_infer.cli", "run", str(folder), "-o", str(tmp_path / "out"),
                            "--model", str(dual_model), "--backend", "tflite"], capture_output=True, text=True)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
        assert p.stderr.startswith("error: ") and "flair" in p.stderr

class TestNativeStderr:
    """native_output.native_stderr: chatter written to fd 2 by native code is dropped, real
    lines come back after a block that succeeded, and stay with the caller after one that failed."""

    def write(self, text):
        os.write(2, text.encode())

    def test_chatter_dropped_real_lines_written_back(self, capfd):
        with native_stderr() as kept:
            self.write("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
            self.write("WARNING: something real\n")
        assert kept == ["WARNING: something real"]
        assert capfd.readouterr().err == "WARNING: something real\n"

    def test_failed_block_keeps_lines_for_the_error(self, capfd):
        kept = []
        with pytest.raises(RuntimeError):
            with native_stderr(kept):
                self.write("INFO: chatter\nERROR: the op FOO is not supported\n")
                raise RuntimeError("")
        assert kept == ["ERROR: the op FOO is not supported"] and capfd.readouterr().err == ""
        assert first_line(RuntimeError(""), kept) == "ERROR: the op FOO is not supported"

    def test_python_output_before_and_after_kept_in_order(self, capfd):
        print("before", file=sys.stderr)
        with native_stderr():
            pass
        print("after", file=sys.stderr)
        assert capfd.readouterr().err == "before\nafter\n"


    def test_no_stderr_at_all(self):
        """A daemon started with fd 2 closed still loads models."""
        code = ("import os\nos.close(2)\nfrom edge_infer.backends.native_output import native_stderr\n"
                "with native_stderr() as kept:\n    pass\nprint('ran', kept)")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.strip() == "ran []"

class TestIsChatter:
    @pytest.mark.parametrize("line, chatter", [("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", True),
                                               ("", True), ("ERROR: failed", False), ("  INFO: indented", False)])
    def test_lines(self, line, chatter):
        assert is_chatter(line) is chatter


class TestFirstLine:
    def test_message_then_native_line_then_type(self):
        assert first_line(ValueError("bad\nmore"), ["ERROR: x"]) == "bad"
        assert first_line(ValueError(""), ["ERROR: x"]) == "ERROR: x"
        assert first_line(ValueError(""), []) == "ValueError"

class TestSlimRuntime:
    def test_no_torch_no_export_no_backends_on_import(self):
        code = ("import sys, edge_infer.cli, edge_infer.run\n"
                "bad = [m for m in ('torch', 'export', 'onnxruntime', 'ai_edge_litert', 'tflite_runtime') if m in sys.modules]\n"
                "print(','.join(bad))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        assert out == ""

    def test_run_does_not_import_torch(self, case_dir, model2d, tmp_path):
        code = ("import sys\nfrom edge_infer.run import run_case\nfrom edge_infer.options import ModelChoice, OutputSpec\n"
                f"run_case([r'{case_dir}'], OutputSpec(r'{tmp_path}'), model=ModelChoice(model=r'{model2d}'))\n"
                "print('torch' in sys.modules, 'export' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        assert out == "False False"


class TestAutomaticBackendChoice:
    def test_skips_backends_not_installed(self, dual_model, monkeypatch):
        """A device with only LiteRT runs the TFLite artifact without --backend (armv7 images)."""
        import edge_infer.backends as backends
        from edge_infer.model import load_model

        assert load_model(dual_model).artifact.backend == "onnx"
        monkeypatch.setattr(backends, "installed_backends", lambda: ["tflite"])
        assert load_model(dual_model).artifact.backend == "tflite"
