"""Tests of edge_infer.nifti and readers.read_scan: the NIfTI layouts and their bad inputs."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from phantom_helpers import stack
from edge_infer.errors import GeometryError, ModalityError, ScanError
from edge_infer import nifti
from edge_infer.nifti import files_by_modality, load_header, modality_from_name, read_nifti_4d
from edge_infer.readers import read_scan

MODS = ("t1", "t1ce", "t2", "flair")


def save(path, data, affine=None, dtype=np.int16):
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), np.eye(4) if affine is None else affine), path)
    return path


class TestGzipPaths:
    """igzip and nibabel give the same float32 voxels, whatever the stored type and scaling."""

    @pytest.mark.parametrize("dtype, slope, inter, endian", [
        (np.int16, 1.0, 0.0, "<"), (np.int16, 2.5, -10.0, "<"), (np.uint8, 1.0, 0.0, "<"),
        (np.float32, 1.0, 0.0, "<"), (np.int16, 1.0, 0.0, ">"), (np.float64, 1.0, 0.0, ">")])
    def test_same_voxels_as_nibabel(self, tmp_path, gzip_impl, dtype, slope, inter, endian):
        data = np.random.default_rng(4).integers(0, 200, (20, 18, 12)).astype(dtype)
        img = nib.Nifti1Image(data, np.eye(4))
        img.header.set_data_dtype(np.dtype(dtype).newbyteorder(endian))
        img.header.set_slope_inter(slope, inter)
        path = tmp_path / "a_t1.nii.gz"
        nib.save(img, path)
        got = read_scan([path], ("t1",)).data[0]
        want = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        assert got.dtype == np.float32 and np.array_equal(got, want)
        assert (nib.load(path).dataobj.slope, nib.load(path).dataobj.inter) == (slope, inter)


    @pytest.mark.parametrize("dtype, slope, inter", [
        ("<i2", 1.0, 0.0), ("<i2", 2.5, -10.0), (">i2", 1.0, 0.0), ("u1", 1.0, 0.0), ("<u2", 1.0, 0.0),
        ("<i4", 1.0, 0.0), ("<f4", 1.0, 0.0)])
    def test_streamed_in_slabs(self, tmp_path, monkeypatch, gzip_impl, dtype, slope, inter):
        """Several slabs per file (one buffer reused): the same voxels, and moments equal to
        those of the whole channel (taken on the raw slab for small integers)."""
        from edge_infer import moments as M

        monkeypatch.setattr(M, "SLAB_BYTES", 4 * 20 * 18 * 3)       # 3 planes per slab, 12 planes
        data = np.random.default_rng(5).integers(0 if "u" in dtype else -50, 200, (20, 18, 12))
        data[:, :, 2] = 0
        img = nib.Nifti1Image(data.astype(dtype), np.eye(4))
        img.header.set_data_dtype(np.dtype(dtype))
        img.header.set_slope_inter(slope, inter)
        nib.save(img, tmp_path / "a_t1.nii.gz")
        scan = read_scan([], ("t1",), by_modality={"t1": tmp_path / "a_t1.nii.gz"})   # the per-file reader
        want = np.asarray(nib.load(tmp_path / "a_t1.nii.gz").dataobj, dtype=np.float32)
        assert np.array_equal(scan.data[0], want)
        assert scan.moments == (M.moments_of(scan.data[0]),)

    def test_truncated_mid_volume(self, tmp_path, gzip_impl):
        data = np.random.default_rng(6).integers(0, 200, (40, 40, 30)).astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a_t1.nii")
        raw = (tmp_path / "a_t1.nii").read_bytes()
        (tmp_path / "b_t1.nii.gz").write_bytes(gzip.compress(raw[:len(raw) * 2 // 3]))
        with pytest.raises(ScanError, match="b_t1.nii.gz is truncated or corrupt"):
            read_scan([], ("t1",), by_modality={"t1": tmp_path / "b_t1.nii.gz"})


class TestMoments:
    def test_reader_moments_are_those_of_its_voxels(self, case_dir, gzip_impl):
        from edge_infer.moments import moments_of

        scan = read_scan([case_dir], MODS)
        assert scan.moments == tuple(moments_of(scan.data[c]) for c in range(len(MODS)))
        again = scan.select(("flair", "t1"))
        assert again.moments == (scan.moments[3], scan.moments[0])

    def test_prepared_volume_same_with_and_without_them(self, case_dir):
        from edge_infer.prepare import prepare

        scan = read_scan([case_dir], MODS)
        a = prepare(scan.data, scan.affine, "RAS", (1.0, 1.0, 1.0), "zscore_nonzero", slice_axis=2, moments=scan.moments)
        b = prepare(scan.data, scan.affine, "RAS", (1.0, 1.0, 1.0), "zscore_nonzero", slice_axis=2)
        assert np.array_equal(a.data, b.data)


class TestModalityFromName:
    @pytest.mark.parametrize("name, mod", [("BraTS20_001_t1ce.nii.gz", "t1ce"), ("a_T1.nii", "t1"),
                                          ("x-flair.nii.gz", "flair"), ("case_t1c.nii.gz", "t1ce"),
                                          ("case_seg.nii.gz", None), ("plain.nii.gz", None)])
    def test_names(self, tmp_path, name, mod):
        assert modality_from_name(tmp_path / name) == mod


class TestReadScan:
    def test_brats_folder(self, case_dir, phantom):
        scan = read_scan([case_dir], MODS)
        images, _, affine = phantom
        assert scan.data.shape == (4, 64, 64, 32) and scan.data.dtype == np.float32
        assert np.allclose(scan.affine, affine)
        assert np.allclose(scan.data[3], np.round(images["flair"]), atol=1)
        assert scan.source["layout"] == "brats-folder"

    def test_files_in_any_order(self, case_dir):
        files = sorted(case_dir.glob("*_t*.nii.gz")) + sorted(case_dir.glob("*_flair.nii.gz"))
        a = read_scan(files[::-1], MODS)
        b = read_scan([case_dir], MODS)
        assert np.array_equal(a.data, b.data) and a.modalities == MODS

    def test_explicit_flags(self, case_dir):
        by = {m: case_dir / f"case_{m}.nii.gz" for m in MODS}
        scan = read_scan([], ("flair", "t1"), by_modality=by)
        assert scan.modalities == ("flair", "t1")

    def test_4d(self, tmp_path, case_dir, phantom):
        ref = read_scan([case_dir], MODS)
        path = save(tmp_path / "all.nii.gz", np.moveaxis(ref.data, 0, -1), ref.affine)
        scan = read_scan([path], MODS)
        assert np.array_equal(scan.data, ref.data)

    def test_4d_wrong_count(self, tmp_path):
        path = save(tmp_path / "three.nii.gz", np.ones((8, 8, 8, 3)))
        with pytest.raises(ModalityError, match="holds 3 volumes on its 4th axis but the model needs 4"):
            read_scan([path], MODS)

    def test_single_3d_for_four_modality_model(self, tmp_path):
        path = save(tmp_path / "x_flair.nii.gz", np.ones((8, 8, 8)))
        with pytest.raises(ModalityError, match=r"one volume \(flair\) but the model needs 4"):
            read_scan([path], MODS)

    def test_missing_modality(self, tmp_path, case_dir):
        for m in ("t1", "t1ce", "t2"):
            shutil.copy(case_dir / f"case_{m}.nii.gz", tmp_path)
        with pytest.raises(ModalityError, match="lacks flair"):
            read_scan([tmp_path], MODS)

    def test_duplicate_modality(self, tmp_path, case_dir):
        with pytest.raises(ModalityError, match="given twice"):
            files_by_modality([case_dir / "case_t1.nii.gz", tmp_path / "other_t1.nii.gz"])

    def test_extra_unknown_file(self, tmp_path, case_dir):
        (tmp_path / "notes.nii.gz").write_bytes(b"")
        with pytest.raises(ModalityError, match="cannot tell the modality of notes.nii.gz"):
            read_scan([case_dir / "case_t1.nii.gz", tmp_path / "notes.nii.gz"], MODS)

    def test_different_grids(self, tmp_path, case_dir):
        for m in MODS:
            shutil.copy(case_dir / f"case_{m}.nii.gz", tmp_path)
        img = nib.load(tmp_path / "case_t2.nii.gz")
        save(tmp_path / "case_t2.nii.gz", np.asarray(img.dataobj)[:, :, :30], img.affine)
        with pytest.raises(GeometryError, match="t2 is 64x64x30 but [a-z0-9]+ is 64x64x32"):
            read_scan([tmp_path], MODS)

    def test_different_affines(self, tmp_path, case_dir):
        for m in MODS:
            shutil.copy(case_dir / f"case_{m}.nii.gz", tmp_path)
        img = nib.load(tmp_path / "case_flair.nii.gz")
        aff = img.affine.copy()
        aff[0, 3] += 5
        save(tmp_path / "case_flair.nii.gz", np.asarray(img.dataobj), aff)
        with pytest.raises(GeometryError, match="modalities are not on one grid: flair has a different affine"):
            read_scan([tmp_path], MODS)

    def test_missing_path(self, tmp_path):
        with pytest.raises(ScanError, match="does not exist"):
            read_scan([tmp_path / "nope.nii.gz"], MODS)

    def test_no_input(self):
        with pytest.raises(ScanError, match="no input given"):
            read_scan([], MODS)


class TestBadFiles:
    def test_empty(self, tmp_path):
        (tmp_path / "a.nii.gz").write_bytes(b"")
        with pytest.raises(ScanError, match="is empty"):
            load_header(tmp_path / "a.nii.gz")

    def test_not_nifti(self, tmp_path):
        (tmp_path / "a.nii").write_bytes(b"hello" * 100)
        with pytest.raises(ScanError, match="not a readable NIfTI"):
            load_header(tmp_path / "a.nii")

    def test_other_extension(self, tmp_path):
        (tmp_path / "scan.txt").write_text("x")
        with pytest.raises(ScanError, match="neither NIfTI"):
            read_nifti_4d(tmp_path / "scan.txt", ("t1",))

    def test_truncated_uncompressed(self, tmp_path):
        path = save(tmp_path / "a_t1.nii", np.ones((16, 16, 16)))
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        with pytest.raises(ScanError, match="truncated: its header declares"):
            read_scan([path], ("t1",))

    def test_truncated_gzip(self, tmp_path, gzip_impl):
        path = save(tmp_path / "a_t1.nii.gz", np.random.default_rng(0).integers(0, 1000, (32, 32, 32)))
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        with pytest.raises(ScanError, match="truncated or corrupt"):
            read_scan([path], ("t1",))

    def test_nan(self, tmp_path):
        data = np.ones((8, 8, 8), np.float32)
        data[1, 2, 3] = np.nan
        data[2, 2, 3] = np.inf
        path = save(tmp_path / "a_t1.nii.gz", data, dtype=np.float32)
        with pytest.raises(ScanError, match="modality t1 has 2 NaN or infinite voxels"):
            read_scan([path], ("t1",))

    def test_single_2d_image(self, tmp_path):
        path = save(tmp_path / "a_t1.nii.gz", np.ones((64, 64, 1)))
        with pytest.raises(ScanError, match="too few slices"):
            read_scan([path], ("t1",))

    def test_huge_header_refused_before_allocating(self, tmp_path):
        """A 2^15 cube header on a tiny file: refused from the header alone."""
        hdr = nib.Nifti1Header()
        hdr.set_data_shape((32767, 32767, 32767))
        hdr.set_data_dtype(np.int16)
        path = tmp_path / "bomb_t1.nii"
        with open(path, "wb") as f:
            f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 1024)
        with pytest.raises(ScanError, match="more than this machine can hold"):
            read_scan([path], ("t1",))

    def test_gzip_bomb_header(self, tmp_path, gzip_impl):
        hdr = nib.Nifti1Header()
        hdr.set_data_shape((4000, 4000, 4000))
        hdr.set_data_dtype(np.uint8)
        path = tmp_path / "bomb_t1.nii.gz"
        with gzip.open(path, "wb") as f:
            f.write(hdr.binaryblock + b"\0" * 4)
            f.write(b"\0" * (1 << 20))
        with pytest.raises(ScanError, match="more than this machine can hold"):
            read_scan([path], ("t1",))


class TestReadScanNonFinite:
    """NaN/Inf voxels are refused at any size: here a volume of full BraTS in-plane size that
    the per-file reader takes in several slabs (4 planes of 240x240 float32 per 1 MiB slab),
    with the bad patch in a middle slab only (a NaN once vanished in the slabs' merge)."""

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
    def test_nan_or_inf_patch_in_a_middle_slab(self, tmp_path, gzip_impl, bad):
        from edge_infer.moments import slabs

        data = np.random.default_rng(7).uniform(1, 900, (240, 240, 12)).astype(np.float32)
        data[100:103, 80:82, 6] = bad
        ranges = slabs(12, 240 * 240)
        assert len(ranges) >= 3 and 6 not in range(12)[ranges[0]] and 6 not in range(12)[ranges[-1]]
        path = save(tmp_path / "a_t1.nii.gz", data, dtype=np.float32)
        with pytest.raises(ScanError, match="modality t1 has 6 NaN or infinite voxels"):
            read_scan([], ("t1",), by_modality={"t1": path})
