"""The parse cache: headers and pixels parsed ahead give the scan a cold read gives (issue 16)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import write_dicom_study

from edge_infer.dicom import cache as cache_module, read_dicom_folder
from edge_infer.dicom.cache import ParseCache
from edge_infer.dicom.headers import candidate_files
from edge_infer.errors import ScanError

MODALITIES = ("t1", "t2")
SHAPE = (12, 10, 6)
SLICE_BYTES = SHAPE[0] * SHAPE[1] * 2          # int16


def write_study(folder: Path, seed: int = 0) -> dict[str, list[Path]]:
    data = np.random.default_rng(seed).integers(0, 1000, (len(MODALITIES), *SHAPE)).astype(np.int16)
    return write_dicom_study(folder, data, np.diag([1.0, 1.0, 2.0, 1.0]), MODALITIES, subfolders=True)


def prefetched(folder: Path, **kw) -> ParseCache:
    cache = ParseCache(**kw)
    for path in candidate_files(folder):
        cache.prefetch(path)
    return cache


def entry_bytes(path: Path) -> int:
    """What one file costs in a cache of its own."""
    cache = ParseCache()
    cache.prefetch(path)
    return cache.cached_bytes


def replace(path: Path, **attributes) -> None:
    """Rewrite a file with new attributes the way the spool does: a new file renamed over it."""
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    tmp = path.with_name(".tmp-" + path.name)
    ds.save_as(tmp)
    os.replace(tmp, path)


def count_decodes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = cache_module.decode_pixels

    def counting(inst):
        calls.append(inst.path)
        return real(inst)

    monkeypatch.setattr(cache_module, "decode_pixels", counting)
    return calls


def same_scan(a, b) -> bool:
    return (np.array_equal(a.data, b.data) and np.array_equal(a.affine, b.affine) and a.source == b.source
            and a.reference == b.reference and a.modalities == b.modalities)


class TestReadDicomFolderWithCache:
    def test_same_scan_as_a_cold_read_without_decoding_again(self, tmp_path, monkeypatch):
        write_study(tmp_path)
        cache = prefetched(tmp_path)
        calls = count_decodes(monkeypatch)
        warm = read_dicom_folder(tmp_path, MODALITIES, cache=cache)
        assert calls == []
        assert same_scan(warm, read_dicom_folder(tmp_path, MODALITIES))

    def test_file_replaced_after_caching_is_read_again(self, tmp_path, monkeypatch):
        files = write_study(tmp_path)
        cache = prefetched(tmp_path)
        target = files["t2"][3]
        ds = pydicom.dcmread(target)
        replace(target, PixelData=(ds.pixel_array + 7).astype(np.int16).tobytes())
        calls = count_decodes(monkeypatch)
        warm = read_dicom_folder(tmp_path, MODALITIES, cache=cache)
        assert calls == [target]
        cold = read_dicom_folder(tmp_path, MODALITIES)
        assert same_scan(warm, cold) and cold.data[1, :, :, 3].sum() != 0

    def test_file_removed_after_caching_is_missed(self, tmp_path):
        files = write_study(tmp_path)
        cache = prefetched(tmp_path)
        files["t1"][2].unlink()
        with pytest.raises(ScanError, match="missing"):
            read_dicom_folder(tmp_path, MODALITIES, cache=cache)

    def test_file_corrupted_after_caching_gives_the_cold_message(self, tmp_path):
        files = write_study(tmp_path)
        cache = prefetched(tmp_path)
        target = files["t1"][1]
        tmp = target.with_name(".tmp")
        tmp.write_bytes(target.read_bytes()[:400])
        os.replace(tmp, target)
        with pytest.raises(ScanError) as cold:
            read_dicom_folder(tmp_path, MODALITIES)
        with pytest.raises(ScanError, match="missing 1 slice") as warm:
            read_dicom_folder(tmp_path, MODALITIES, cache=cache)
        assert str(warm.value) == str(cold.value)

    def test_file_that_failed_to_parse_gives_the_cold_message(self, tmp_path):
        files = write_study(tmp_path)
        files["t2"][0].write_bytes(files["t2"][0].read_bytes()[:300])
        cache = prefetched(tmp_path)
        with pytest.raises(ScanError) as cold:
            read_dicom_folder(tmp_path, MODALITIES)
        with pytest.raises(ScanError, match=files["t2"][0].name) as warm:
            read_dicom_folder(tmp_path, MODALITIES, cache=cache)
        assert str(warm.value) == str(cold.value)


class TestPrefetch:
    def test_parses_a_file_once_until_it_changes(self, tmp_path):
        files = write_study(tmp_path)
        cache = ParseCache()
        path = files["t1"][0]
        assert [cache.prefetch(path), cache.prefetch(path)] == [True, False]
        replace(path, SeriesDescription="AX T1 again")
        assert cache.prefetch(path) is True
        assert cache.parse_file(path)[1][0].description == "AX T1 again"

    def test_byte_cap_is_honoured(self, tmp_path, monkeypatch):
        files = write_study(tmp_path)
        per_file = entry_bytes(files["t1"][0])
        assert per_file >= SLICE_BYTES
        cache = prefetched(tmp_path, max_bytes=3 * per_file + 1)
        assert len(cache) == 2 * SHAPE[2] and cache.cached_bytes == 3 * per_file
        calls = count_decodes(monkeypatch)
        warm = read_dicom_folder(tmp_path, MODALITIES, cache=cache)
        assert len(calls) == 2 * SHAPE[2] - 3
        assert same_scan(warm, read_dicom_folder(tmp_path, MODALITIES))

    def test_no_room_keeps_headers_only(self, tmp_path):
        write_study(tmp_path)
        cache = prefetched(tmp_path, max_bytes=0)
        assert len(cache) == 2 * SHAPE[2] and cache.cached_bytes == 0

    def test_file_a_library_warns_about_is_left_to_the_read(self, tmp_path, capfd):
        bad_uid = "1.2.826.0.1.3680043.8.498.BAD"
        data = np.ones((1, *SHAPE), dtype=np.int16)
        write_dicom_study(tmp_path, data, np.eye(4), ("t1",), study_uid=bad_uid)
        capfd.readouterr()
        cache = prefetched(tmp_path)
        out, err = capfd.readouterr()
        assert "3680043" not in out + err and cache.cached_bytes == 0
        warm = read_dicom_folder(tmp_path, ("t1",), cache=cache)
        assert any("not valid for VR UI (value withheld)" in w for w in warm.source["warnings"])
        assert warm.source["warnings"] == read_dicom_folder(tmp_path, ("t1",)).source["warnings"]

    def test_gone_file_is_not_parsed(self, tmp_path):
        assert ParseCache().prefetch(tmp_path / "nothing.dcm") is False


class TestSourceHeader:
    def test_the_header_the_seg_writer_reads_while_unchanged(self, tmp_path):
        files = write_study(tmp_path)
        cache = prefetched(tmp_path)
        path = files["t1"][2]
        assert cache.source_header(str(path)) == pydicom.dcmread(path, stop_before_pixels=True)
        replace(path, SeriesDescription="changed")
        assert cache.source_header(str(path)) is None

    @pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                      "CT_small.dcm", "emri_small.dcm"])
    def test_from_the_decode_as_a_separate_read_gives_it(self, name):
        from pydicom.data import get_testdata_file

        from edge_infer.dicom.headers import parse_file
        from edge_infer.dicom.pixels import decode_with_header

        path = Path(get_testdata_file(name))  # written by other software
        _, records = parse_file(path)
        pixels, header = decode_with_header(records[0])
        alone = pydicom.dcmread(path, stop_before_pixels=True)
        assert header == alone and "PixelData" not in header
        assert header.file_meta == alone.file_meta and header.preamble == alone.preamble
        assert header.original_encoding == alone.original_encoding
        assert header.original_character_set == alone.original_character_set
        assert np.array_equal(pixels, pydicom.dcmread(path).pixel_array)

    def test_none_beyond_the_cap(self, tmp_path):
        files = write_study(tmp_path)
        cache = prefetched(tmp_path, max_bytes=0)
        assert cache.source_header(files["t1"][0]) is None


class TestForgetUnder:
    def test_drops_the_files_under_a_folder_and_their_bytes(self, tmp_path):
        files = write_study(tmp_path)
        cache = prefetched(tmp_path)
        cache.forget_under(files["t1"][0].parent)
        assert len(cache) == SHAPE[2] and cache.cached_bytes == sum(entry_bytes(p) for p in files["t2"])
        cache.forget_under(tmp_path)
        assert len(cache) == 0 and cache.cached_bytes == 0
