"""Tests of edge_infer.highdicom_lookup: highdicom with its IOD lookup memoised for the SEG writer."""

from __future__ import annotations

from edge_infer.highdicom_lookup import memoise_iod_lookup


class TestMemoiseIodLookup:
    """highdicom's IOD lookup, cached where highdicom calls it: the same answers, each computed once."""

    def test_same_answers_each_computed_once(self, monkeypatch):
        import highdicom._standard_utils as hd_standard
        import highdicom.base as hd_base

        calls = []

        def lookup(attribute, sop_class_uid, exclude_path_elements=None):
            calls.append(attribute)
            return attribute == "ContentDate" and exclude_path_elements is None

        monkeypatch.setattr(hd_standard, "is_attribute_in_iod", lookup)
        monkeypatch.setattr(hd_base, "is_attribute_in_iod", hd_base.is_attribute_in_iod)
        assert memoise_iod_lookup() is True and memoise_iod_lookup() is True   # idempotent
        mr = "1.2.840.10008.5.1.4.1.1.4"
        answers = [hd_base.is_attribute_in_iod(a, mr) for a in ("ContentDate", "ContentTime", "ContentDate")]
        assert answers == [True, False, True]
        assert hd_standard.is_attribute_in_iod("ContentDate", mr, ["X"]) is False
        assert calls == ["ContentDate", "ContentTime", "ContentDate"]

    def test_the_seg_writer_uses_the_cached_lookup(self):
        """``edge_infer.seg`` takes highdicom from here (ImportError when it is missing: tests/test_seg.py)."""
        import highdicom._standard_utils as hd_standard

        from edge_infer.seg import _highdicom

        _highdicom()
        assert hd_standard.is_attribute_in_iod.__wrapped__ is not None
        mr = "1.2.840.10008.5.1.4.1.1.4"
        assert hd_standard.does_iod_have_pixel_data(mr) is True
        assert hd_standard.is_attribute_in_iod("PixelData", mr, ["IconImageSequence"]) is \
            hd_standard.is_attribute_in_iod.__wrapped__("PixelData", mr, ["IconImageSequence"])
