"""Reliability and security (issue 7): hostile headers and bombs, path safety, model
integrity, crash-safe outputs, determinism, no patient data in outputs, DICOM preambles.

Memory bounds are checked with tracemalloc (numpy, zlib and pydicom allocations are traced)
in this process, and with the peak RSS of a child process for the whole bomb corpus.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import external_data_helper, helper, numpy_helper

import fuzz_corpus as fc
from dicom_factory import write_dicom_series, write_dicom_study
from edge_infer.backends.onnx_wire import ONNX_SCHEMA, WireFormatError, external_data_refs, location_problem
from edge_infer.errors import IntegrityError, ModelError, OutputError, ScanError
from edge_infer.manifest import load_manifest, sha256_file
from edge_infer.readers import read_scan
from edge_infer.safety import MAX_STEM_BYTES, check_inside, check_stem, output_stem, sanitize_stem, stem_problem
from edge_infer.writers import TMP_MARK, clean_stale_temporaries, commit_files, prepare_output_dir
from model_factory import conv_model, write_model

ROOT = Path(__file__).resolve().parents[1]


#: traced bytes a refused hostile input may allocate in this process
REFUSAL_BOUND = 16 << 20
#: peak RSS of a fresh interpreter that imports the readers and refuses the whole bomb corpus
CHILD_RSS_BOUND_MB = 400
AXIAL = np.diag([1.0, 1.0, 2.0, 1.0])
MARKERS = ("ZZMARKER^NAME", "ZZMARKER-ID-123", "ZZMARKER-INSTITUTION", "ZZMARKER^REFERRER", "ZZMARKERACC9",
           "19010203")


@contextmanager
def traced_peak():
    """Yield a list that holds the traced memory peak (bytes) when the block ends."""
    result = []
    tracemalloc.start()
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def cli(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "edge_infer.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 16x16x8 BraTS case folder and a one-convolution 2D model (~1 s per CLI run)."""
    from export.phantoms import write_case

    root = tmp_path_factory.mktemp("tiny")
    case = write_case(root, "case", shape=(16, 16, 8), seed=1)
    return {"case": case, "model": write_model(root / "model")}


# -- hostile headers and bombs ---------------------------------------------------------------------
def nifti2_bytes(dims, datatype=np.int16, vox_offset=None, payload=64) -> bytes:
    hdr = nib.Nifti2Header()
    hdr.set_data_dtype(datatype)
    raw = bytearray(hdr.binaryblock)
    raw[16:80] = np.array([len(dims), *dims] + [1] * (7 - len(dims)), "<i8").tobytes()
    raw[168:176] = np.array([vox_offset if vox_offset is not None else 544], "<i8").tobytes()
    return bytes(raw) + bytes(4) + bytes(payload)


class TestHostileNifti:
    @pytest.mark.parametrize("dims", [(2**31 - 1, 2, 2), (2**31, 2**31, 2**31), (65536, 65536, 65536),
                                      (2**63 - 1, 1, 1), (1 << 40, 4, 4)])
    def test_dims_up_to_2_31_and_beyond_refused_unallocated(self, tmp_path, dims):
        path = tmp_path / "big_t1.nii"
        path.write_bytes(nifti2_bytes(dims))
        with traced_peak() as peak, pytest.raises(ScanError, match="more than this machine can hold|too few slices"):
            read_scan([path], ("t1",))
        assert peak[0] < REFUSAL_BOUND

    @pytest.mark.parametrize("dims", [(-1, 4, 4), (4, -4, 4), (4, 4, 0), (-(2**31), 2, 2)])
    def test_negative_or_zero_dims_refused(self, tmp_path, dims):
        path = tmp_path / "neg_t1.nii"
        path.write_bytes(nifti2_bytes(dims))
        with traced_peak() as peak, pytest.raises(ScanError):
            read_scan([path], ("t1",))
        assert peak[0] < REFUSAL_BOUND

    @pytest.mark.parametrize("gz", [False, True])
    @pytest.mark.parametrize("vox_offset", [10_000, 2**31, 2**40])
    def test_vox_offset_past_the_end(self, tmp_path, gz, vox_offset):
        raw = nifti2_bytes((4, 4, 4), vox_offset=vox_offset, payload=4 * 4 * 4 * 2)
        path = tmp_path / ("off_t1.nii.gz" if gz else "off_t1.nii")
        path.write_bytes(gzip.compress(raw) if gz else raw)
        with traced_peak() as peak, pytest.raises(ScanError, match="truncated|corrupt|not a readable|extension"):
            read_scan([path], ("t1",))
        assert peak[0] < REFUSAL_BOUND

    def test_gzip_extension_bomb_is_not_inflated(self, tmp_path):
        """A .nii.gz whose one header extension claims 2 GiB of a 1000:1 zero stream."""
        hdr = nib.Nifti1Header()
        hdr.set_data_shape((4, 4, 4))
        hdr.set_data_dtype(np.uint8)
        hdr["vox_offset"] = 352 + (64 << 20)
        path = tmp_path / "bomb_t1.nii.gz"
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        with open(path, "wb") as f:
            f.write(packer.compress(hdr.binaryblock + b"\x01\0\0\0" + np.array([2**31 - 16, 6], "<i4").tobytes()))
            zeros = bytes(1 << 20)
            for _ in range(64):
                f.write(packer.compress(zeros))
            f.write(packer.flush())
        assert (64 << 20) / path.stat().st_size > 900  # about 1000:1
        with traced_peak() as peak, pytest.raises(ScanError, match="header extensions"):
            read_scan([path], ("t1",))
        assert peak[0] < REFUSAL_BOUND


def deflated_bomb(folder: Path, inflated: int = 96 << 20) -> tuple[Path, float]:
    """A two-slice series whose first file is Deflated Explicit VR LE with a private OB
    element of ``inflated`` zero bytes after the pixel data (about 1000:1)."""
    files = write_dicom_series(folder, np.ones((8, 8, 2), np.int16), AXIAL, "AX T1", shuffle=False)
    raw = files[0].read_bytes()
    meta = fc.with_transfer_syntax(raw, pydicom.uid.DeflatedExplicitVRLittleEndian)
    head = meta[:fc.meta_end(meta)]
    body = raw[fc.meta_end(raw):]
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [packer.compress(body + b"\xe1\x7f\x10\x10OB\0\0" + inflated.to_bytes(4, "little"))]
    zeros = bytes(1 << 20)
    for _ in range(inflated >> 20):
        out.append(packer.compress(zeros))
    out.append(packer.flush())
    data = head + b"".join(out)
    files[0].write_bytes(data)
    return files[0], inflated / len(data)


def rle_segment_bomb(n_bytes: int) -> bytes:
    """An RLE frame (one segment) whose runs decode to ``n_bytes`` (64:1, RLE's most)."""
    runs = b"\x81\x00" * (n_bytes // 128)
    header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56)
    return header + runs


class TestHostileDicom:
    def test_rows_columns_frames_overflowing(self, tmp_path):
        files = write_dicom_series(tmp_path, np.ones((4, 4, 3), np.int16), AXIAL, "AX T1")
        for f in files:
            ds = pydicom.dcmread(f)
            ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, "4294967295"
            ds.save_as(f)
        with traced_peak() as peak, pytest.raises(ScanError, match="multi-frame|more than this machine can hold"):
            read_scan([tmp_path], ("t1",))
        assert peak[0] < REFUSAL_BOUND

    def test_pixel_data_shorter_than_declared(self, tmp_path):
        files = write_dicom_series(tmp_path, np.ones((16, 12, 3), np.int16), AXIAL, "AX T1")
        ds = pydicom.dcmread(files[1])
        ds.PixelData = ds.PixelData[:100]
        ds.save_as(files[1])
        with traced_peak() as peak, pytest.raises(ScanError, match=f"cannot decode the pixels of {files[1].name}"):
            read_scan([tmp_path], ("t1",))
        assert peak[0] < REFUSAL_BOUND

    def test_pixel_data_far_longer_than_declared(self, tmp_path):
        files = write_dicom_series(tmp_path, np.ones((16, 12, 3), np.int16), AXIAL, "AX T1")
        ds = pydicom.dcmread(files[1])
        ds.PixelData = bytes(ds.PixelData) * 40
        ds.save_as(files[1])
        with traced_peak() as peak, pytest.raises(ScanError, match=f"{files[1].name} holds 15360 bytes of pixel data"):
            read_scan([tmp_path], ("t1",))
        assert peak[0] < REFUSAL_BOUND

    def test_deflate_bomb_refused_without_inflating(self, tmp_path):
        path, ratio = deflated_bomb(tmp_path)
        assert ratio > 900
        with traced_peak() as peak, pytest.raises(ScanError, match=f"{path.name} is a deflate bomb"):
            read_scan([tmp_path], ("t1",))
        assert peak[0] < REFUSAL_BOUND  # pydicom alone would hold 96 MiB inflated (plus the stream)

    def test_small_deflated_series_still_reads(self, tmp_path):
        seed = next(s for s in fc.dicom_seeds() if s.name == "factory:deflated")
        for k, data in enumerate(seed.data):
            (tmp_path / f"{k}.dcm").write_bytes(data)
        assert read_scan([tmp_path], ("t1",)).shape == (6, 5, 2)

    def test_rle_declared_huge_refused_before_decoding(self, tmp_path):
        files = write_dicom_series(tmp_path, np.ones((8, 8, 3), np.int16), AXIAL, "AX T1",
                                   transfer_syntax=pydicom.uid.RLELossless)
        for f in files:
            ds = pydicom.dcmread(f)
            ds.Rows = ds.Columns = 32768
            ds.save_as(f)
        with traced_peak() as peak, pytest.raises(ScanError, match="more than this machine can hold"):
            with fc.memory_budget(1 << 30):
                read_scan([tmp_path], ("t1",))
        assert peak[0] < REFUSAL_BOUND

    def test_rle_stream_far_longer_than_its_frame_is_refused(self, tmp_path):
        """RLE runs that would decode to 64 MiB for an 8x8 frame (64:1, ~8000x the frame)."""
        from pydicom.encaps import encapsulate

        files = write_dicom_series(tmp_path, np.ones((8, 8, 3), np.int16), AXIAL, "AX T1",
                                   transfer_syntax=pydicom.uid.RLELossless)
        ds = pydicom.dcmread(files[0])
        ds.PixelData = encapsulate([rle_segment_bomb(64 << 20)])
        ds.save_as(files[0])
        with traced_peak() as peak, pytest.raises(ScanError, match="bytes of compressed pixel data for a 8x8 image"):
            read_scan([tmp_path], ("t1",))
        assert peak[0] < REFUSAL_BOUND

    def test_huge_element_length_in_a_tiny_file_allocates_nothing(self, tmp_path):
        """Found by the fuzzer: pydicom asked the file for a corrupt 900 MB length at once."""
        files = write_dicom_series(tmp_path, np.ones((4, 4, 2), np.int16), AXIAL, "AX T1", shuffle=False)
        raw = bytearray(files[0].read_bytes())
        at = fc.meta_end(bytes(raw))
        raw[at:at + 8] = b"\x08\x00\x05\x00UN\0\0"  # SpecificCharacterSet as UN with a 4-byte length
        raw[at + 8:at + 12] = (0xFFFFFFF0).to_bytes(4, "little")
        files[0].write_bytes(bytes(raw))
        with traced_peak() as peak, pytest.raises(ScanError, match=files[0].name):
            read_scan([tmp_path], ("t1",))
        assert peak[0] < REFUSAL_BOUND

    def test_child_process_peak_rss_stays_bounded(self, tmp_path):
        """The whole bomb corpus refused in a fresh interpreter: its VmHWM is under the bound."""
        bombs = tmp_path / "deflate"
        deflated_bomb(bombs)
        nii = tmp_path / "big_t1.nii"
        nii.write_bytes(nifti2_bytes((2**31 - 1, 2**31 - 1, 2)))
        code = (
            "import sys; from edge_infer.readers import read_scan; from edge_infer.errors import ScanError\n"
            f"for inp in ({str(bombs)!r}, {str(nii)!r}):\n"
            "    try: read_scan([inp], ('t1',))\n"
            "    except ScanError: pass\n"
            "    else: sys.exit('loaded a bomb')\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout.strip()) / 1024 < CHILD_RSS_BOUND_MB


# -- path safety ----------------------------------------------------------------------------------------
HOSTILE_NAMES = ["../x", "../../etc/cron.d/x", "/tmp/abs", "a/b", "a\\b", "a\x00b", "x" * (MAX_STEM_BYTES + 1),
                 ".", "..", ".hidden", "", "line\nbreak", TMP_MARK + "1-x"]


class TestOutputNames:
    @pytest.mark.parametrize("name", HOSTILE_NAMES)
    def test_hostile_names_are_refused(self, name):
        assert stem_problem(name)
        with pytest.raises(OutputError, match="give a plain file name"):
            check_stem(name)

    @pytest.mark.parametrize("name", ["case01", "BraTS20_Training_001", "dicom-0123456789ab", "a.b-c+d", "é"])
    def test_plain_names_pass(self, name):
        assert check_stem(name) == name

    @given(st.text(max_size=300))
    @settings(derandomize=True, database=None, max_examples=300, deadline=None)
    def test_sanitized_stems_are_always_safe(self, text):
        stem = sanitize_stem(text)
        assert stem_problem(stem) == ""
        assert Path("out", stem + "_mask.nii.gz").parent == Path("out")

    def test_output_stem_checks_given_and_sanitizes_derived(self):
        assert output_stem(None, "../../x") == "_.._x"
        with pytest.raises(OutputError):
            output_stem("../x", "case")

    def test_dicom_case_name_is_a_hash_whatever_the_uids(self, tmp_path, phantom):
        from edge_infer.outputs import case_name

        data = np.stack([phantom.images[m][:16, :16, :4] for m in ("t1",)]).astype(np.int16)
        write_dicom_study(tmp_path, data, AXIAL, ["t1"], study_uid="../../" + "9" * 50,
                          patient_id="../../etc/passwd\x00", patient_name="/abs/" + "x" * 60)
        scan = read_scan([tmp_path], ("t1",))
        name = case_name(scan, [tmp_path])
        assert name.startswith("dicom-") and stem_problem(name) == ""

    def test_commit_files_refuses_paths_outside_the_folder(self, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        for bad in (out / ".." / "x_mask.nii.gz", tmp_path / "elsewhere.json"):
            with pytest.raises(OutputError, match="outside the output folder"):
                commit_files({bad: b"x"}, folder=out)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    def test_commit_files_refuses_a_link_under_a_final_name(self, tmp_path):
        out = tmp_path / "out"
        out.mkdir()
        (out / "x_report.json").symlink_to(tmp_path / "target")
        with pytest.raises(OutputError, match="symbolic link"):
            commit_files({out / "x_report.json": b"{}"}, folder=out)
        assert not (tmp_path / "target").exists()

    def test_nul_in_a_final_name_is_an_output_error(self, tmp_path):
        with pytest.raises(OutputError, match="NUL"):
            commit_files({tmp_path / "a\x00b.json": b"{}"})

    def test_check_inside_accepts_a_plain_name(self, tmp_path):
        assert check_inside(tmp_path, tmp_path / "ok.json") == tmp_path / "ok.json"

    @pytest.mark.parametrize("relative", [True, False])
    def test_run_refuses_a_hostile_name(self, tiny, tmp_path, relative):
        from edge_infer.options import ModelChoice, OutputSpec
        from edge_infer.run import run_case

        out = tmp_path / "out"
        name = "../escaped" if relative else str(tmp_path / "escaped")
        with pytest.raises(OutputError, match="--name"):
            run_case([tiny["case"]], OutputSpec(out, name=name), model=ModelChoice(model=tiny["model"]))
        assert not (tmp_path / "escaped_mask.nii.gz").exists()


# -- model integrity ---------------------------------------------------------------------------------------
def spy_backend(monkeypatch) -> list:
    """Record every file handed to a backend (model.load_backend)."""
    import edge_infer.model as model_module

    handed = []
    real = model_module.load_backend

    def spy(kind, path, **kw):
        handed.append(Path(path))
        return real(kind, path, **kw)

    monkeypatch.setattr(model_module, "load_backend", spy)
    return handed


def repin(folder: Path) -> None:
    """Re-pin model.onnx's sha256 and size in the manifest (as a careless exporter would)."""
    d = json.loads((folder / "model.json").read_text())
    d["artifacts"][0]["sha256"] = sha256_file(folder / "model.onnx")
    d["artifacts"][0]["bytes"] = (folder / "model.onnx").stat().st_size
    (folder / "model.json").write_text(json.dumps(d))


def external_model(folder: Path, location: str, write_data: bool = True) -> Path:
    """A model folder whose weight tensor W lives in external data at ``location``."""
    write_model(folder)
    model = onnx.load(folder / "model.onnx")
    w = model.graph.initializer[0]
    raw = w.raw_data
    external_data_helper.set_external_data(w, location=location, offset=0, length=len(raw))
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    if write_data and not os.path.isabs(location) and ".." not in location:
        (folder / location).write_bytes(raw)
    repin(folder)
    return folder


class TestModelIntegrity:
    def test_tampered_model_never_reaches_the_backend(self, tmp_path, monkeypatch):
        from edge_infer.model import load_model

        folder = write_model(tmp_path / "m")
        pinned = load_manifest(folder).artifacts[0].sha256
        with open(folder / "model.onnx", "ab") as f:
            f.write(b"\0")
        found = sha256_file(folder / "model.onnx")
        handed = spy_backend(monkeypatch)
        with pytest.raises(IntegrityError, match=f"sha256 {found} but the manifest pins {pinned}"):
            load_model(folder)
        assert handed == []

    def test_untampered_model_is_handed_over_once(self, tmp_path, monkeypatch):
        from edge_infer.model import load_model

        handed = spy_backend(monkeypatch)
        load_model(write_model(tmp_path / "m"))
        assert [p.name for p in handed] == ["model.onnx"]

    @pytest.mark.parametrize("location, problem", [
        ("/etc/passwd", "an absolute path"),
        ("../outside.bin", "a path that escapes the model folder"),
        ("sub/../../outside.bin", "a path that escapes the model folder"),
        ("link.bin", "a symbolic link"),
        ("weights.bin", "inside the model folder"),
        ("missing.bin", "missing"),
    ])
    def test_external_data_is_refused_before_the_backend(self, tmp_path, monkeypatch, location, problem):
        from edge_infer.model import load_model

        (tmp_path / "outside.bin").write_bytes(bytes(4 * 4 * 9 * 3))
        folder = external_model(tmp_path / "m", location, write_data=location == "weights.bin")
        if location == "link.bin":
            (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
        handed = spy_backend(monkeypatch)
        with pytest.raises(ModelError, match=rf"tensor 'W' in external data .*\({problem}\).*re-save it as a single file"):
            load_model(folder)
        assert handed == []

    def test_verify_reports_external_data(self, tmp_path):
        from edge_infer.verify import verify_model

        result = verify_model(external_model(tmp_path / "m", "../outside.bin"))
        art = result.artifacts[0]
        assert not result.ok and art.status == "failed"
        assert art.external_data == [{"tensor": "W", "location": "../outside.bin",
                                         "problem": "a path that escapes the model folder"}]

    def test_verify_says_a_clean_model_is_self_contained(self, model2d):
        from edge_infer.verify import verify_model

        result = verify_model(model2d)
        assert result.ok and result.artifacts[0].external_data == "none"
        assert "no external data" in result.lines[1]
        assert result.to_dict()["artifacts"][0] == {"file": "model.onnx", "backend": "onnx", "precision": "fp32",
                                                    "external_data": "none", "sha256": "ok", "status": "ok"}

    def test_verify_cli_exit_code(self, tmp_path):
        r = cli("verify", external_model(tmp_path / "m", "/etc/passwd"))
        assert r.returncode == 2 and "external data '/etc/passwd' (an absolute path)" in r.stdout


class TestProtobufReader:
    def test_schema_field_numbers_match_onnx(self):
        for kind, fields in ONNX_SCHEMA.items():
            descriptor = getattr(onnx, kind).DESCRIPTOR
            for number, child in fields.items():
                field = descriptor.fields_by_number[number]
                assert field.message_type.name == child, (kind, number)
        tensor = onnx.TensorProto.DESCRIPTOR.fields_by_name
        assert (tensor["name"].number, tensor["external_data"].number, tensor["data_location"].number) == (8, 13, 14)

    def test_finds_external_tensors_everywhere_onnx_does(self):
        """Initializers, a subgraph's initializer, a Constant's tensor attribute, sparse values."""
        def external(t):
            external_data_helper.set_external_data(t, location=f"{t.name}.bin")
            t.data_location = onnx.TensorProto.EXTERNAL
            return t

        model = conv_model()
        external(model.graph.initializer[0])
        w = external(numpy_helper.from_array(np.ones(3, np.float32), "inner"))
        then = helper.make_graph([helper.make_node("Identity", ["inner"], ["o"])], "then", [],
                                 [helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT, [3])], [w])
        cval = external(numpy_helper.from_array(np.ones(2, np.float32), "cval"))
        const = helper.make_node("Constant", [], ["c"], value=cval)
        cond = helper.make_node("If", ["cond"], ["o"], then_branch=then, else_branch=then)
        model.graph.node.extend([const, cond])
        sparse = helper.make_sparse_tensor(external(numpy_helper.from_array(np.ones(2, np.float32), "sv")),
                                           numpy_helper.from_array(np.array([0, 1], np.int64), "si"), [4])
        model.graph.sparse_initializer.append(sparse)
        expected = {(n, f"{n}.bin") for n in ("W", "inner", "cval", "sv")}
        ours = {(r.tensor, r.location) for r in external_data_refs(model.SerializeToString())}
        theirs = {(t.name, dict((e.key, e.value) for e in t.external_data)["location"])
                  for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)}
        assert ours == expected and theirs <= ours

    def test_self_contained_model_has_no_refs(self):
        assert external_data_refs(conv_model().SerializeToString()) == []

    def test_unknown_group_fields_are_skipped_like_protobuf(self):
        """A start/end group of an unknown field before the graph: protobuf skips it, so must we."""
        model = external_model_proto("x.bin")
        group = bytes([(9 << 3) | 3, (1 << 3) | 0, 5, (9 << 3) | 4])  # field 9 is unused in ModelProto
        assert [r.location for r in external_data_refs(group + model)] == ["x.bin"]
        assert onnx.load_from_string(group + model).graph.initializer[0].name == "W"

    @given(st.binary(max_size=512))
    @settings(derandomize=True, database=None, max_examples=400, deadline=None)
    def test_arbitrary_bytes_parse_or_raise_wire_format_error(self, data):
        try:
            external_data_refs(data)
        except WireFormatError:
            pass

    def test_location_problem_of_a_symlinked_folder(self, tmp_path):
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "w.bin").write_bytes(b"x")
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "sub").symlink_to(tmp_path / "real")
        assert location_problem("sub/w.bin", tmp_path / "m") == "a symbolic link"


def external_model_proto(location: str) -> bytes:
    model = conv_model()
    external_data_helper.set_external_data(model.graph.initializer[0], location=location)
    model.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    return model.SerializeToString()


# -- crash-safe outputs ---------------------------------------------------------------------------------
KILLS = 100


def final_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(TMP_MARK)]


def check_finals(folder: Path, reference: np.ndarray) -> None:
    """Every file under a final name is whole: non-empty, a mask equal to the reference, a JSON report."""
    for p in final_files(folder):
        assert p.stat().st_size > 0, p
        if p.name.endswith("_mask.nii.gz"):
            assert np.array_equal(np.asanyarray(nib.load(p).dataobj), reference), p
        elif p.name.endswith("_report.json"):
            json.loads(p.read_text())
        else:
            raise AssertionError(f"unexpected file {p.name}")


@pytest.mark.slow
class TestCrashSafety:
    def test_sigkill_at_random_points_leaves_no_partial_file(self, tiny, tmp_path):
        args = ["run", tiny["case"], "--model", tiny["model"], "-q", "--threads", "1"]
        ref_dir = tmp_path / "ref"
        t0 = time.monotonic()
        assert cli(*args, "-o", ref_dir).returncode == 0
        duration = time.monotonic() - t0
        reference = np.asanyarray(nib.load(ref_dir / "case_mask.nii.gz").dataobj)
        rng = random.Random(7)
        # half the delays anywhere in the run, half in its last quarter (write phase)
        delays = [rng.uniform(0, 1.05 * duration) if k % 2 else rng.uniform(0.75 * duration, 1.05 * duration)
                  for k in range(KILLS)]

        def killed_run(k: int) -> tuple[str, int]:
            out = tmp_path / f"out{k % 2}"
            env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
            proc = subprocess.Popen([sys.executable, "-m", "edge_infer.cli", *map(str, args), "-o", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            try:
                proc.wait(timeout=delays[k])
                state = "finished"
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                state = "killed"
            left = len([p for p in out.iterdir() if p.name.startswith(TMP_MARK)]) if out.is_dir() else 0
            return state, left

        results = []
        for start in range(0, KILLS, 2):  # two runs at a time, each in its own folder
            with ThreadPoolExecutor(2) as pool:
                results += list(pool.map(killed_run, range(start, start + 2)))
            for folder in (tmp_path / "out0", tmp_path / "out1"):
                if folder.is_dir():
                    check_finals(folder, reference)
        killed = sum(state == "killed" for state, _ in results)
        assert killed >= KILLS // 2, results
        for folder in (tmp_path / "out0", tmp_path / "out1"):  # the next start cleans temporaries
            assert cli(*args, "-o", folder).returncode == 0
            assert not [p for p in folder.iterdir() if p.name.startswith(TMP_MARK)]
            check_finals(folder, reference)
        print(f"\ncrash-safety: {KILLS} runs, {killed} killed, "
              f"{sum(1 for _, left in results if left)} kills left temporaries, 0 partial files")


class TestTemporaries:
    def test_stale_temporaries_of_dead_runs_are_cleaned_live_ones_kept(self, tmp_path):
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            dead = subprocess.Popen([sys.executable, "-c", "pass"])
            dead.wait()
            stale = tmp_path / f"{TMP_MARK}{dead.pid}-case_mask.nii.gz"
            live = tmp_path / f"{TMP_MARK}{sleeper.pid}-case_mask.nii.gz"
            junk = tmp_path / f"{TMP_MARK}nopid-case_report.json"
            for p in (stale, live, junk):
                p.write_bytes(b"partial")
            removed = clean_stale_temporaries(tmp_path)
            assert sorted(removed) == sorted([stale, junk]) and live.exists()
        finally:
            sleeper.kill()
            sleeper.wait()

    def test_prepare_output_dir_cleans(self, tmp_path):
        (tmp_path / f"{TMP_MARK}999999999-x_mask.nii.gz").write_bytes(b"")
        prepare_output_dir(tmp_path)
        assert list(tmp_path.iterdir()) == []


class TestFullDisk:
    def test_enospc_while_writing_leaves_nothing(self, tmp_path, monkeypatch):
        import edge_infer.writers as writers

        real_write = os.write
        calls = []

        def full(fd, data):
            calls.append(len(data))
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(writers.os, "write", full)
        with pytest.raises(OutputError, match="no space left on the device"):
            commit_files({tmp_path / "a_mask.nii.gz": b"1" * 10, tmp_path / "a_report.json": b"2" * 10})
        assert list(tmp_path.iterdir()) == []

    def test_small_tmpfs_gives_exit_2_and_no_mask(self, tiny, tmp_path):
        mnt = tmp_path / "small"
        mnt.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root and mount(8)")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"mount not permitted here: {r.stderr.decode().strip()}")
        try:
            filler = mnt / "filler"
            with open(filler, "wb") as f:  # leave less than the mask needs
                try:
                    f.write(bytes(200 << 10))
                except OSError:
                    pass
            out = mnt / "out"
            res = cli("run", tiny["case"], "--model", tiny["model"], "-q", "-o", out)
            assert res.returncode == 2, res.stderr
            assert "no space left" in res.stderr
            assert not out.is_dir() or final_files(out) == []
            assert not out.is_dir() or [p for p in out.iterdir()] == []
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


# -- determinism -------------------------------------------------------------------------------------------
class TestDeterminism:
    def test_twenty_in_process_runs_and_two_subprocesses_are_byte_identical(self, tiny, tmp_path):
        from edge_infer.options import ModelChoice, OutputSpec
        from edge_infer.run import run_case

        masks, reports = [], []
        choice = ModelChoice(model=tiny["model"], backend="onnx", threads=1)
        for k in range(20):
            result = run_case([tiny["case"]], OutputSpec(tmp_path / f"r{k}"), model=choice)
            masks.append(result.outputs["mask"].read_bytes())
            reports.append(result.report.to_dict())
        for k in range(2):
            out = tmp_path / f"s{k}"
            assert cli("run", tiny["case"], "--model", tiny["model"], "--backend", "onnx", "--threads", "1",
                       "-q", "-o", out).returncode == 0
            masks.append((out / "case_mask.nii.gz").read_bytes())
        assert len(set(masks)) == 1, f"{len(set(masks))} distinct masks in {len(masks)} runs"
        r = reports[0]
        assert r["edge_infer_version"] and r["provenance"]["software"].startswith("edge-infer ")
        assert r["provenance"]["model_sha256"] == load_manifest(tiny["model"]).artifacts[0].sha256
        assert r["model"]["backend"] == "onnx" and r["model"]["runtime_version"]
        assert r["model"]["threads"] == 1 and r["plan"]["threads"] == 1
        assert {"mode", "backend", "precision", "batch", "padded_shape", "units"} <= set(r["plan"])


# -- no patient data in logs or reports ---------------------------------------------------------------
def marked_study(folder: Path, phantom, preamble: bytes | None = None) -> Path:
    """A four-series DICOM study whose patient and visit fields hold the markers."""
    data = np.stack([phantom.images[m][:24, :24, :8] for m in ("t1", "t1ce", "t2", "flair")]).astype(np.int16)
    files = write_dicom_study(folder, data, AXIAL, ["t1", "t1ce", "t2", "flair"], patient_name=MARKERS[0],
                              patient_id=MARKERS[1])
    for paths in files.values():
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.InstitutionName, ds.ReferringPhysicianName = MARKERS[2], MARKERS[3]
            ds.AccessionNumber, ds.PatientBirthDate = MARKERS[4], MARKERS[5]
            if preamble is not None:
                ds.preamble = preamble
            ds.save_as(p)
    return folder


def marker_hits(texts: list[str], folders: list[Path]) -> list[str]:
    """Every place a marker appears: in the texts, or in any file (gz files inflated) under the folders."""
    hits = []
    blobs = [(f"text {i}", t.encode()) for i, t in enumerate(texts)]
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                blobs.append((str(p), gzip.decompress(data) if p.name.endswith(".gz") else data))
    for where, blob in blobs:
        for marker in MARKERS:
            for form in {marker, marker.replace("^", " "), marker.lower()}:
                if form.encode() in blob or form.encode("utf-16-le") in blob:
                    hits.append(f"{marker} in {where}")
    return hits


class TestNoPatientData:
    def test_cli_outputs_hold_no_markers(self, tmp_path, phantom, tiny):
        study = marked_study(tmp_path / "study", phantom)
        work = tmp_path / "work"
        work.mkdir()
        runs = [
            cli("run", study, "--model", tiny["model"], "-o", work / "out", "--overlay", cwd=work),
            cli("run", study, "--model", tiny["model"], "-o", work / "out2", "--json", cwd=work),
            cli("info", tiny["model"], cwd=work),
            cli("verify", tiny["model"], cwd=work),
            cli("profile", tiny["model"], "--scan", study, "--no-volume", "--runs", "2", "--warmup", "0", cwd=work),
            cli("--debug", "run", study, "--model", tiny["model"], "--series-rule", "t1=nomatch", "-o", work / "o3",
                cwd=work),
        ]
        assert [r.returncode for r in runs] == [0, 0, 0, 0, 0, 2], [r.stderr[-300:] for r in runs]
        assert marker_hits([r.stdout + r.stderr for r in runs], [work]) == []
        assert (work / "out").is_dir() and any((work / "out").iterdir())

    def test_error_path_with_debug_traceback_holds_no_markers(self, tmp_path, phantom, tiny):
        study = marked_study(tmp_path / "study", phantom)
        victim = sorted(study.glob("*.dcm"))[3]
        victim.write_bytes(victim.read_bytes()[:-200])  # truncated pixel data
        r = cli("--debug", "run", study, "--model", tiny["model"], "-o", tmp_path / "out", cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" in r.stderr and "truncated" in r.stderr
        assert marker_hits([r.stdout + r.stderr], [tmp_path / "out"] if (tmp_path / "out").exists() else []) == []

    def test_marker_search_finds_planted_markers(self, tmp_path):
        """The search itself works: a marker in a gzipped file and in text is found."""
        (tmp_path / "x.nii.gz").write_bytes(gzip.compress(MARKERS[1].encode()))
        assert marker_hits([f"hello {MARKERS[0].lower()}"], [tmp_path]) == [f"{MARKERS[0]} in text 0",
                                                                             f"{MARKERS[1]} in {tmp_path / 'x.nii.gz'}"]


# -- DICOM preamble --------------------------------------------------------------------------------------
class TestPreamble:
    @pytest.mark.parametrize("magic", [b"MZ", b"\x7fELF"])
    def test_executable_preamble_reaches_the_report(self, tmp_path, phantom, tiny, magic):
        study = marked_study(tmp_path / "study", phantom, preamble=magic + bytes(128 - len(magic)))
        r = cli("run", study, "--model", tiny["model"], "-o", tmp_path / "out", "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert any("executable preamble" in w and "CVE-2019-11687" in w for w in report["input"]["warnings"])

    def test_executable_preamble_is_flagged_on_stderr(self, tmp_path, phantom, tiny):
        study = marked_study(tmp_path / "study", phantom, preamble=b"MZ" + bytes(126))
        r = cli("run", study, "--model", tiny["model"], "-o", tmp_path / "out")
        assert r.returncode == 0 and "warning: 32 DICOM file(s) have an executable preamble" in r.stderr

    def test_clean_preamble_is_not_flagged(self, tmp_path, phantom):
        study = marked_study(tmp_path / "study", phantom)
        scan = read_scan([study], ("t1", "t1ce", "t2", "flair"))
        assert not any("preamble" in w for w in scan.source["warnings"])

    def test_written_dicom_seg_has_a_zero_preamble(self, tmp_path, phantom, tiny):
        pytest.importorskip("highdicom")
        if not (ROOT / "edge_infer" / "seg.py").is_file():
            pytest.skip("edge_infer/seg.py (the DICOM SEG writer) is not there yet")
        study = marked_study(tmp_path / "study", phantom, preamble=b"MZ" + bytes(126))
        r = cli("run", study, "--model", tiny["model"], "-o", tmp_path / "out", "--format", "seg")
        assert r.returncode == 0, r.stderr
        segs = list((tmp_path / "out").glob("*_seg.dcm"))
        assert len(segs) == 1
        head = segs[0].read_bytes()[:132]
        assert head[:128] == bytes(128) and head[128:] == b"DICM"
