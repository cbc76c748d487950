"""``edge-infer batch``: finding cases, sizing, a LocalCluster run, resume, failures, exit codes,
and a scheduler + worker processes on loopback with a worker killed mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")

from edge_infer.batch import cluster, runner, summary  # noqa: E402
from edge_infer.batch.adapter import RunOptions  # noqa: E402
from edge_infer.batch.cases import Case, find_cases, safe_id  # noqa: E402
from edge_infer.batch.metrics import case_metrics, region_labels, region_scores  # noqa: E402
from edge_infer.boards import get_board  # noqa: E402
from edge_infer.cli import main  # noqa: E402
from edge_infer.errors import InputError, ScanError  # noqa: E402
from export.phantoms import write_cases  # noqa: E402

SHAPE = (64, 64, 32)
BOARD = "x86-host"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def write_broken(root: Path, name: str = "broken") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for m in ("t1", "t1ce", "t2", "flair"):
        (folder / f"{name}_{m}.nii.gz").write_bytes(b"not a nifti file")
    return folder


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    write_cases(root, [1, 2, 3, 4], shape=SHAPE, prefix="pc")
    return root


@pytest.fixture(scope="module")
def client():
    c = cluster.start_local(cluster.local_sizing(2, 64000, get_board(BOARD).memory_budget_mb, workers=2, threads=1))
    yield c
    cl = c.cluster
    c.close()
    cl.close()


@pytest.fixture(scope="module")
def first_batch(archive, model2d, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch-out")
    opts = RunOptions(model=str(model2d), threads=1)
    rows = runner.run_batch(find_cases([archive]), out, client, opts, progress=False)
    return out, opts, rows


class TestFindCases:
    def test_brats_folders_with_truth(self, archive):
        cases = find_cases([archive])
        assert [c.id for c in cases] == ["pc_0001", "pc_0002", "pc_0003", "pc_0004"]
        assert all(c.truth and c.truth.endswith("_seg.nii.gz") for c in cases)
        assert cases[0].inputs == (str(archive / "pc_0001"),)

    def test_flat_nifti_case_set(self, archive, tmp_path):
        for d in ("pc_0001", "pc_0002"):
            for f in (archive / d).iterdir():
                shutil.copy(f, tmp_path / f.name)
        cases = find_cases([tmp_path])
        assert [c.id for c in cases] == ["pc_0001", "pc_0002"]
        assert len(cases[0].inputs) == 4 and cases[0].truth.endswith("pc_0001_seg.nii.gz")

    def test_csv_and_jsonl(self, archive, tmp_path):
        (tmp_path / "l.csv").write_text(f"case_id,inputs,truth\nx1,{archive / 'pc_0001'},\n")
        (tmp_path / "l.jsonl").write_text(json.dumps({"inputs": [str(archive / "pc_0002")]}) + "\n")
        cases = find_cases([tmp_path / "l.csv", tmp_path / "l.jsonl"])
        assert [c.id for c in cases] == ["pc_0002", "x1"] and cases[1].truth is None

    def test_dicom_studies_grouped_by_study_uid(self, phantom, tmp_path):
        import hashlib

        from dicom_factory import write_dicom_study
        from phantom_helpers import stack

        data = np.round(stack(phantom.images)[:, ::4, ::4, ::4])
        uids = ["1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"]
        for n, uid in enumerate(uids):
            write_dicom_study(tmp_path / f"study{n}", data, phantom.affine, ("t1", "t1ce", "t2", "flair"),
                              subfolders=True, study_uid=uid)
        cases = find_cases([tmp_path])
        want = sorted("dicom-" + hashlib.sha256(u.encode()).hexdigest()[:12] for u in uids)
        assert [c.id for c in cases] == want  # no raw UID in the id
        assert {Path(c.inputs[0]).name for c in cases} == {"study0", "study1"}

    def test_nothing_recognisable_says_what_was_searched(self, tmp_path):
        (tmp_path / "notes.txt").write_text("x")
        with pytest.raises(InputError, match="found no cases in .*searched for BraTS case folders"):
            find_cases([tmp_path])

    def test_duplicate_ids(self, archive, tmp_path):
        (tmp_path / "l.csv").write_text(f"case_id,inputs\na,{archive / 'pc_0001'}\na,{archive / 'pc_0002'}\n")
        with pytest.raises(InputError, match="two cases have the id 'a'"):
            find_cases([tmp_path / "l.csv"])

    def test_csv_row_without_input(self, tmp_path):
        (tmp_path / "l.csv").write_text("case_id,inputs\na,\n")
        with pytest.raises(InputError, match="row 1 names no input"):
            find_cases([tmp_path / "l.csv"])


class TestSafeId:
    @pytest.mark.parametrize("raw,want", [("../x", "x"), ("a b/c", "a_b_c"), ("..", "case")])
    def test_no_path_parts(self, raw, want):
        assert safe_id(raw) == want


class TestStartLocal:
    def test_worker_memory_limit_equals_the_board_budget(self, client):
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
        assert limits == [int(get_board(BOARD).memory_budget_mb * 2 ** 20)] * 2

    @pytest.mark.parametrize("key", ["distributed.worker.profile.enabled", "distributed.worker.memory.pause"])
    def test_workers_run_with_the_local_settings(self, client, key):
        import dask

        seen = client.run(dask.config.get, key)
        assert list(seen.values()) == [False, False]


class TestRegionScores:
    def test_perfect_and_shifted(self):
        from edge_infer.batch.metrics import region_labels as rl  # noqa: F401

        t = np.zeros((20, 20, 20), np.uint8)
        t[5:15, 5:15, 5:15] = 2
        t[8:12, 8:12, 8:12] = 4
        regions = {"WT": (1, 2, 4), "ET": (4,)}
        same = region_scores(t, t, regions, (1, 1, 1))
        assert same == {"dice_wt": 1.0, "hd95_wt_mm": 0.0, "dice_et": 1.0, "hd95_et_mm": 0.0}
        shifted = region_scores(np.roll(t, 2, axis=0), t, regions, (1, 1, 1))
        assert 0 < shifted["dice_wt"] < 1 and shifted["hd95_wt_mm"] == pytest.approx(2.0)

    def test_empty_regions(self):
        t = np.zeros((10, 10, 10), np.uint8)
        t[2:5, 2:5, 2:5] = 2
        got = region_scores(np.zeros_like(t), t, {"WT": (2,), "ET": (4,)}, (1, 1, 1))
        assert got == {"dice_wt": 0.0, "hd95_wt_mm": float("inf"), "dice_et": 1.0, "hd95_et_mm": 0.0}

    def test_grid_mismatch(self):
        with pytest.raises(ScanError, match="give the truth on the scan's grid"):
            region_scores(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), {"WT": (1,)}, (1, 1, 1))

    def test_nested_regions_from_manifest_labels(self):
        from model_factory import BRATS_LABELS, CHANNELS

        assert region_labels(BRATS_LABELS, CHANNELS) == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


class TestCaseMetrics:
    def test_truth_that_is_not_a_volume_is_refused(self, tmp_path):
        path = tmp_path / "truth.gii"
        nib.save(nib.gifti.GiftiImage(), path)
        with pytest.raises(ScanError, match="the ground truth truth.gii is not a volume image: give a NIfTI label map"):
            case_metrics(np.zeros((4, 4, 4), np.uint8), path, model_manifest=None)


class TestRunBatch:
    def test_masks_identical_to_run(self, first_batch, archive, model2d, tmp_path):
        out, _, rows = first_batch
        assert [r["status"] for r in rows] == ["ok"] * 4
        assert len({r["worker"] for r in rows}) == 2  # both workers took cases
        for cid in ("pc_0001", "pc_0004"):
            r = invoke("run", archive / cid, "-o", tmp_path / cid, "--model", model2d, "-q")
            assert r.exit_code == 0, r.output
            np.testing.assert_array_equal(mask(out / cid / f"{cid}_mask.nii.gz"),
                                          mask(tmp_path / cid / f"{cid}_mask.nii.gz"))

    def test_summary_columns(self, first_batch):
        out, _, rows = first_batch
        cols = summary.columns(rows)
        assert cols[:8] == list(summary.FIRST)
        for c in ("volume_edema_ml", "time_infer_s", "time_read_s", "backend_s", "peak_rss_mb", "dice_wt",
                  "hd95_et_mm"):
            assert c in cols
        assert cols.index("peak_rss_mb") < cols.index("started_unix_s") < cols.index("finished_unix_s")
        assert all(r["started_unix_s"] <= r["finished_unix_s"] for r in rows)
        assert all(len(r["model_sha256"]) == 64 for r in rows)
        path = summary.write_summary(rows, out)["summary.csv"]
        assert path.read_text().splitlines()[0].split(",") == cols

    def test_validation_report(self, first_batch):
        from edge_infer.batch.metrics import write_report

        out, _, rows = first_batch
        written = write_report(rows, out, "Validation")
        assert "| dice_wt |" in (out / "validation.md").read_text()
        assert any(p.suffix == ".png" for p in written)

    def test_resume_skips_complete_cases(self, first_batch, archive, client):
        out, opts, _ = first_batch
        log = out / runner.PARTIAL / runner.COMMIT_LOG
        before = log.read_text().split()
        rows = runner.run_batch(find_cases([archive]), out, client, opts, progress=False)
        assert all(r["resumed"] for r in rows) and log.read_text().split() == before

    def test_resume_after_interrupted_batch(self, archive, model2d, client, tmp_path):
        opts = RunOptions(model=str(model2d), threads=1)
        cases = find_cases([archive])
        runner.run_batch(cases[:2], tmp_path, client, opts, progress=False)  # "interrupted" after 2
        (tmp_path / runner.PARTIAL / "pc_0003.deadbeef").mkdir()  # a half-written attempt
        (tmp_path / "pc_0003" ).mkdir()  # not committed: no batch.json
        rows = runner.run_batch(cases, tmp_path, client, opts, progress=False)
        assert [r["resumed"] for r in rows] == [True, True, False, False]
        assert sorted((tmp_path / runner.PARTIAL / runner.COMMIT_LOG).read_text().split()) == [c.id for c in cases]
        assert not [p for p in (tmp_path / runner.PARTIAL).iterdir() if p.is_dir()]

    def test_other_options_rerun(self, first_batch, archive, client, model2d, tmp_path):
        out, _, _ = first_batch
        shutil.copytree(out, tmp_path / "o")
        opts = RunOptions(model=str(model2d), threads=1, threshold=0.9)
        rows = runner.run_batch(find_cases([archive])[:1], tmp_path / "o", client, opts, progress=False)
        assert rows[0]["resumed"] is False and rows[0]["status"] == "ok", rows[0]["error"]
        assert json.loads((tmp_path / "o" / "pc_0001" / runner.MARKER).read_text())["options_key"] == opts.key()

    def test_changed_inputs_rerun(self, first_batch, archive, client, tmp_path):
        out, opts, _ = first_batch
        shutil.copytree(out, tmp_path / "o")
        shutil.copytree(archive / "pc_0002", tmp_path / "in" / "pc_0002")  # same id, other files
        rows = runner.run_batch(find_cases([tmp_path / "in"]), tmp_path / "o", client, opts, progress=False)
        assert rows[0]["resumed"] is False and rows[0]["status"] == "ok", rows[0]["error"]

    def test_failure_row_for_broken_case(self, archive, model2d, client, tmp_path):
        write_broken(tmp_path / "in")
        cases = [*find_cases([tmp_path / "in"]), find_cases([archive])[0]]
        rows = runner.run_batch(cases, tmp_path / "out", client, RunOptions(model=str(model2d), threads=1),
                                progress=False)
        bad = rows[0]
        assert bad["status"] == "failed" and bad["case"] == "broken"
        assert bad["error"] and "\n" not in bad["error"] and "broken_" in bad["error"]
        assert rows[1]["status"] == "ok"
        assert not (tmp_path / "out" / "broken").exists()

    def test_model_that_does_not_load(self, client, tmp_path):
        with pytest.raises(InputError, match="did not load on a worker"):
            runner.install_model(client, RunOptions(model=str(tmp_path / "missing"), threads=1))


class TestCommand:
    def test_exit_0_and_outputs(self, archive, model2d, tmp_path):
        r = invoke("batch", archive, "-o", tmp_path / "o", "--model", model2d, "--workers", "2", "--threads", "1")
        assert r.exit_code == 0, r.output
        assert "4 of 4 cases ok" in r.stdout
        assert (tmp_path / "o" / "summary.csv").is_file() and (tmp_path / "o" / "validation.md").is_file()

    def test_exit_4_when_a_case_fails(self, archive, model2d, tmp_path):
        shutil.copytree(archive / "pc_0001", tmp_path / "in" / "pc_0001")
        write_broken(tmp_path / "in")
        r = invoke("batch", tmp_path / "in", "-o", tmp_path / "o", "--model", model2d, "--workers", "1", "-q")
        assert r.exit_code == 4, r.output
        text = (tmp_path / "o" / "summary.csv").read_text()
        assert "broken,failed," in text and "pc_0001,ok," in text

    def test_out_inside_input_refused(self, archive, model2d):
        r = invoke("batch", archive, "-o", archive / "results", "--model", model2d)
        assert r.exit_code == 2 and "inside the input folder" in r.stderr
        assert not (archive / "results").exists()

    def test_unreachable_scheduler(self, archive, model2d, tmp_path):
        t0 = time.perf_counter()
        r = invoke("batch", archive, "-o", tmp_path / "o", "--model", model2d,
                   "--scheduler", f"tcp://127.0.0.1:{free_port()}")
        assert r.exit_code == 2
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], r.stderr
        assert time.perf_counter() - t0 < 15

    def test_bad_option(self, archive, tmp_path):
        r = invoke("batch", archive, "-o", tmp_path / "o", "--workers", "0")
        assert r.exit_code == 2

    def test_without_dask_says_how_to_install(self, archive, tmp_path, monkeypatch):
        monkeypatch.setitem(sys.modules, "distributed", None)
        r = invoke("batch", archive, "-o", tmp_path / "o")
        assert r.exit_code == 2 and "pip install 'edge-infer[batch]'" in r.stderr


def _start(args, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.slow
class TestSchedulerAndWorkers:
    def test_worker_killed_mid_run_every_case_once(self, model2d, tmp_path):
        from distributed import Client

        write_cases(tmp_path / "in", range(10, 18), shape=(64, 64, 48), prefix="k")
        port = free_port()
        addr = f"tcp://127.0.0.1:{port}"
        procs = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                         "--dashboard-address", ":0"], tmp_path / "s.log")]
        try:
            for name in ("wa", "wb"):
                procs.append(_start(["distributed.cli.dask_worker", addr, "--nthreads", "1", "--no-nanny",
                                     "--name", name, "--host", "127.0.0.1", "--dashboard-address", ":0"],
                                    tmp_path / f"{name}.log"))
            client = cluster.connect(addr, timeout=30)
            client.wait_for_workers(2, timeout=60)
            cluster.check_versions(client)
            out = tmp_path / "out"
            victim = procs[1]
            victim_addr = next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == "wa")
            killed = threading.Event()
            done_at_kill = []

            def kill_after_first_commit():
                log = out / runner.PARTIAL / runner.COMMIT_LOG
                while not (log.exists() and log.read_text().strip()):
                    time.sleep(0.02)
                os.killpg(victim.pid, signal.SIGKILL)
                done_at_kill.append(len(log.read_text().split()))
                killed.set()

            threading.Thread(target=kill_after_first_commit, daemon=True).start()
            cases = find_cases([tmp_path / "in"])
            rows = runner.run_batch(cases, out, client, RunOptions(model=str(model2d), threads=1), progress=False)
            client.close()
            assert killed.is_set() and done_at_kill[0] < len(cases)  # killed mid-run
            assert [r["status"] for r in rows] == ["ok"] * len(cases)
            commits = (out / runner.PARTIAL / runner.COMMIT_LOG).read_text().split()
            assert len(commits) == len(set(commits))  # no case committed twice
            unlisted = [c.id for c in cases if c.id not in commits]
            # the victim may die between its commit (the rename) and the log line: that case's
            # outputs stay, with the victim's name in their marker, and the retry keeps them
            assert len(unlisted) <= 1
            for cid in unlisted:
                assert runner.read_marker(out / cid)["row"]["worker"] == victim_addr
            for c in cases:
                assert sorted(p.name for p in (out / c.id).iterdir()) == [
                    runner.MARKER, f"{c.id}_mask.nii.gz", f"{c.id}_report.json"]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=20)
