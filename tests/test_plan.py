"""Tests of edge_infer.plan: batch choice under a memory budget, refusals, artifact choice,
and of the planned pipeline under a real memory cap."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_infer.boards import get_board
from edge_infer.errors import BudgetError, ModelError
from edge_infer.manifest import load_manifest
from edge_infer.errors import ScanError
from edge_infer.plan import (MB, BackendCosts, Execution, Geometry, Mode, check_enough_slices, choose_artifact,
                             default_batch, estimate_memory, make_plan, model_tile, padding_for, roofline_ms)
from model_factory import write_model

GEOM = Geometry(channels=4, outputs=3, scan_shape=(240, 240, 155), prepared_shape=(240, 240, 155),
                padded_shape=(240, 240, 160), resampled=False)
EXEC = Execution("onnx", "fp32", threads=1)
COSTS = BackendCosts(baseline_bytes=100 * MB, backend_base_bytes=20 * MB, per_unit_bytes=15 * MB)


def board(ram_mb, max_batch=32, providers=("CUDAExecutionProvider", "CPUExecutionProvider")):
    """x86-host with ``ram_mb``; a GPU provider by default, so the batch is limited by memory alone."""
    return replace(get_board("x86-host"), ram_mb=ram_mb, memory_fraction=0.5, max_batch=max_batch,
                   providers=tuple(providers))


class TestEstimateMemory:
    def test_monotone_in_batch(self):
        peaks = [estimate_memory(GEOM, b, COSTS, 240 * 240)["peak"] for b in (1, 2, 4, 8)]
        assert peaks == sorted(peaks) and peaks[0] < peaks[-1]

    def test_components(self):
        e = estimate_memory(GEOM, 1, COSTS, 240 * 240)
        scan = 4 * 240 * 240 * 155 * 4
        assert e["infer"] >= COSTS.baseline_bytes + scan + 7 * 240 * 240 * 160 * 4
        assert e["peak"] == max(e["prepare"], e["infer"], e["finish"])

    def test_released_scan_is_not_counted_after_preparation(self):
        held, freed = (estimate_memory(replace(GEOM, scan_held=h), 2, COSTS, 240 * 240) for h in (True, False))
        scan = 4 * 240 * 240 * 155 * 4
        assert held["infer"] - freed["infer"] == scan and held["finish"] - freed["finish"] == scan
        assert held["prepare"] == freed["prepare"]

    def test_2d_holds_no_logits_and_no_prepared_copy(self):
        flat = estimate_memory(replace(GEOM, dims=2), 2, COSTS, 240 * 240)
        full = estimate_memory(GEOM, 2, COSTS, 240 * 240)
        logits = 3 * 240 * 240 * 160 * 4
        padded = 4 * 240 * 240 * 160 * 4
        assert full["infer"] - flat["infer"] >= logits + padded - 240 * 240 * 160 - 2 * 240 * 240 * 155
        resampled = estimate_memory(replace(GEOM, dims=2, resampled=True), 2, COSTS, 240 * 240)
        assert resampled["infer"] > flat["infer"]

    @pytest.mark.parametrize("dims", [2, 3])
    def test_a_scan_normalised_first_costs_a_scan_more_while_prepared(self, dims):
        plain, first = (estimate_memory(replace(GEOM, dims=dims, normalised_copy=c), 1, COSTS, 1) for c in (False, True))
        scan = 4 * 240 * 240 * 155 * 4
        assert first["prepare"] - plain["prepare"] == scan
        assert first["infer"] - plain["infer"] == (scan if dims == 2 else 0)   # the lazy 2D source reads the copy

    def test_resampling_costs_more(self):
        r = replace(GEOM, resampled=True)
        assert estimate_memory(r, 1, COSTS, 1)["prepare"] > estimate_memory(GEOM, 1, COSTS, 1)["prepare"]


class TestMakePlan:
    def test_larger_budget_never_smaller_batch(self, model2d):
        m = load_manifest(model2d)
        batches = [make_plan(m, GEOM, EXEC, board=board(ram),
                             costs=COSTS).batch for ram in (1600, 1700, 1800, 2000, 2400, 4000)]
        assert batches == sorted(batches) and batches[0] < batches[-1]

    def test_batch_fits_and_next_would_not(self, model2d):
        m = load_manifest(model2d)
        b = board(1800)
        plan = make_plan(m, GEOM, EXEC, board=b, costs=COSTS)
        assert plan.estimated_peak_mb <= b.memory_budget_mb
        assert estimate_memory(GEOM, plan.batch + 1, COSTS, 240 * 240)["peak"] > b.memory_budget_mb * MB

    def test_refusal_says_what_would_fit(self, model2d):
        m = load_manifest(model2d)
        with pytest.raises(BudgetError, match=r"needs about \d+ MB at batch 1 .* allows 250 MB .* at least \d+ MB of RAM"):
            make_plan(m, GEOM, EXEC, board=board(500), costs=COSTS)

    def test_3d_tile_over_board_limit(self, model3d):
        m = load_manifest(model3d)
        b = replace(board(4000), max_tile=(8, 8, 8))
        with pytest.raises(BudgetError, match="exceeds x86-host's largest tile"):
            make_plan(m, GEOM, EXEC, board=b, costs=COSTS)

    def test_without_board(self, model2d, model3d):
        p = make_plan(load_manifest(model2d), GEOM, EXEC)
        assert p.mode is Mode.SLICES and p.batch == 2 and p.units == 160 and p.estimated_peak_mb is None
        p3 = make_plan(load_manifest(model3d), GEOM, EXEC, overlap=0.5)
        assert p3.mode is Mode.WINDOWS and p3.batch == 1 and p3.units == 29 * 29 * 19


class TestDefaultWorkers:
    def test_2d_cpu_one_call_per_thread(self):
        from edge_infer.plan import default_workers

        assert default_workers(2, 4) == 4 and default_workers(2, 1) == 1
        assert default_workers(2, 4, board(4000, providers=("CPUExecutionProvider",))) == 4

    def test_3d_and_gpu_one_call(self):
        from edge_infer.plan import default_workers

        assert default_workers(3, 4) == 1 and default_workers(2, 4, board(4000), "onnx") == 1
        assert default_workers(2, 4, board(4000), "tflite") == 4

    def test_workers_lowered_before_refusing(self, model2d):
        m = load_manifest(model2d)
        one = estimate_memory(GEOM, 1, COSTS, 240 * 240)["peak"]
        two = estimate_memory(GEOM, 1, COSTS, 240 * 240, workers=2)["peak"]
        assert two > one
        b = replace(board(4000), ram_mb=int((one + two) / 2 / MB / 0.5) + 1)
        p = make_plan(m, GEOM, Execution("onnx", "fp32", 1, workers=2), board=b, costs=COSTS)
        assert p.workers == 1 and p.estimated_peak_mb <= b.memory_budget_mb


class TestDefaultBatch:
    @pytest.mark.parametrize("plane, expected", [(240 * 240, 2), (160 * 160, 5), (128 * 128, 8), (64 * 64, 8),
                                                 (512 * 512, 1)])
    def test_cpu_slices_keep_a_call_busy(self, plane, expected):
        assert default_batch(Mode.SLICES, plane) == expected

    def test_tiles_one_at_a_time(self):
        assert default_batch(Mode.WINDOWS, 64 ** 3) == 1 == default_batch(Mode.WINDOWS, 8 ** 3, board(4000))

    def test_cpu_board_caps_by_its_max_batch(self):
        cpu = board(4000, max_batch=4, providers=("CPUExecutionProvider",))
        assert default_batch(Mode.SLICES, 64 * 64, cpu) == 4
        assert default_batch(Mode.SLICES, 240 * 240, cpu) == 2

    def test_gpu_board_takes_its_max_batch_for_onnx_only(self):
        gpu = board(4000, max_batch=16)
        assert default_batch(Mode.SLICES, 240 * 240, gpu, "onnx") == 16
        assert default_batch(Mode.SLICES, 240 * 240, gpu, "tflite") == 2

    def test_cpu_board_plan_is_the_busy_batch_not_the_largest_that_fits(self, model2d):
        cpu = board(16000, providers=("CPUExecutionProvider",))
        p = make_plan(load_manifest(model2d), GEOM, EXEC, board=cpu, costs=COSTS)
        assert p.batch == 2


class TestChooseArtifact:
    def test_board_order(self, tmp_path):
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "model.tflite").write_bytes(b"fake")
        folder = write_model(tmp_path / "m", extra_artifacts=[(tmp_path / "m" / "model.tflite", "tflite", "fp32")])
        m = load_manifest(folder)
        assert choose_artifact(m, get_board("rpi4")) == ("tflite", "fp32")
        assert choose_artifact(m, get_board("rpi4"), installed=("onnx",)) == ("onnx", "fp32")
        assert choose_artifact(m, get_board("jetson-orin-nano")) == ("onnx", "fp32")

    def test_nothing_runnable(self, model2d):
        with pytest.raises(ModelError, match="no artifact rpi3 can run"):
            choose_artifact(load_manifest(model2d), get_board("rpi3"))


class TestRoofline:
    def test_bounds(self):
        b = get_board("rpi4")
        c = roofline_ms(3_160_000_000, 1_000_000, b)
        assert c["bound"] == "compute" and c["estimate_ms"] == pytest.approx(2 * 3.16e9 / (48e9 * 0.4) * 1e3, rel=1e-3)
        m = roofline_ms(1, 10**9, b)
        assert m["bound"] == "memory" and m["estimate_ms"] == pytest.approx(1e9 / 5.5e9 * 1e3, rel=1e-3)


# -- the planned pipeline under a real memory cap ---------------------------------------------

def wide_model(width=64):
    """Two 3x3 convolutions with a 64-channel middle: ~20 MB of activations per 192^2 slice."""
    rng = np.random.default_rng(0)
    arrays = {"W1": (rng.normal(size=(width, 4, 3, 3)) * 0.1).astype(np.float32), "B1": np.zeros(width, np.float32),
              "W2": (rng.normal(size=(3, width, 3, 3)) * 0.1).astype(np.float32), "B2": np.zeros(3, np.float32)}
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4, "h", "w"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, "h", "w"])
    nodes = [helper.make_node("Conv", ["image", "W1", "B1"], ["h1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["h2"]),
             helper.make_node("Conv", ["h2", "W2", "B2"], ["logits"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "wide", [x], [y], [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


TINY_BOARD = """name = "tiny"
arch = "x86_64"
ram_mb = 600
[budget]
memory_fraction = 0.5
latency_per_unit_ms = 100000
latency_per_volume_s = 100000
[compute]
threads = 2
backends = ["onnx"]
precisions = ["fp32"]
fp16_arithmetic = false
max_batch = 64
max_tile = [128, 128, 128]
peak_gflops = 100.0
sustained_fraction = 0.5
bandwidth_gbs = 10.0
"""

CAP_MB = 700  # address-space cap: an unplanned batch of 48 slices needs more, the planned run less


def run_capped(args, cap_mb=CAP_MB):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap_mb * MB, cap_mb * MB))

    return subprocess.run([sys.executable, "-m", "edge_infer.cli", "run", *map(str, args)],
                          preexec_fn=limit, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
class TestMemoryCap:
    @pytest.fixture(scope="class")
    def setup(self, tmp_path_factory):
        from export.phantoms import write_case

        root = tmp_path_factory.mktemp("cap")
        case = write_case(root, "mid", shape=(192, 192, 48), seed=5)
        model = write_model(root / "wide", wide_model())
        (root / "boards").mkdir()
        (root / "boards" / "tiny.toml").write_text(TINY_BOARD)
        return case, model, root

    def test_unplanned_run_does_not_fit(self, setup):
        case, model, root = setup
        p = run_capped([case, "-o", root / "unplanned", "--model", model, "-q", "--batch", "48"])
        assert p.returncode == 3, p.stderr
        assert "ran out of memory" in p.stderr and "Traceback" not in p.stderr
        assert not (root / "unplanned").exists()

    def test_planned_run_fits(self, setup):
        case, model, root = setup
        p = run_capped([case, "-o", root / "planned", "--model", model, "--board", "tiny",
                        "--profiles-dir", root / "boards", "--json", "-q"])
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert 1 <= r["plan"]["batch"] < 48
        assert r["plan"]["estimated_peak_mb"] <= 300
        # the estimate bounds the measured peak (measured <= estimate * 1.10) and is not wildly
        # conservative (estimate <= 2 x measured: onnxruntime grows its arena in power-of-two steps)
        assert r["peak_rss_mb"] <= r["plan"]["estimated_peak_mb"] * 1.10
        assert r["plan"]["estimated_peak_mb"] <= r["peak_rss_mb"] * 2.0
        assert (root / "planned" / "mid_mask.nii.gz").is_file()

    def test_refusal_writes_nothing(self, setup):
        case, model, root = setup
        p = run_capped([case, "-o", root / "refused", "--model", model, "--board", "tiny", "--ram-mb", "300",
                        "--profiles-dir", root / "boards", "-q"])
        assert p.returncode == 3 and p.stderr.startswith("error: this run needs about")
        assert not (root / "refused").exists()


class TestEstimateOnSample:
    def test_estimate_bounds_measured_peak(self, tmp_path):
        """The bundled sample in a fresh process: measured peak RSS within the stated margin."""
        from edge_infer.samples import sample_case

        p = subprocess.run([sys.executable, "-m", "edge_infer.cli", "run", str(sample_case()), "-o", str(tmp_path),
                            "--board", "x86-host", "--backend", "onnx", "--json", "-q"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        est, got = r["plan"]["estimated_peak_mb"], r["peak_rss_mb"]
        assert got <= est * 1.10 and est <= got * 2.0, (est, got)
        assert r["budget"]["measured_peak_mb"] == got

    def test_peak_rss_is_the_childs_own(self, tmp_path):
        """A run started from a process holding 600 MB reports its own peak, not the parent's
        (ru_maxrss survives fork and exec on Linux; the runtime reads VmHWM instead)."""
        from edge_infer.samples import sample_case

        ballast = np.ones(600 * MB // 8)  # touched pages: 600 MB resident in this process
        p = subprocess.run([sys.executable, "-m", "edge_infer.cli", "run", str(sample_case()), "-o", str(tmp_path),
                            "--json", "-q"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["peak_rss_mb"] < 500
        del ballast


class TestPaddingFor:
    def test_2d_plane_padded_to_the_tile_and_divisible(self, model2d):
        m = replace(load_manifest(model2d), tile=(32, 32), divisible_by=16)
        assert padding_for(m, (20, 40, 7), fixed=False) == [(6, 6), (4, 4), (0, 0)]

    def test_fixed_tile_refuses_a_larger_plane(self, model2d):
        m = replace(load_manifest(model2d), tile=(32, 32))
        with pytest.raises(ScanError, match="takes fixed 32-voxel slices; use its ONNX artifact"):
            padding_for(m, (40, 20, 7), fixed=True)


class TestCheckEnoughSlices:
    def test_3d_needs_half_a_tile(self, model3d):
        m = load_manifest(model3d)
        check_enough_slices(m, (8, 8, 8))
        with pytest.raises(ScanError, match="needs at least 8 .its tile is 16.; use a 2D model"):
            check_enough_slices(m, (7, 64, 64))


class TestModelTile:
    def test_the_manifests_tile(self, model3d):
        m = load_manifest(model3d)
        assert model_tile(m) == m.tile and len(model_tile(m)) == 3

    def test_3d_without_tile_refused(self, model3d):
        m = replace(load_manifest(model3d), tile=None)
        with pytest.raises(ModelError, match="is 3D but has no tile; set input.tile"):
            model_tile(m)


class TestPlanWindowTile:
    def test_windows_plan_has_the_models_tile(self, model3d):
        m = load_manifest(model3d)
        assert make_plan(m, GEOM, EXEC).window_tile == m.tile

    def test_slices_plan_has_none(self, model2d):
        plan = make_plan(load_manifest(model2d), GEOM, EXEC)
        with pytest.raises(ValueError, match="a plan of slices has no window tile"):
            _ = plan.window_tile
