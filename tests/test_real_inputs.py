"""Inputs other software wrote (issue 14 items 2-4, 7-9): nibabel's and pydicom's test files,
and studies built from them, through the readers and the SEG writer."""

from __future__ import annotations

import gzip
import io
import logging
import re
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_factory import write_dicom_series, write_dicom_study, write_multiframe_series
from edge_infer.dicom import read_dicom_folder
from edge_infer.errors import OutputError, ScanError
from edge_infer.model import load_model
from edge_infer.report import provenance
from edge_infer.readers import read_scan

NICOM_DATA = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"
NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
MODALITIES = ("t1", "t1ce", "t2", "flair")
AXIAL = np.diag([0.9, 1.1, 2.5, 1.0])


def nicom_file(name: str) -> Path:
    """A file of nibabel's DICOM test data (skips when nibabel ships it no more)."""
    path = NICOM_DATA / name
    if not path.is_file():
        pytest.skip(f"nibabel's test file {name} is not installed")
    return path


def philips_study(folder: Path, descriptions=("T1", "T1 POST GD", "T2", "FLAIR")) -> Path:
    """nibabel's Philips Enhanced MR (per-frame PixelMeasures and PlaneOrientation), relabelled
    into one series per description."""
    raw = gzip.decompress(nicom_file("philips_mprage.dcm.gz").read_bytes())
    folder.mkdir(parents=True, exist_ok=True)
    for k, description in enumerate(descriptions):
        ds = pydicom.dcmread(io.BytesIO(raw))
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesDescription = description
        ds.save_as(folder / f"s{k}.dcm")
    return folder


def volume(shape=(12, 10, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, shape).astype(np.int16)


@pytest.fixture(scope="module")
def model(model2d):
    return load_model(model2d)


class TestReadDicomFolderMosaic:
    def test_siemens_mosaic_is_refused_in_one_line(self, tmp_path):
        for name in ("0.dcm", "1.dcm"):
            (tmp_path / name).write_bytes(nicom_file(name).read_bytes())
        with pytest.raises(ScanError, match=r"0\.dcm is a Siemens mosaic .*convert the series to NIfTI") as exc:
            read_dicom_folder(tmp_path, ["t1"])
        assert "\n" not in str(exc.value)

    def test_mosaic_in_an_unused_series_does_not_block(self, tmp_path):
        write_dicom_series(tmp_path / "t1", volume(), AXIAL, "AX T1")
        (tmp_path / "dti").mkdir()
        (tmp_path / "dti" / "0.dcm").write_bytes(nicom_file("0.dcm").read_bytes())
        scan = read_dicom_folder(tmp_path, ["t1"], rules={"t1": ["AX T1"]})
        assert scan.shape == (12, 10, 4)
        assert any("skipped 1 unusable DICOM file" in w and "mosaic" in w for w in scan.source["warnings"])


class TestReadDicomFolderUnusableFiles:
    def test_truncated_file_of_an_unused_series_is_skipped_with_a_warning(self, tmp_path):
        write_dicom_series(tmp_path / "t1", volume(), AXIAL, "AX T1")
        other = write_dicom_series(tmp_path / "dwi", volume(seed=1), AXIAL, "DWI b1000")
        data = other[1].read_bytes()
        other[1].write_bytes(data[: len(data) - 100])
        scan = read_dicom_folder(tmp_path, ["t1"])
        assert scan.shape == (12, 10, 4)
        [warning] = [w for w in scan.source["warnings"] if "skipped" in w]
        assert f"{other[1].name} is truncated" in warning

    def test_truncated_file_of_the_chosen_series_still_refuses(self, tmp_path):
        files = write_dicom_series(tmp_path, volume(), AXIAL, "AX T1")
        files[2].write_bytes(files[2].read_bytes()[:-100])
        with pytest.raises(ScanError, match=rf"{files[2].name} is truncated"):
            read_dicom_folder(tmp_path, ["t1"])


class TestReadDicomFolderListings:
    def test_multi_frame_files_are_counted_by_frames(self, tmp_path):
        files = write_dicom_series(tmp_path / "single", volume(), AXIAL, "AX T1")
        path = write_multiframe_series(tmp_path / "multi", files, "AX T1 MF")
        ds = pydicom.dcmread(path)
        del ds.PerFrameFunctionalGroupsSequence              # unusable: listed, not read
        ds.save_as(path)
        with pytest.raises(Exception, match=r"'AX T1 MF' \(4 frames in 1 file, uid \w+, unusable: enhanced\.dcm"):
            read_dicom_folder(tmp_path / "multi", ["t1", "t2"])


class TestReadDicomFolderWithoutPreamble:
    @pytest.mark.parametrize("keep_meta", [True, False])
    def test_dataset_without_preamble_is_read(self, tmp_path, keep_meta):
        files = write_dicom_series(tmp_path / "ref", volume(), AXIAL, "AX T1")
        (tmp_path / "bare").mkdir()
        for f in files:
            ds = pydicom.dcmread(f)
            out = io.BytesIO()
            if keep_meta:
                ds.save_as(out, enforce_file_format=True)
                data = out.getvalue()[132:]                   # file meta at byte 0, no preamble/DICM
            else:
                del ds.file_meta
                ds.preamble = None
                pydicom.dcmwrite(out, ds, implicit_vr=True, little_endian=True)
                data = out.getvalue()
            (tmp_path / "bare" / f.name).write_bytes(data)
        a, b = read_dicom_folder(tmp_path / "ref", ["t1"]), read_dicom_folder(tmp_path / "bare", ["t1"])
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_allclose(a.affine, b.affine)

    def test_other_files_are_still_ignored(self, tmp_path):
        (tmp_path / "notes.txt").write_text("not DICOM\n" * 20)
        with pytest.raises(ScanError, match="no DICOM or NIfTI files found"):
            read_dicom_folder(tmp_path, ["t1"])


class TestReadScanLooseNifti:
    def test_folder_of_nifti_without_modality_suffix_says_how_to_name_them(self, tmp_path):
        for name in ("example4d.nii.gz", "anatomical.nii"):
            (tmp_path / name).write_bytes((NIBABEL_DATA / name).read_bytes())
        with pytest.raises(ScanError, match=r"holds 2 NIfTI file\(s\) \(anatomical\.nii, example4d\.nii\.gz\) but "
                                            r"none is named by its modality.*case_t1\.nii\.gz.*--t1"):
            read_scan([tmp_path], ("t1",))


class TestLibraryMessagesWhileReading:
    def test_raw_uid_in_a_pydicom_warning_is_withheld(self, tmp_path, capfd, caplog):
        bad_uid = "1.2.826.0.1.3680043.8.498.BAD"
        write_dicom_series(tmp_path, volume(), AXIAL, "AX T1", study_uid=bad_uid)
        capfd.readouterr()
        caplog.clear()                                    # what writing the files printed
        with warnings.catch_warnings(record=True) as outside, caplog.at_level(logging.DEBUG):
            warnings.simplefilter("always")
            scan = read_dicom_folder(tmp_path, ["t1"])
        out, err = capfd.readouterr()
        shown = out + err + caplog.text + " ".join(str(w.message) for w in outside) + " ".join(scan.source["warnings"])
        assert "3680043" not in shown and "BAD" not in shown
        assert any("not valid for VR UI (value withheld)" in w for w in scan.source["warnings"])


class TestSegBytesRealWorld:
    def test_enhanced_mr_with_per_frame_measures_gets_a_seg(self, tmp_path, model):
        hd = pytest.importorskip("highdicom")
        from edge_infer.seg import seg_bytes

        scan = read_dicom_folder(philips_study(tmp_path / "study"), model.manifest.modalities)
        labels = np.zeros(scan.shape, np.uint8)
        labels[100:140, 90:120, 60:70] = 2
        labels[110:120, 100:110, 64] = 4
        seg = hd.seg.segread(io.BytesIO(seg_bytes(scan, labels, model.manifest, provenance(model))))
        grid = scan.reference["dicom"].series[scan.modalities[0]]
        for k in (60, 64, 69):
            px = seg.get_pixels_by_source_frame(grid.sop_instance_uids[0], [grid.frame_numbers[k]],
                                                combine_segments=True, assert_missing_frames_are_empty=True)[0]
            expected = {2: 2, 4: 3}                       # label value -> segment number
            back = np.zeros(labels.shape[:2], np.uint8)
            for value, number in expected.items():
                back[px.T == number] = value
            np.testing.assert_array_equal(back, labels[:, :, k])

    @pytest.mark.parametrize("name", ["DOE JOHN", "DOE^JOHN"])
    def test_patient_name_never_reaches_output(self, tmp_path, model, name, capfd, caplog):
        pytest.importorskip("highdicom")
        from edge_infer.seg import seg_bytes

        data = volume((4, 12, 10, 4))
        write_dicom_study(tmp_path, data, AXIAL, MODALITIES, patient_name=name)
        scan = read_dicom_folder(tmp_path, model.manifest.modalities)
        capfd.readouterr()
        caplog.clear()
        with warnings.catch_warnings(record=True) as outside, caplog.at_level(logging.DEBUG):
            warnings.simplefilter("always")
            seg_bytes(scan, np.zeros(scan.shape, np.uint8), model.manifest, provenance(model))
        out, err = capfd.readouterr()
        shown = out + err + caplog.text + " ".join(str(w.message) for w in outside)
        assert "DOE" not in shown and "JOHN" not in shown
        assert ("not in DICOM form FAMILY^GIVEN" in caplog.text) == ("^" not in name)


class TestCheckSegFeasible:
    def test_nifti_scan_is_refused(self, case_dir):
        pytest.importorskip("highdicom")
        from edge_infer.seg import NOT_DICOM, check_seg_feasible

        with pytest.raises(OutputError, match=re.escape(NOT_DICOM)):
            check_seg_feasible(read_scan([case_dir], MODALITIES))

    def test_series_split_over_two_multiframe_files_is_refused_before_inference(self, tmp_path):
        pytest.importorskip("highdicom")
        from edge_infer.seg import check_seg_feasible

        files = write_dicom_series(tmp_path / "single", volume((12, 10, 6)), AXIAL, "AX T1")
        write_multiframe_series(tmp_path / "multi", files[:3], name="a.dcm")
        write_multiframe_series(tmp_path / "multi", files[3:], name="b.dcm")
        for name in ("a.dcm", "b.dcm"):                   # one series over two files
            ds = pydicom.dcmread(tmp_path / "multi" / name)
            ds.SeriesInstanceUID = pydicom.dcmread(files[0]).SeriesInstanceUID
            ds.save_as(tmp_path / "multi" / name)
        scan = read_dicom_folder(tmp_path / "multi", ["t1"])
        with pytest.raises(OutputError, match="split over several multi-frame files"):
            check_seg_feasible(scan)

    def test_feasible_scan_gives_its_grid_modality(self, tmp_path):
        pytest.importorskip("highdicom")
        from edge_infer.seg import check_seg_feasible

        write_dicom_study(tmp_path, volume((2, 12, 10, 4)), AXIAL, ("t2", "flair"))
        scan = read_dicom_folder(tmp_path, ["flair", "t2"])
        ref, modality = check_seg_feasible(scan)
        assert modality == "flair" and set(ref.series) == {"t2", "flair"}
