"""The benchmark suite: ``python -m bench all --quick`` produces every row, and the masks each
row compares agree within the row's stated tolerance. Timings are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.registry import REGISTRY, benchmark  # noqa: E402

#: benchmark -> the rows it must produce (by the row's identifying field)
EXPECTED_ROWS = {
    "runtime": ("backend", {"onnx", "tflite"}),
    "profile-overhead": ("backend", {"onnx", "tflite"}),
    "volume2d": ("peer", {"edge-infer onnxruntime", "edge-infer LiteRT", "PyTorch eager", "naive onnxruntime loop"}),
    "volume3d": ("peer", {"edge-infer onnxruntime", "MONAI sliding_window_inference"}),
    "limit": ("backend", {"onnx", "tflite"}),
    "scaling": ("size", {"1x slices", "2x slices", "4x slices", "2x in-plane"}),
    "batch": ("runner", {"shell loop of run", "batch, 2 local workers", "batch, scheduler + 2 workers (loopback)",
                         "scaling: 1 local worker x 1 thread", "scaling: 2 local workers x 1 thread"}),
    "crop": ("peer", {"crop", "no-crop", "naive onnxruntime loop"}),
    "byom": ("tool", {"edge-infer", "nnunet", "monai-bundle"}),
}
OPTIONAL = {"MONAI sliding_window_inference": "monai", "PyTorch eager": "torch", "edge-infer LiteRT": "ai_edge_litert",
            "nnunet": "nnunetv2", "monai-bundle": "monai"}


def _bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=timeout)


class TestRegistry:
    def test_unknown_name_lists_the_known_ones(self):
        p = _bench("no-such-benchmark")
        assert p.returncode == 2
        for name in REGISTRY:
            assert name in p.stderr

    def test_benchmark_lookup_error_lists_names(self):
        with pytest.raises(KeyError, match="known: runtime, profile-overhead"):
            benchmark("nope")

    def test_readme_needs_a_full_run(self):
        p = _bench("all", "--quick", "--readme")
        assert p.returncode == 2 and "full run" in p.stderr

    def test_every_registered_module_has_run(self):
        for name in REGISTRY:
            assert callable(benchmark(name))


class TestLabelDice:
    def test_per_label_and_minimum(self):
        from bench.byom import label_dice

        ref = np.zeros((4, 4), np.uint8)
        ref[0, :2], ref[1] = 1, 2
        got = ref.copy()
        got[0, 0] = 0
        d = label_dice(ref, got, (1, 2))
        assert d["2"] == 1.0 and d["1"] == pytest.approx(2 / 3, abs=1e-6) and d["min"] == d["1"]

    def test_label_in_neither_mask_counts_as_agreement(self):
        from bench.byom import label_dice

        assert label_dice(np.ones((2, 2)), np.ones((2, 2)), (1, 4)) == {"1": 1.0, "4": 1.0, "min": 1.0}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("bench")
    p = _bench("all", "--quick", "--results", str(out), timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "all.json").read_text())
    return {r["benchmark"]: r for r in summary["results"]}


def _installed(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


@pytest.mark.slow
class TestQuickSuite:
    def test_every_benchmark_reports(self, quick):
        assert set(quick) == set(REGISTRY)

    @pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
    def test_every_row_is_produced(self, quick, name):
        field, want = EXPECTED_ROWS[name]
        got = {r[field] for r in quick[name]["rows"]}
        want = {w for w in want if w not in OPTIONAL or _installed(OPTIONAL[w])}
        assert want <= got, quick[name]["notes"]

    def test_precision_rows(self, quick):
        rows = quick["precision"]["rows"]
        combos = {(r["backend"], r["precision"], r["pruning"].split()[0]) for r in rows}
        assert combos == {(b, p, k) for b in ("onnx", "tflite") for p in ("fp32", "fp16", "int8")
                          for k in ("unpruned", "pruned")}
        assert all(r["dice"] is not None for r in rows)

    @pytest.mark.parametrize("name", ["volume2d", "volume3d", "precision", "byom"])
    def test_masks_agree_within_the_stated_tolerance(self, quick, name):
        for r in quick[name]["rows"]:
            if r.get("tolerance") is not None:
                assert r["dice"]["min"] >= r["tolerance"], r
                assert r["agree"] is True

    def test_skipped_peer_is_a_note_not_a_failure(self, quick):
        node = quick["dicom-node"]
        assert node["rows"] or any("skipped" in n for n in node["notes"])

    def test_byom_masks_are_not_empty(self, quick):
        rows = quick["byom"]["rows"]
        if _installed("nnunetv2") and _installed("monai"):
            assert {"nnU-Net 3d_fullres", "MONAI bundle"} <= {r["comparison"] for r in rows}, quick["byom"]["notes"]
        for r in rows:
            assert all(n > 0 for n in r["mask_voxels"].values()), r

    def test_goals_have_values(self, quick):
        for name in ("runtime", "profile-overhead", "volume2d", "limit", "scaling"):
            for g in quick[name]["goals"]:
                assert g["value"] is not None and g["met"] in (True, False)


class TestDicomNodeSplit:
    """bench/dicom_node.py splits last instance -> SEG from the node's audit log and job report."""

    @pytest.fixture
    def spool(self, tmp_path):
        pytest.importorskip("nibabel")
        from edge_infer.uids import uid_hash

        h = uid_hash("1.2.3")
        lines = [{"time": "2026-01-01T00:00:02.000Z", "event": "job_started", "study": h, "job": "j1"},
                 {"time": "2026-01-01T00:00:05.000Z", "event": "job_done", "study": h, "job": "j1", "seconds": 3.0},
                 {"time": "2026-01-01T00:00:01.000Z", "event": "job_started", "study": "other", "job": "j0"}]
        (tmp_path / "audit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        (tmp_path / "sent" / "j1").mkdir(parents=True)
        report = {"timings_s": {"read": 0.5, "prepare": 0.1, "infer": 1.2, "finish": 0.2}}
        (tmp_path / "sent" / "j1" / "case_report.json").write_text(json.dumps(report))
        return tmp_path

    def test_split_adds_up(self, spool):
        import datetime as dt

        from bench.dicom_node import seg_split

        t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()
        split = seg_split(spool, "1.2.3", t_last=t0, t_seg=t0 + 5.25, idle=2.0)
        assert split["total_s"] == pytest.approx(5.25)
        assert split["inference_s"] == 1.2 and split["rest_s"] == pytest.approx(5.25 - 2.0 - 1.2)
        assert split["to_job_start_s"] == pytest.approx(2.0) and split["job_to_seg_at_destination_s"] == pytest.approx(0.25)
        assert split["read_s"] == 0.5 and split["write_s"] == pytest.approx(3.0 - 2.0)

    def test_split_waits_for_the_job_report(self, spool):
        import shutil

        from bench.dicom_node import seg_split

        shutil.rmtree(spool / "sent" / "j1")
        with pytest.raises(ValueError, match="not enough values"):
            seg_split(spool, "1.2.3", t_last=0.0, t_seg=1.0, idle=2.0)
