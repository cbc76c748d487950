"""Bounded, deterministic fuzzing of the readers, and regression tests for what it found.

Each harness (tests/fuzz_corpus.py) mutates valid seeds; the property is that every input
loads or raises :class:`~edge_infer.errors.EdgeInferError` with a one-line message, within
a time bound and a traced-memory bound. Hypothesis runs derandomized with no example
database, so CI sees the same inputs every time; ``scripts/fuzz.py --minutes N`` is the long
run. About 30 s in all on two cores.
"""

from __future__ import annotations

import gzip
import json
import logging
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_corpus as fc
from edge_infer.errors import ModelError, ProfileError, ScanError

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=200, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check(name: str, rng) -> None:
    """One fuzz case of harness ``name`` under the bounds; a failure raises."""
    logging.getLogger("nibabel").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome, peak = fc.one_case(fc.HARNESSES[name], rng, Path(tmp))
    assert outcome in ("loaded", "refused")
    assert peak <= fc.MEMORY_BOUND


class TestFuzzHarnesses:
    @FUZZ
    @given(st.randoms(use_true_random=False))
    def test_nifti_reader(self, rng):
        check("nifti", rng)

    @settings(FUZZ, max_examples=150)
    @given(st.randoms(use_true_random=False))
    def test_dicom_series_reader(self, rng):
        check("dicom", rng)

    @FUZZ
    @given(st.randoms(use_true_random=False))
    def test_manifest_loader(self, rng):
        check("manifest", rng)

    @FUZZ
    @given(st.randoms(use_true_random=False))
    def test_board_profile_loader(self, rng):
        check("profile", rng)


class TestSeeds:
    @pytest.mark.parametrize("name", sorted(fc.HARNESSES))
    def test_every_seed_loads_unmutated(self, name, tmp_path):
        """The seeds are valid inputs, so the harnesses start from files that load."""
        harness = fc.HARNESSES[name]
        seeds = harness.seeds()
        assert len(seeds) >= 3
        outcomes = [fc.run_bounded(harness, s.data, s, tmp_path, trace=False)[0] for s in seeds]
        assert outcomes.count("loaded") >= len(seeds) // 2, outcomes

    def test_mutators_are_deterministic(self):
        import random

        harness = fc.HARNESSES["nifti"]
        seed = harness.seeds()[0]
        assert harness.mutate(random.Random(4), seed) == harness.mutate(random.Random(4), seed)


class TestBounds:
    def test_hang_is_caught(self):
        import time

        with pytest.raises(fc.Hang):
            with fc.time_bound(0.2):
                time.sleep(2)

    def test_memory_blow_up_is_caught(self, tmp_path):
        harness = fc.Harness("alloc", lambda: [], lambda r, s: b"", lambda d, s, w: np.ones(300 << 20, np.uint8))
        with pytest.raises(fc.MemoryBlowUp):
            fc.run_bounded(harness, b"", fc.Seed("x", b""), tmp_path)

    def test_foreign_exception_escapes(self, tmp_path):
        def boom(data, seed, workdir):
            raise KeyError("not an EdgeInferError")

        with pytest.raises(KeyError):
            fc.run_bounded(fc.Harness("boom", list, None, boom), b"", fc.Seed("x", b""), tmp_path)


# -- regressions: inputs the harnesses crashed on, now refused with one line ----------------------------
def _nifti(tmp_path: Path, data: np.ndarray, name: str = "case_t1.nii") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


class TestNiftiRegressions:
    def test_rgb_voxels_are_refused(self, tmp_path):
        """Found by the fuzzer (datatype 2304, RGBA): numpy raised TypeError on the cast."""
        from edge_infer.readers import read_scan

        rgba = np.zeros((4, 4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")])
        path = _nifti(tmp_path, rgba)
        with pytest.raises(ScanError, match=r"stores colour \(RGBA\) voxels"):
            read_scan([path], ("t1",))

    def test_complex_voxels_are_refused(self, tmp_path):
        from edge_infer.readers import read_scan

        path = _nifti(tmp_path, np.ones((4, 4, 3), np.complex64))
        with pytest.raises(ScanError, match="stores complex voxels"):
            read_scan([path], ("t1",))

    @pytest.mark.parametrize("esize", [0, 4, -16])
    def test_extension_size_below_eight_is_refused_before_reading(self, tmp_path, esize):
        """nibabel reads ``esize - 8`` bytes: a negative count reads the whole (inflated) rest."""
        from edge_infer.readers import read_scan

        hdr = nib.Nifti1Header()
        hdr.set_data_shape((4, 4, 4))
        hdr.set_data_dtype(np.uint8)
        hdr["vox_offset"] = 368
        raw = hdr.binaryblock + b"\x01\0\0\0" + np.array([esize, 6], "<i4").tobytes() + bytes(8) + bytes(64)
        path = tmp_path / "ext_t1.nii.gz"
        path.write_bytes(gzip.compress(raw))
        with pytest.raises(ScanError, match=f"header extension of {esize} bytes"):
            read_scan([path], ("t1",))


    def test_extension_walk_uses_the_byte_order_nibabel_guesses(self, tmp_path):
        """Found by the long run: dim[0] = -1 makes nibabel read the header byte-swapped, so an
        extension of 32 bytes became one of 512 MiB that nibabel read from the gzip stream."""
        from edge_infer.readers import read_scan

        hdr = nib.Nifti1Header()
        hdr.set_data_shape((4, 4, 4))
        hdr.set_data_dtype(np.uint8)
        hdr["vox_offset"] = 384
        raw = bytearray(hdr.binaryblock)
        raw[40:42] = np.array([-1], "<i2").tobytes()
        ext = np.array([32, 6], "<i4").tobytes() + b"comment".ljust(24, b"\0")
        data = bytes(raw) + b"\x01\0\0\0" + ext + bytes(64)
        path = tmp_path / "swapped_t1.nii.gz"
        path.write_bytes(gzip.compress(data + bytes(1 << 20)))
        with pytest.raises(ScanError, match="header extension of 536870912 bytes"):
            read_scan([path], ("t1",))


class TestManifestRegressions:
    @pytest.mark.parametrize("text, what", [
        ('{"schema": ' + "[" * 5000 + "]" * 5000 + "}", "recursion"),
        ('{"schema_version": ' + "9" * 5000 + "}", "digits"),
    ])
    def test_json_bombs_are_refused(self, tmp_path, text, what):
        """json.loads raises RecursionError / ValueError (not JSONDecodeError) for these."""
        from edge_infer.manifest import load_manifest

        (tmp_path / "model.json").write_text(text)
        with pytest.raises(ModelError, match=f"not usable JSON .*{what}"):
            load_manifest(tmp_path)

    @pytest.mark.parametrize("file", ["m" + "{" * 300 + ".onnx", "a\x00.onnx"])
    def test_artifact_names_the_filesystem_cannot_hold(self, tmp_path, file):
        """Found by the long run: a 300-byte artifact name raised OSError (ENAMETOOLONG)."""
        from edge_infer.manifest import load_manifest

        seed = next(s for s in fc.manifest_seeds() if s.name == "factory:2d")
        d = json.loads(json.dumps(seed.data))
        d["artifacts"][0]["file"] = file
        (tmp_path / "model.json").write_text(json.dumps(d))
        with pytest.raises(ModelError, match=r"artifacts\[0\].file' must be a plain file name"):
            load_manifest(tmp_path)

    @pytest.mark.parametrize("key, value", [("input.spacing_mm", [10**400, 1, 1]), ("output.threshold", 10**400),
                                            ("input.spacing_mm", [1, 1, -(10**400)])])
    def test_integers_too_large_for_a_float(self, key, value):
        """Found by the long run (in boards.py; the same code was here): float(10**400) overflows."""
        from edge_infer.manifest import parse_manifest

        d = json.loads(json.dumps(next(s for s in fc.manifest_seeds() if s.name == "factory:2d").data))
        section, field = key.split(".")
        d[section][field] = value
        with pytest.raises(ModelError, match=key.replace(".", r"\.")):
            parse_manifest(d)

    def test_oversized_manifest_is_refused_unread(self, tmp_path):
        from edge_infer.manifest import MAX_MANIFEST_BYTES, load_manifest

        (tmp_path / "model.json").write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
        with pytest.raises(ModelError, match="it is not a manifest"):
            load_manifest(tmp_path)


class TestProfileRegressions:
    @pytest.mark.parametrize("text", ["a = " + "[" * 5000 + "]" * 5000 + "\n", "a = " + "9" * 5000 + "\n",
                                      'name = "rpi4"\n[compute]\n[budget]\nmemory_fraction = ' + "9" * 400 + "\n",
                                      "a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n"])
    def test_toml_bombs_are_refused(self, tmp_path, text):
        """Found by the fuzzer: tomllib raises RecursionError / ValueError, not TOMLDecodeError."""
        from edge_infer.boards import load_profile_file

        path = tmp_path / "rpi4.toml"
        path.write_text(text)
        with pytest.raises(ProfileError, match="rpi4.toml"):
            load_profile_file(path)


class TestDicomRegressions:
    def test_corrupt_deflate_stream_is_a_scan_error(self, tmp_path):
        """zlib.error is not among pydicom's read errors: it escaped as an internal error."""
        from edge_infer.dicom import read_dicom_folder

        seed = next(s for s in fc.dicom_seeds() if s.name == "factory:deflated")
        start = fc.meta_end(seed.data[0])
        broken = seed.data[0][:start] + b"\xff" * 64 + seed.data[0][start + 64:]
        (tmp_path / "a.dcm").write_bytes(broken)
        (tmp_path / "b.dcm").write_bytes(seed.data[1])
        with pytest.raises(ScanError, match="a.dcm has corrupt deflated data"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_wrong_length_in_the_file_meta_is_a_scan_error(self, tmp_path):
        """Found by the long run: pydicom's BytesLengthException is not among its read errors."""
        from edge_infer.dicom import read_dicom_folder

        seed = next(s for s in fc.dicom_seeds() if s.name == "factory:1.2.840.10008.1.2.1")
        raw = bytearray(seed.data[0])
        assert raw[132:138] == b"\x02\x00\x00\x00UL"
        raw[138:140] = (5).to_bytes(2, "little")  # (0002,0000) UL with a 5-byte value
        (tmp_path / "a.dcm").write_bytes(bytes(raw))
        (tmp_path / "b.dcm").write_bytes(seed.data[1])
        with pytest.raises(ScanError, match="a.dcm is corrupt"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_file_ending_inside_an_element_length_is_a_scan_error(self, tmp_path):
        """Found by the long run: pydicom raised struct.error for a 1-byte 4-byte length."""
        from edge_infer.dicom import read_dicom_folder

        seed = next(s for s in fc.dicom_seeds() if s.name == "factory:uint8")
        raw = seed.data[0]
        at = raw.index(b"\xe0\x7f\x10\x00OB\x00\x00")
        (tmp_path / "a.dcm").write_bytes(raw[:at + 9])
        (tmp_path / "b.dcm").write_bytes(seed.data[1])
        with pytest.raises(ScanError, match="a.dcm is corrupt"):
            read_dicom_folder(tmp_path, ["t1"])
