"""Tests of edge_infer.seg: DICOM SEG from a label map, read back with highdicom, checked by dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_factory import write_dicom_study
from edge_infer.dicom import read_dicom_folder
from edge_infer.errors import OutputError
from edge_infer.model import load_model
from edge_infer.report import provenance
from edge_infer.seg import (
    NOT_DICOM,
    frames_from_labels,
    property_type,
    seg_bytes,
    segment_numbers,
)

hd = pytest.importorskip("highdicom")

MODALITIES = ("t1", "t1ce", "t2", "flair")
SHAPE = (32, 24, 12)
PATIENT_NAME = "Zyxq^Markername"


def _affine(kind: str) -> np.ndarray:
    if kind == "axial":
        a = np.diag([0.9, 1.1, 2.5, 1.0])
        a[:3, 3] = [-14.0, -20.0, 5.0]
        return a
    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.9, 1.1, 2.5])
    a[:3, 3] = [-50.5, 20.25, 7.125]
    return a


def _labels(shape=SHAPE, seed=3) -> np.ndarray:
    """A label map whose every slice differs (so a frame on the wrong slice is caught)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    for k in range(shape[2]):
        i0, j0 = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        labels[i0:i0 + 8, j0:j0 + 6, k] = 2
        labels[i0 + 2:i0 + 5, j0 + 1:j0 + 3, k] = 1
        labels[i0 + k % 7, j0 + 4, k] = 4
    labels[:, :, 3] = 0  # an empty slice: its frames are omitted
    return labels


@pytest.fixture(scope="module")
def model(model2d):
    return load_model(model2d)


@pytest.fixture(scope="module", params=["axial", "oblique"])
def dicom_scan(request, tmp_path_factory, model):
    folder = tmp_path_factory.mktemp(f"seg-{request.param}")
    data = np.random.default_rng(0).integers(0, 1000, (4, *SHAPE)).astype(np.int16)
    write_dicom_study(folder, data, _affine(request.param), MODALITIES, patient_name=PATIENT_NAME)
    return read_dicom_folder(folder, model.manifest.modalities)


def _seg(scan, labels, model):
    return hd.seg.segread(io.BytesIO(seg_bytes(scan, labels, model.manifest, provenance(model))))


class TestSegBytes:
    def test_round_trip_gives_the_same_mask_on_the_source_grid(self, dicom_scan, model):
        labels = _labels()
        seg = _seg(dicom_scan, labels, model)
        grid = dicom_scan.reference["dicom"].series[dicom_scan.modalities[0]]
        px = seg.get_pixels_by_source_instance(grid.sop_instance_uids, combine_segments=True,
                                               assert_missing_frames_are_empty=True)
        numbers = segment_numbers([1, 2, 4])
        back = np.zeros_like(labels)
        for value, number in numbers.items():
            back[np.transpose(px, (2, 1, 0)) == number] = value
        np.testing.assert_array_equal(back, labels)

    def test_each_frame_references_the_source_instance_of_its_slice(self, dicom_scan, model):
        labels = _labels()
        seg = _seg(dicom_scan, labels, model)
        grid = dicom_scan.reference["dicom"].series[dicom_scan.modalities[0]]
        positions = [pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient for f in grid.files]
        frames = seg.pixel_array
        frames = frames[None] if frames.ndim == 2 else frames
        by_number = {n: v for v, n in segment_numbers([1, 2, 4]).items()}
        seen = set()
        for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
            uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            k = grid.sop_instance_uids.index(uid)
            np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                       [float(v) for v in positions[k]], atol=1e-4)
            value = by_number[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
            np.testing.assert_array_equal(frames[f].astype(bool), labels[:, :, k].T == value)
            seen.add((k, value))
        expected = {(k, v) for k in range(SHAPE[2]) for v in (1, 2, 4) if np.any(labels[:, :, k] == v)}
        assert seen == expected

    def test_geometry_matches_the_scan_affine(self, dicom_scan, model):
        seg = _seg(dicom_scan, _labels(), model)
        src = [pydicom.dcmread(f, stop_before_pixels=True)
               for f in dicom_scan.reference["dicom"].series[dicom_scan.modalities[0]].files]
        shared = seg.SharedFunctionalGroupsSequence[0]
        np.testing.assert_allclose([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient],
                                   [float(v) for v in src[0].ImageOrientationPatient], atol=1e-6)
        np.testing.assert_allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                                   [float(v) for v in src[0].PixelSpacing], atol=1e-6)
        assert (seg.Rows, seg.Columns) == (SHAPE[1], SHAPE[0])

    def test_segments_are_coded(self, dicom_scan, model):
        seg = _seg(dicom_scan, _labels(), model)
        items = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
        assert sorted(items) == [1, 2, 3]
        types = {n: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for n, s in items.items()}
        assert types == {1: "6574001", 2: "79654002", 3: "108369006"}
        for s in items.values():
            assert s.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
            assert s.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
            assert s.AnatomicRegionSequence[0].CodeValue == "12738006"
            assert s.SegmentAlgorithmType == "AUTOMATIC"
            algo = s.SegmentationAlgorithmIdentificationSequence[0]
            assert algo.AlgorithmName == model.manifest.name
            assert algo.AlgorithmVersion == model.manifest.version
            assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
            assert f"model_sha256={model.artifact.sha256}" in algo.AlgorithmParameters

    def test_references_all_input_series_and_keeps_the_study(self, dicom_scan, model):
        seg = _seg(dicom_scan, _labels(), model)
        ref = dicom_scan.reference["dicom"]
        assert seg.StudyInstanceUID == ref.study_instance_uid
        referenced = {item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence}
        assert referenced == {s.series_instance_uid for s in ref.series.values()}
        assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"

    def test_zero_preamble_and_part10(self, dicom_scan, model):
        data = seg_bytes(dicom_scan, _labels(), model.manifest, provenance(model))
        assert data[:128] == b"\0" * 128 and data[128:132] == b"DICM"

    def test_uids_depend_on_sources_and_model_only(self, dicom_scan, model):
        prov = provenance(model)
        a = pydicom.dcmread(io.BytesIO(seg_bytes(dicom_scan, _labels(), model.manifest, prov)))
        b = pydicom.dcmread(io.BytesIO(seg_bytes(dicom_scan, _labels(seed=9), model.manifest, prov)))
        c = pydicom.dcmread(io.BytesIO(seg_bytes(dicom_scan, _labels(), model.manifest, {**prov, "model_sha256": "0" * 64})))
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
        assert a.SOPInstanceUID != c.SOPInstanceUID
        assert a.SOPInstanceUID != a.SeriesInstanceUID

    def test_empty_mask_still_writes_a_valid_seg(self, dicom_scan, model):
        seg = _seg(dicom_scan, np.zeros(SHAPE, np.uint8), model)
        assert int(seg.NumberOfFrames) >= 1
        assert not seg.pixel_array.any()


    def test_source_headers_read_ahead_give_the_same_seg(self, dicom_scan, model):
        from edge_infer.dicom.cache import ParseCache

        cache = ParseCache()
        files = [f for s in dicom_scan.reference["dicom"].series.values() for f in s.files]
        for f in files:
            cache.prefetch(Path(f))
        asked = []

        def source_headers(f):
            asked.append(f)
            return cache.source_header(f)

        labels, prov = _labels(), provenance(model)
        cold = pydicom.dcmread(io.BytesIO(seg_bytes(dicom_scan, labels, model.manifest, prov)))
        warm = pydicom.dcmread(io.BytesIO(seg_bytes(dicom_scan, labels, model.manifest, prov, source_headers)))
        assert sorted(asked) == sorted(files) and all(cache.source_header(f) is not None for f in files)
        assert _attributes(warm) == _attributes(cold)


def _attributes(ds, prefix: str = "") -> dict:
    """Every attribute of a dataset, sequences flattened, but those that change from one write to
    the next (creation date and time, highdicom's random DimensionOrganizationUID)."""
    varying = ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
               "DimensionOrganizationUID")
    out = {}
    for elem in ds:
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                out.update(_attributes(item, f"{prefix}{elem.keyword}[{i}]."))
        elif elem.keyword not in varying:
            out[prefix + (elem.keyword or str(elem.tag))] = elem.value
    return out


class TestSegBytesRefuses:
    def test_nifti_input(self, case_dir, model):
        from edge_infer.readers import read_scan

        scan = read_scan([case_dir], model.manifest.modalities)
        with pytest.raises(OutputError, match="DICOM SEG needs DICOM input .*use --format nifti"):
            seg_bytes(scan, np.zeros(scan.shape, np.uint8), model.manifest, provenance(model))
        assert str(OutputError(NOT_DICOM)) == NOT_DICOM

    def test_wrong_shape(self, dicom_scan, model):
        with pytest.raises(OutputError, match="label map is"):
            seg_bytes(dicom_scan, np.zeros((2, 2, 2), np.uint8), model.manifest, provenance(model))

    def test_unlisted_label_value(self, dicom_scan, model):
        labels = _labels()
        labels[0, 0, 0] = 7
        with pytest.raises(OutputError, match=r"values \[7\]"):
            seg_bytes(dicom_scan, labels, model.manifest, provenance(model))

    def test_missing_highdicom_names_the_extra(self, dicom_scan, model, monkeypatch):
        monkeypatch.setitem(sys.modules, "highdicom", None)
        with pytest.raises(OutputError, match=r"pip install 'edge-infer\[dicom\]'"):
            seg_bytes(dicom_scan, _labels(), model.manifest, provenance(model))


class TestDciodvfy:
    def test_no_errors(self, dicom_scan, model, tmp_path):
        assert_dciodvfy_clean(seg_bytes(dicom_scan, _labels(), model.manifest, provenance(model)), tmp_path)


def assert_dciodvfy_clean(data: bytes, tmp_path) -> None:
    """dicom3tools' validator reports no error on the SEG ``data``."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    path = tmp_path / "seg.dcm"
    path.write_bytes(data)
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert not [line for line in text.splitlines() if "Error" in line], text


@pytest.fixture(scope="module")
def multiframe_scan(tmp_path_factory, model):
    """The oblique study as Legacy Converted Enhanced MR: one multi-frame file per series."""
    from dicom_factory import write_multiframe_series

    folder = tmp_path_factory.mktemp("seg-multiframe")
    data = np.random.default_rng(0).integers(0, 1000, (4, *SHAPE)).astype(np.int16)
    single = write_dicom_study(folder / "single", data, _affine("oblique"), MODALITIES, subfolders=True)
    for m, files in single.items():
        write_multiframe_series(folder / "multi" / m, files)
    return read_dicom_folder(folder / "multi", model.manifest.modalities)


class TestMultiFrameSource:
    def test_round_trip_by_frame_of_the_source(self, multiframe_scan, model):
        labels = _labels()
        seg = _seg(multiframe_scan, labels, model)
        grid = multiframe_scan.reference["dicom"].series[multiframe_scan.modalities[0]]
        uid = grid.sop_instance_uids[0]
        numbers = segment_numbers([1, 2, 4])
        for k, frame in enumerate(grid.frame_numbers):          # slice k is frame `frame` of the source
            px = seg.get_pixels_by_source_frame(uid, [frame], combine_segments=True,
                                                assert_missing_frames_are_empty=True)[0]
            back = np.zeros(labels.shape[:2], np.uint8)
            for value, number in numbers.items():
                back[px.T == number] = value
            np.testing.assert_array_equal(back, labels[:, :, k])

    def test_series_split_over_two_multiframe_files_reads_but_refuses_a_seg(self, tmp_path, model):
        """Two multi-frame files of one series: the scan reads (same voxels as single-frame),
        the SEG is refused in one line, and a run writes nothing."""
        from dicom_factory import write_multiframe_series
        from edge_infer.options import OutputSpec
        from edge_infer.run import run_case

        data = np.random.default_rng(1).integers(0, 1000, (4, *SHAPE)).astype(np.int16)
        single = write_dicom_study(tmp_path / "single", data, _affine("axial"), MODALITIES, subfolders=True)
        for m, files in single.items():
            half = len(files) // 2
            write_multiframe_series(tmp_path / "multi" / m, files[:half], name="a.dcm")
            write_multiframe_series(tmp_path / "multi" / m, files[half:], name="b.dcm")
        scan = read_dicom_folder(tmp_path / "multi", model.manifest.modalities)
        np.testing.assert_array_equal(scan.data, read_dicom_folder(tmp_path / "single", model.manifest.modalities).data)
        with pytest.raises(OutputError, match="split over several multi-frame files.*--format nifti"):
            seg_bytes(scan, _labels(), model.manifest, provenance(model))
        with pytest.raises(OutputError, match="split over several multi-frame files"):
            run_case([tmp_path / "multi"], OutputSpec(tmp_path / "out", formats=("nifti", "seg")), loaded=model)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    def test_dciodvfy_has_no_errors(self, multiframe_scan, model, tmp_path):
        assert_dciodvfy_clean(seg_bytes(multiframe_scan, _labels(), model.manifest, provenance(model)), tmp_path)


class TestPureFunctions:
    def test_segment_numbers_ascend_with_label_value(self):
        assert segment_numbers([2, 1, 4]) == {1: 1, 2: 2, 4: 3}

    def test_frames_from_labels_transposes_slices(self):
        labels = np.zeros((3, 2, 2), np.uint8)
        labels[2, 1, 1] = 4
        frames = frames_from_labels(labels, {4: 3})
        assert frames.shape == (2, 2, 3)
        assert frames[1, 1, 2] == 3 and frames.sum() == 3

    @pytest.mark.parametrize("name,code", [("necrotic core", "6574001"), ("edema", "79654002"),
                                           ("Peritumoral oedema", "79654002"),
                                           ("enhancing tumour", "108369006"), ("something", "52988006")])
    def test_property_type(self, name, code):
        assert property_type(name).value == code


class TestContributingEquipment:
    """IHE AI Results: the SEG names the model in ContributingEquipmentSequence."""

    def test_names_the_model_version_and_sha256(self, dicom_scan, model):
        seg = _seg(dicom_scan, _labels(), model)
        [item] = seg.ContributingEquipmentSequence
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert item.ManufacturerModelName == model.manifest.name
        assert f"{model.manifest.name} {model.manifest.version}" in list(item.SoftwareVersions)
        assert item.DeviceSerialNumber == model.artifact.sha256
        assert model.artifact.sha256 in item.ContributionDescription
