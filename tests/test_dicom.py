"""Tests of edge_infer.dicom with real DICOM files written by tests/dicom_factory.py."""

from __future__ import annotations

import re

import hashlib
import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from dicom_factory import write_dicom_series, write_dicom_study, write_multiframe_series
from edge_infer import scan as scan_module
from edge_infer.dicom import SeriesInfo, dicom_affine, map_series, read_dicom_folder
from edge_infer.uids import uid_hash
from edge_infer.errors import GeometryError, ModalityError, ScanError, UnsupportedTransferSyntaxError

SHAPE = (32, 24, 12)
MODALITIES = ("t1", "t1ce", "t2", "flair")
STUDY = generate_uid()


def volume(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-200, 3000, shape).astype(np.int16)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def affine_from(m: np.ndarray, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = origin
    return a


AXIAL = affine_from(np.diag([0.9, 1.1, 2.5]), [-14.0, -20.0, 5.0])
AFFINES = {
    "axial_ras": AXIAL,
    "lps": affine_from(np.diag([-1.0, -1.0, 3.0]), [120.0, 130.0, -40.0]),
    "flipped": affine_from(np.diag([-0.8, 1.2, -2.0]), [10.0, -30.0, 60.0]),
    "oblique": affine_from(rotation(0.3, -0.2, 0.5) @ np.diag([0.9, 1.1, 2.5]), [-50.5, 20.25, 7.125]),
    "gantry_tilt": affine_from(np.array([[1.0, 0, 0], [0, 1.0, 0.6], [0, 0, 2.0]]), [0.0, -10.0, 20.0]),
    "sagittal": affine_from(np.array([[0, 0, 1.5], [1.0, 0, 0], [0, 1.0, 0]]), [-30.0, -60.0, -40.0]),
}


def edit(path: Path, **attributes) -> None:
    """Change header attributes of a file in place."""
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def series_from_testdata(folder: Path, name: str, slices: int = 3) -> list[Path]:
    """A small series made of copies of one of pydicom's test files at different positions."""
    source = get_testdata_file(name)
    if source is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    paths = []
    for k in range(slices):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, 2.0 * k]
        ds.PixelSpacing = [1, 1]
        paths.append(folder / f"im{k}.dcm")
        ds.save_as(paths[-1])
    return paths


def decoder_available(name: str) -> bool:
    from pydicom.pixels import get_decoder

    ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
    try:
        return get_decoder(ds.file_meta.TransferSyntaxUID).is_available
    except NotImplementedError:
        return False


class TestReadDicomFolder:
    @pytest.mark.parametrize("name", sorted(AFFINES))
    def test_round_trip_volume_and_affine(self, tmp_path, name):
        vol = volume()
        write_dicom_series(tmp_path, vol, AFFINES[name], "AX T1")
        scan = read_dicom_folder(tmp_path, ["t1"])
        assert scan.data.dtype == np.float32
        assert scan.data.shape == (1, *SHAPE)
        np.testing.assert_array_equal(scan.data[0], vol)
        np.testing.assert_allclose(scan.affine, AFFINES[name], atol=1e-5)
        assert scan.modalities == ("t1",)

    @pytest.mark.parametrize(
        "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, RLELossless]
    )
    def test_transfer_syntaxes_round_trip(self, tmp_path, syntax):
        vol = volume((16, 12, 4))
        write_dicom_series(tmp_path, vol, AXIAL, "AX T1", transfer_syntax=syntax)
        scan = read_dicom_folder(tmp_path, ["t1"])
        np.testing.assert_array_equal(scan.data[0], vol)
        assert scan.source["series"][0]["transfer_syntax"] == str(syntax)

    def test_shuffled_files_are_ordered_by_position(self, tmp_path):
        vol = volume()
        files = write_dicom_series(tmp_path, vol, AFFINES["oblique"], "AX T1", shuffle=True, seed=3)
        numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
        assert numbers != sorted(numbers)
        assert [f.name for f in files] != sorted(f.name for f in files)
        scan = read_dicom_folder(tmp_path, ["t1"])
        np.testing.assert_array_equal(scan.data[0], vol)
        assert scan.reference["dicom"].series["t1"].files == tuple(str(f) for f in files)

    def test_rescale_is_applied_per_slice(self, tmp_path):
        vol = volume((16, 12, 4))
        files = write_dicom_series(tmp_path, vol, AXIAL, "AX T1", rescale=(0.5, -100.0))
        edit(files[2], RescaleSlope="2", RescaleIntercept="1")
        scan = read_dicom_folder(tmp_path, ["t1"])
        expected = vol * 0.5 - 100.0
        expected[:, :, 2] = vol[:, :, 2] * 2.0 + 1.0
        np.testing.assert_array_equal(scan.data[0], expected.astype(np.float32))

    @pytest.mark.parametrize("subfolders", [False, True])
    def test_study_mapped_by_descriptions(self, tmp_path, subfolders):
        data = np.stack([volume(seed=s) for s in range(4)])
        files = write_dicom_study(tmp_path, data, AXIAL, MODALITIES, subfolders=subfolders)
        scan = read_dicom_folder(tmp_path, ["flair", "t1", "t1ce", "t2"])
        assert scan.modalities == ("flair", "t1", "t1ce", "t2")
        np.testing.assert_array_equal(scan.data, data[[3, 0, 1, 2]])
        described = {s["modality"]: s["series_description"] for s in scan.source["series"]}
        assert described == {"t1": "AX T1", "t1ce": "AX T1 POST GD", "t2": "AX T2", "flair": "AX FLAIR"}
        assert scan.reference["dicom"].series["t1ce"].files == tuple(str(f) for f in files["t1ce"])

    def test_aliases_and_subset(self, tmp_path):
        data = np.stack([volume((16, 12, 4), seed=s) for s in range(4)])
        write_dicom_study(tmp_path, data, AXIAL, MODALITIES)
        scan = read_dicom_folder(tmp_path, ["T1Gd"])
        assert scan.modalities == ("t1ce",)
        np.testing.assert_array_equal(scan.data[0], data[1])

    def test_mapping_failure_lists_the_series(self, tmp_path):
        write_dicom_series(tmp_path / "a", volume((8, 8, 3)), AXIAL, "AX T1", seed=1, study_uid=STUDY)
        write_dicom_series(tmp_path / "b", volume((8, 8, 3)), AXIAL, "SAG T1 3D", seed=2, study_uid=STUDY)
        write_dicom_series(tmp_path / "c", volume((8, 8, 3)), AXIAL, "AX T2", seed=3, study_uid=STUDY)
        with pytest.raises(ModalityError, match=r"t1 matches 2 series.*'AX T1' \(3 images, uid [0-9a-f]{8}\)") as err:
            read_dicom_folder(tmp_path, ["t1", "t2", "flair"])
        message = str(err.value)
        assert "flair matches no series" in message and "'SAG T1 3D'" in message and "'AX T2'" in message
        assert "--series-rule" in message and "\n" not in message

    def test_custom_rules(self, tmp_path):
        vols = [volume((8, 8, 3), seed=s) for s in range(2)]
        write_dicom_series(tmp_path, vols[0], AXIAL, "SEQ_A_3D", seed=1, study_uid=STUDY)
        write_dicom_series(tmp_path, vols[1], AXIAL, "SEQ_B_3D", seed=2, study_uid=STUDY)
        scan = read_dicom_folder(tmp_path, ["t1", "t2"], rules={"t1": ["seq_a"], "T2w": "seq_b"})
        np.testing.assert_array_equal(scan.data, np.stack(vols))

    def test_missing_slice_is_reported(self, tmp_path):
        files = write_dicom_series(tmp_path, volume(), AXIAL, "AX T1")
        files[5].unlink()
        # slices lie at z = 5 + 2.5 k mm; slice 5 (17.5 mm) is gone
        with pytest.raises(ScanError, match=r"missing 1 slice\(s\) after slice 4 .*slice at 17\.50 mm is missing"):
            read_dicom_folder(tmp_path, ["t1"])
        files[6].unlink()
        with pytest.raises(ScanError, match=r"missing 2 slice\(s\) .*slices at 17\.50 to 20\.00 mm are missing"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_uneven_spacing(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 8, 5)), AXIAL, "AX T1")
        edit(files[2], ImagePositionPatient=[14.0, 20.0, 5.0 + 2.5 * 2 + 0.7])
        with pytest.raises(ScanError, match="uneven slice spacing"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_tiny_position_jitter_is_tolerated(self, tmp_path):
        vol = volume((8, 8, 5))
        files = write_dicom_series(tmp_path, vol, AXIAL, "AX T1")
        edit(files[2], ImagePositionPatient=[14.0, 20.0, 5.0 + 2.5 * 2 + 0.002])
        np.testing.assert_array_equal(read_dicom_folder(tmp_path, ["t1"]).data[0], vol)

    def test_inconsistent_orientation(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 8, 4)), AXIAL, "AX T1")
        edit(files[1], ImageOrientationPatient=[-1, 0, 0, 0, 0, -1])
        with pytest.raises(GeometryError, match="mixes slice orientations"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_duplicate_position(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 8, 4)), AXIAL, "AX T1")
        edit(files[2], ImagePositionPatient=pydicom.dcmread(files[1]).ImagePositionPatient)
        with pytest.raises(ScanError, match=r"are at the same position"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_duplicate_copy_of_a_file(self, tmp_path):
        files = write_dicom_series(tmp_path / "a", volume((8, 8, 4)), AXIAL, "AX T1")
        (tmp_path / "copy").mkdir()
        shutil.copy(files[1], tmp_path / "copy" / "again.dcm")
        with pytest.raises(ScanError, match=r"same instance \(same SOPInstanceUID\)"):
            read_dicom_folder(tmp_path, ["t1"])

    @pytest.mark.parametrize("keep", [0.2, 0.4, 0.9])
    def test_truncated_file_is_named(self, tmp_path, keep):
        files = write_dicom_series(tmp_path, volume((16, 12, 4)), AXIAL, "AX T1")
        data = files[2].read_bytes()
        files[2].write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(ScanError, match=rf"{files[2].name} is truncated"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_pydicom_truncated_test_file(self, tmp_path):
        series_from_testdata(tmp_path, "MR_small.dcm")
        shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "broken.dcm")
        with pytest.raises(ScanError, match=r"broken\.dcm is truncated: it has 8130 of the 8192 bytes"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_pixel_decode_error_names_the_file(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((16, 12, 4)), AXIAL, "AX T1")
        for f in files:  # the header now declares more pixels than the file holds
            edit(f, Rows=13)
        with pytest.raises(ScanError, match=r"cannot decode the pixels of [0-9a-f]{12}\.dcm .*less than expected"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_folder_without_dicom(self, tmp_path):
        (tmp_path / "notes.txt").write_text("not a scan")
        (tmp_path / "image.png").write_bytes(b"\x89PNG" + bytes(300))
        with pytest.raises(ScanError, match="no DICOM or NIfTI files found in"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_non_dicom_files_hidden_files_and_symlinked_folders_are_skipped(self, tmp_path, tmp_path_factory):
        vol = volume((8, 8, 4))
        write_dicom_series(tmp_path / "scan", vol, AXIAL, "AX T1")
        (tmp_path / "scan" / "README").write_text("exported by PACS")
        (tmp_path / "scan" / ".corrupt.dcm").write_bytes(bytes(128) + b"DICM" + b"\x02\x00")
        other = write_dicom_series(tmp_path_factory.mktemp("other"), vol, AXIAL, "AX T1 other")
        os.symlink(other[0].parent, tmp_path / "linked", target_is_directory=True)
        scan = read_dicom_folder(tmp_path, ["t1"])
        assert scan.source["series"][0]["series_description"] == "AX T1"

    def test_non_image_objects_only(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 8, 2)), AXIAL, "report")
        for f in files:
            ds = pydicom.dcmread(f)
            for keyword in ("Rows", "Columns", "PixelData"):
                delattr(ds, keyword)
            ds.Modality = "SR"
            ds.save_as(f)
        with pytest.raises(ScanError, match="found 2 DICOM files .* but no images"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_single_slice_is_too_few(self, tmp_path):
        write_dicom_series(tmp_path, volume((16, 12, 1)), AXIAL, "AX T1")
        with pytest.raises(ScanError, match="too few slices"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_huge_declared_size_refused_before_allocation(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((4, 4, 64)), AXIAL, "AX T1")
        for f in files:  # a real header that declares 65535 x 65535 pixels per slice
            edit(f, Rows=65535, Columns=65535, PixelData=bytes(32))
        tracemalloc.start()
        try:
            with pytest.raises(ScanError, match=r"65535x65535x64 volume .* more than this machine can hold"):
                read_dicom_folder(tmp_path, ["t1"])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50 * 2**20

    def test_size_checked_against_available_memory(self, tmp_path, monkeypatch):
        write_dicom_series(tmp_path, volume((32, 24, 12)), AXIAL, "AX T1")
        monkeypatch.setattr(scan_module, "available_memory_bytes", lambda: 4 * 32 * 24 * 12 * 2)
        with pytest.raises(ScanError, match="32x24x12 volume"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_implausible_bits_allocated(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 8, 3)), AXIAL, "AX T1")
        edit(files[1], BitsAllocated=12)
        with pytest.raises(ScanError, match=rf"{files[1].name} declares BitsAllocated 12"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_multi_frame_without_frame_positions_is_refused_clearly(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 8, 3)), AXIAL, "AX T1")
        edit(files[0], NumberOfFrames=3)
        with pytest.raises(ScanError, match="multi-frame .3 frames. with 0 per-frame functional groups"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_missing_geometry_names_the_file(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 8, 3)), AXIAL, "AX T1")
        ds = pydicom.dcmread(files[1])
        del ds.ImagePositionPatient
        ds.save_as(files[1])
        with pytest.raises(ScanError, match=rf"{files[1].name} has no ImagePositionPatient"):
            read_dicom_folder(tmp_path, ["t1"])

    @pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
    def test_compressed_syntax_decodes_or_names_the_fix(self, tmp_path, name):
        series_from_testdata(tmp_path, name)
        if decoder_available(name):
            scan = read_dicom_folder(tmp_path, ["t1"])
            reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
            np.testing.assert_array_equal(scan.data[0, :, :, 1], reference.T)
        else:
            syntax = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True).file_meta.TransferSyntaxUID
            pattern = rf"{re.escape(syntax.name)} \({re.escape(str(syntax))}\).*pip install 'edge-infer\[dicom-codecs\]'"
            with pytest.raises(UnsupportedTransferSyntaxError, match=pattern):
                read_dicom_folder(tmp_path, ["t1"])

    def test_jpeg_ls_without_decoder(self, tmp_path):
        if decoder_available("MR_small_jpeg_ls_lossless.dcm"):
            pytest.skip("a JPEG-LS decoder plugin is installed")
        series_from_testdata(tmp_path, "MR_small_jpeg_ls_lossless.dcm")
        with pytest.raises(UnsupportedTransferSyntaxError, match=r"JPEG-LS Lossless .*1\.2\.840\.10008\.1\.2\.4\.80"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_uninstalled_decoder_names_the_fix(self, tmp_path, monkeypatch):
        """Whatever is installed here: a decoder that is not available gives the install hint."""
        import pydicom.pixels

        class Unavailable:
            is_available = False

        series_from_testdata(tmp_path, "MR_small_jp2klossless.dcm")
        monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
        pattern = r"JPEG 2000 Image Compression \(Lossless Only\) \(1\.2\.840\.10008\.1\.2\.4\.90\).*dicom-codecs"
        with pytest.raises(UnsupportedTransferSyntaxError, match=pattern):
            read_dicom_folder(tmp_path, ["t1"])

    def test_syntax_without_any_decoder(self, tmp_path, monkeypatch):
        import pydicom.pixels

        def no_decoder(uid):
            raise NotImplementedError(f"No pixel data decoders have been implemented for '{uid}'")

        series_from_testdata(tmp_path, "MR_small_RLE.dcm")
        monkeypatch.setattr(pydicom.pixels, "get_decoder", no_decoder)
        with pytest.raises(UnsupportedTransferSyntaxError, match="RLE Lossless .*re-export the series uncompressed"):
            read_dicom_folder(tmp_path, ["t1"])

    def test_rle_decodes_natively(self, tmp_path):
        series_from_testdata(tmp_path, "MR_small_RLE.dcm")
        scan = read_dicom_folder(tmp_path, ["t1"])
        reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
        for k in range(3):
            np.testing.assert_array_equal(scan.data[0, :, :, k], reference.T)

    def test_source_has_no_patient_data(self, tmp_path):
        data = np.stack([volume((8, 8, 3), seed=s) for s in range(2)])
        files = write_dicom_study(
            tmp_path, data, AXIAL, ["t1", "flair"], patient_name="Qzx^Marker", patient_id="PID-98765"
        )
        scan = read_dicom_folder(tmp_path, ["t1", "flair"])
        text = json.dumps(scan.source)
        header = pydicom.dcmread(files["t1"][0])
        for secret in ("Qzx", "Marker", "PID-98765", "19700101", "ACC-TEST-123",
                       header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID,
                       header.FrameOfReferenceUID, str(tmp_path)):
            assert secret not in text
        assert scan.source["study_uid_sha256"] == uid_hash(header.StudyInstanceUID)
        assert scan.source["series"][0]["series_uid_sha256"] == uid_hash(header.SeriesInstanceUID)

    def test_reference_has_raw_uids_in_slice_order(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 8, 4)), AXIAL, "AX T1")
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        ref = read_dicom_folder(tmp_path, ["t1"]).reference["dicom"]
        assert ref.study_instance_uid == headers[0].StudyInstanceUID
        series = ref.series["t1"]
        assert series.series_instance_uid == headers[0].SeriesInstanceUID
        assert series.sop_instance_uids == tuple(h.SOPInstanceUID for h in headers)
        assert series.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4"
        assert series.frame_of_reference_uid == headers[0].FrameOfReferenceUID

    def test_executable_preamble_is_warned(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 8, 3)), AXIAL, "AX T1")
        data = bytearray(files[0].read_bytes())
        data[:4] = b"MZ\x90\x00"
        files[0].write_bytes(bytes(data))
        scan = read_dicom_folder(tmp_path, ["t1"])
        assert any("executable preamble" in w for w in scan.source["warnings"])

    def test_series_on_different_grids(self, tmp_path):
        data = np.stack([volume((8, 8, 3), seed=s) for s in range(2)])
        write_dicom_study(tmp_path / "a", data[:1], AXIAL, ["t1"], study_uid=STUDY)
        write_dicom_study(tmp_path / "b", data[1:], AFFINES["oblique"], ["t2"], study_uid=STUDY)
        with pytest.raises(GeometryError, match="t2 has a different affine"):
            read_dicom_folder(tmp_path, ["t1", "t2"])

    def test_series_from_different_studies(self, tmp_path):
        data = np.stack([volume((8, 8, 3), seed=s) for s in range(2)])
        write_dicom_study(tmp_path / "a", data[:1], AXIAL, ["t1"])
        write_dicom_study(tmp_path / "b", data[1:], AXIAL, ["t2"])
        with pytest.raises(ModalityError, match="different studies"):
            read_dicom_folder(tmp_path, ["t1", "t2"])

    def test_unknown_modality(self, tmp_path):
        write_dicom_series(tmp_path, volume((8, 8, 3)), AXIAL, "AX T1")
        with pytest.raises(ModalityError, match="unknown modality 'dwi'"):
            read_dicom_folder(tmp_path, ["dwi"])


class TestMapSeries:
    @pytest.mark.parametrize(
        "description, modality",
        [
            ("AX T1", "t1"), ("t1_mprage_sag", "t1"), ("T1 SPACE SAG", "t1"), ("AX T1 FLAIR", "t1"),
            ("AX T1 PRE GD", "t1"), ("T1 pre-contrast", "t1"), ("T1_SE_non_contrast", "t1"),
            ("AX T1 POST GD", "t1ce"), ("T1+C AX", "t1ce"), ("t1_mprage_sag_post", "t1ce"), ("T1C", "t1ce"),
            ("AX T1 FLAIR POST", "t1ce"), ("MPRAGE GAD", "t1ce"), ("CE T1 3D", "t1ce"),
            ("AX T2 FSE", "t2"), ("t2_tse_tra", "t2"), ("T2_FS", "t2"),
            ("AX FLAIR", "flair"), ("T2 FLAIR", "flair"), ("t2_tirm_tra_dark-fluid", "flair"), ("T2F", "flair"),
            ("T2* GRE", None), ("T2STAR", None), ("DWI b1000", None), ("3-plane loc", None),
        ],
    )
    def test_default_rules(self, description, modality):
        series = [SeriesInfo("1.2.3", description, "", 10), SeriesInfo("1.2.4", "other", "", 10)]
        wanted = modality or "t1"
        if modality is None:
            with pytest.raises(ModalityError, match="t1 matches no series"):
                map_series(series, [wanted])
        else:
            assert map_series(series, [wanted]) == {modality: series[0]}

    def test_protocol_name_when_description_does_not_match(self):
        series = [SeriesInfo("1.1", "", "AX_FLAIR", 5), SeriesInfo("1.2", "Series 3", "t1_se_tra", 5)]
        assert map_series(series, ["flair", "t1"]) == {"flair": series[0], "t1": series[1]}

    def test_single_series_single_modality_maps_directly(self):
        series = [SeriesInfo("1.1", "Research protocol 7", "", 5)]
        assert map_series(series, ["t2"]) == {"t2": series[0]}

    def test_user_rules_replace_and_precede_defaults(self):
        series = [SeriesInfo("1.1", "AX FLAIR", "", 5), SeriesInfo("1.2", "AX T2", "", 5)]
        mapped = map_series(series, ["t2", "flair"], rules={"t2": [r"^ax flair$"], "flair": [r"^ax t2$"]})
        assert mapped == {"t2": series[0], "flair": series[1]}

    def test_ambiguity_lists_series_with_hashes(self):
        series = [SeriesInfo("1.1", "AX T2", "", 5), SeriesInfo("1.2", "COR T2", "", 7)]
        h = SeriesInfo("1.2").short_hash
        with pytest.raises(ModalityError, match=rf"t2 matches 2 series .*'COR T2' \(7 images, uid {h}\)"):
            map_series(series, ["t2", "t1"])

    def test_invalid_rule(self):
        with pytest.raises(ModalityError, match=r"series rule 't1\(' for t1 is not a valid regular expression"):
            map_series([SeriesInfo("1.1", "x")], ["t1"], rules={"t1": ["t1("]})

    def test_rule_for_unknown_modality(self):
        with pytest.raises(ModalityError, match="series rule for unknown modality 'adc'"):
            map_series([SeriesInfo("1.1", "x")], ["t1"], rules={"adc": ["adc"]})

    def test_duplicate_request(self):
        with pytest.raises(ModalityError, match="requested twice"):
            map_series([SeriesInfo("1.1", "x")], ["t1", "T1w"])


class TestDicomAffine:
    def test_axial_identity_orientation(self):
        a = dicom_affine([1, 0, 0, 0, 1, 0], [0.5, 0.8], [10, 20, 30], [0, 0, 3])
        expected = np.array([[-0.8, 0, 0, -10], [0, -0.5, 0, -20], [0, 0, 3, 30], [0, 0, 0, 1]])
        np.testing.assert_allclose(a, expected)

    def test_row_cosine_goes_with_column_spacing(self):
        # PixelSpacing = [row spacing, column spacing]; i walks along the row cosine
        a = dicom_affine([0, 1, 0, 0, 0, -1], [2.0, 3.0], [0, 0, 0], [1, 0, 0])
        np.testing.assert_allclose(a[:3, 0], [0, -3.0, 0])
        np.testing.assert_allclose(a[:3, 1], [0, 0, -2.0])
        np.testing.assert_allclose(a[:3, 2], [-1.0, 0, 0])

    def test_matches_standard_equation(self):
        rng = np.random.default_rng(1)
        row, col = rotation(0.2, 0.4, -0.3)[:, 0], rotation(0.2, 0.4, -0.3)[:, 1]
        spacing, origin, step = [0.7, 1.3], rng.normal(size=3) * 50, np.array([0.1, 0.2, 2.0])
        a = dicom_affine(np.concatenate([row, col]), spacing, origin, step)
        i, j, k = 5, 7, 3
        lps = origin + i * spacing[1] * row + j * spacing[0] * col + k * step
        np.testing.assert_allclose(a @ [i, j, k, 1], [-lps[0], -lps[1], lps[2], 1])

    def test_bad_input(self):
        with pytest.raises(GeometryError, match="6 orientation cosines and 2 positive pixel spacings"):
            dicom_affine([1, 0, 0, 0, 1], [1, 1], [0, 0, 0], [0, 0, 1])
        with pytest.raises(GeometryError, match="has no length"):
            dicom_affine([0, 0, 0, 0, 1, 0], [1, 1], [0, 0, 0], [0, 0, 1])


class TestUidHash:
    def test_sha256_prefix(self):
        assert uid_hash("1.2.3") == hashlib.sha256(b"1.2.3").hexdigest()[:16]


class TestWriteDicomSeries:
    def test_files_are_mr_image_storage(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((8, 6, 3)), AXIAL, "AX T1", rescale=(2, 1))
        assert len(files) == 3
        for f in files:
            ds = pydicom.dcmread(f)
            assert ds.preamble == bytes(128)
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert (ds.Modality, ds.Rows, ds.Columns, ds.BitsAllocated) == ("MR", 6, 8, 16)
            assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (2.0, 1.0)

    def test_negative_determinant_is_refused(self, tmp_path):
        with pytest.raises(ValueError, match="positive determinant"):
            write_dicom_series(tmp_path, volume((4, 4, 2)), np.diag([-1.0, 1, 1, 1]), "AX T1")

    def test_unshuffled_names_and_numbers_follow_slices(self, tmp_path):
        files = write_dicom_series(tmp_path, volume((4, 4, 3)), AXIAL, "AX T1", shuffle=False)
        assert [f.name for f in files] == sorted(f.name for f in files)
        assert [int(pydicom.dcmread(f).InstanceNumber) for f in files] == [1, 2, 3]


class TestMultiFrame:
    """Enhanced / Legacy Converted Enhanced MR: one file per series, a plane per frame."""

    MODS = ("t1", "t1ce", "t2", "flair")

    def _study(self, root, rescale=None, oblique=False):
        aff = AFFINES["oblique"] if oblique else AXIAL
        data = np.stack([volume((10, 9, 6), seed=c) for c in range(4)])
        single = write_dicom_study(root / "single", data, aff, self.MODS, subfolders=True, rescale=rescale)
        for m, files in single.items():
            write_multiframe_series(root / "multi" / m, files)
        return root / "single", root / "multi"

    @pytest.mark.parametrize("rescale, oblique", [(None, False), ((2.0, -5.0), False), (None, True)])
    def test_same_scan_as_the_single_frame_series(self, tmp_path, rescale, oblique):
        single, multi = self._study(tmp_path, rescale, oblique)
        a, b = read_dicom_folder(single, self.MODS), read_dicom_folder(multi, self.MODS)
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
        assert [s["instances"] for s in b.source["series"]] == [6] * 4
        refs = b.reference["dicom"].series["t1"]
        assert len(set(refs.files)) == 1 and sorted(refs.frame_numbers) == [1, 2, 3, 4, 5, 6]

    def test_run_writes_the_same_mask_and_a_seg(self, tmp_path, model2d):
        """`edge-infer run` end to end: the multi-frame study gives the single-frame study's mask."""
        pytest.importorskip("highdicom")
        from edge_infer.options import ModelChoice, OutputSpec
        from edge_infer.run import run_case

        single, multi = self._study(tmp_path)
        a = run_case([single], OutputSpec(tmp_path / "a", name="x"), model=ModelChoice(model=model2d))
        b = run_case([multi], OutputSpec(tmp_path / "b", formats=("nifti", "seg"), name="x"),
                     model=ModelChoice(model=model2d))
        assert (tmp_path / "b" / "x_seg.dcm").is_file()
        assert np.array_equal(a.segmentation.labels, b.segmentation.labels)

    def test_frame_without_position_names_the_frame(self, tmp_path):
        _, multi = self._study(tmp_path)
        path = multi / "t2" / "enhanced.dcm"
        ds = pydicom.dcmread(path)
        del ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
        ds.save_as(path)
        with pytest.raises(ScanError, match="enhanced.dcm frame 4 has no ImagePositionPatient"):
            read_dicom_folder(multi, self.MODS)

    def test_frame_count_must_match_the_pixels(self, tmp_path):
        _, multi = self._study(tmp_path)
        path = multi / "flair" / "enhanced.dcm"
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        ds.save_as(path)
        with pytest.raises(ScanError, match="flair"):
            read_dicom_folder(multi, self.MODS)
