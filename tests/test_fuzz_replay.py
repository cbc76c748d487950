"""Replay of the minimised fuzzing corpora and the crash reproducers (issue 18).

Every file of ``tests/fuzz/corpus/HARNESS`` goes through its harness once, without mutation: it
loads, or raises edge-infer's own one-line error (the property of :mod:`fuzz.targets`), so
a regression in any parser is caught on every change. The reproducers under
``tests/fuzz_reproducers/HARNESS/`` are the minimised inputs of crashes the long runs found;
each failed before its fix. The long run itself is ``scripts/fuzz.py`` (a command, not a
test).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.replay import corpus_files, replay  # noqa: E402
from fuzz_corpus import time_bound  # noqa: E402
from fuzz.targets import TARGETS, PropertyViolation, check_message, split_files  # noqa: E402

CORPUS = ROOT / "tests" / "fuzz" / "corpus"
REPRODUCERS = Path(__file__).parent / "fuzz_reproducers"
#: the committed corpus stays small (the issue: a few MB at most)
CORPUS_BUDGET = 4 << 20


def _reproducers() -> list[tuple[str, Path]]:
    if not REPRODUCERS.is_dir():
        return []
    return [(h.name, p) for h in sorted(REPRODUCERS.iterdir()) if h.is_dir() for p in sorted(h.iterdir())]


class TestReplay:
    @pytest.mark.parametrize("harness", sorted(TARGETS))
    def test_corpus_holds_the_property(self, harness):
        files = corpus_files([CORPUS / harness])
        assert files, f"tests/fuzz/corpus/{harness} is empty: run scripts/fuzz.py --merge-seeds"
        counts, failures = replay(harness, files)
        assert not failures, failures[0][1]
        assert counts["loaded"] + counts["refused"] == len(files)
        assert counts["loaded"] >= 1, f"only refusals: the corpus tests no more than each parser's first checks ({counts})"

    @pytest.mark.parametrize(("harness", "path"), _reproducers(), ids=lambda v: getattr(v, "name", v))
    def test_reproducer_holds_the_property(self, harness, path):
        with time_bound(60.0):  # a reproducer of a hang fails here instead of hanging CI
            counts, failures = replay(harness, [path])
        assert not failures, failures[0][1]


class TestCorpus:
    def test_committed_corpus_is_small(self):
        size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
        assert 0 < size <= CORPUS_BUDGET

    @pytest.mark.parametrize("harness", sorted(TARGETS))
    def test_every_harness_has_a_dictionary(self, harness):
        text = (ROOT / "tests" / "fuzz" / "dicts" / f"{TARGETS[harness].dictionary}.dict").read_text()
        entries = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert len(entries) >= 10
        assert all("=" in line and line.endswith('"') for line in entries)


class TestCheckMessage:
    def test_one_line_passes(self):
        check_message("input case.nii has 5 dimensions; give a 3D or 4D NIfTI file")

    def test_registry_uids_pass(self):
        check_message("transfer syntax 1.2.840.10008.1.2.4.90 needs a decoder: pip install 'edge-infer[dicom]'")

    def test_a_corrupt_transfer_syntax_is_a_code(self):
        check_message("series 'AX T1' uses transfer syntax 1.2.680.10008.1.2.1 (unknown); convert it")

    def test_a_corrupt_code_repeated_in_brackets_is_a_code(self):
        check_message("series 'AX T1' uses transfer syntax 1.2.840.10OW8.1.2.4.91 (1.2.840.10OW8.1.2.4.91), "
                      "which is not a known transfer syntax; re-export the series uncompressed")

    def test_a_uid_beside_a_named_code_is_still_caught(self):
        with pytest.raises(PropertyViolation, match="raw UID"):
            check_message("transfer syntax 1.2.840.10008.1.2 (1.2.840.10008.1.2) of study 1.2.826.0.1.3680043.8.498.18")

    @pytest.mark.parametrize("text", ["first line\nsecond line", "series of FUZZ^MARKER is short",
                                      "patient fuzzmarker", "study 1.2.826.0.1.3680043.8.498.18 differs"])
    def test_violations_are_caught(self, text):
        with pytest.raises(PropertyViolation, match="not one line|patient marker|raw UID"):
            check_message(text)


class TestSplitFiles:
    def test_splits_at_the_separator_and_caps_the_count(self):
        from fuzz.targets import MAX_FILES, SEP

        assert split_files(b"a" + SEP + b"b") == [b"a", b"b"]
        assert len(split_files(SEP.join([b"x"] * (MAX_FILES + 3)))) == MAX_FILES


class TestReason:
    """``edge_infer.dicom.guards.reason``: a library's message without what it quoted from the file."""

    def test_bytes_uids_and_names_are_replaced(self):
        from edge_infer.dicom.guards import reason

        text = reason(ValueError("received b'\\x02UI 1.2.3' for 1.3.6.1.4.1.9590.100.1 of 'DOE^JANE' in 'H'"))
        assert text == "ValueError: received <bytes> for <uid> of <name> in 'H'"

    def test_registry_uids_and_a_cut_literal(self):
        from edge_infer.dicom.guards import reason

        assert reason(ValueError("syntax 1.2.840.10008.1.2.4.90 b'abc")) == "ValueError: syntax 1.2.840.10008.1.2.4.90 <bytes>"


class TestShortText:
    """``edge_infer.dicom.headers.short_text``: a description shown in messages and reports never
    runs into the elements a corrupt value length swallowed (the patient's name among them)."""

    @staticmethod
    def _description(raw: bytes):
        from pydicom import Dataset
        from pydicom.dataelem import RawDataElement
        from pydicom.tag import Tag

        ds = Dataset()
        ds[0x0008103E] = RawDataElement(Tag(0x0008103E), "LO", len(raw), raw, 0, False, True)
        return ds

    def test_cut_at_the_first_control_character(self):
        from edge_infer.dicom.headers import short_text

        ds = self._description(b"AX  T1 \x10\x00\x10\x00PN\x0c\x00DOE^JANE")
        assert short_text(ds, "SeriesDescription") == "AX T1"

    def test_values_joined_and_cut_to_the_limit(self):
        from edge_infer.dicom.headers import short_text

        assert short_text(self._description(b"T1\\MPRAGE"), "SeriesDescription") == "T1\\MPRAGE"
        assert short_text(self._description(b"x" * 80), "SeriesDescription") == "x" * 64

    def test_absent_is_empty(self):
        from pydicom import Dataset

        from edge_infer.dicom.headers import short_text

        assert short_text(Dataset(), "ProtocolName") == ""


class TestWithSliceThickness:
    """``edge_infer.seg.with_slice_thickness``: highdicom reads SliceThickness from single-frame sources."""

    @pytest.mark.parametrize("given", [None, ""])
    def test_absent_or_empty_is_set_to_the_spacing(self, given):
        from pydicom import Dataset

        from edge_infer.seg import with_slice_thickness

        ds = Dataset()
        if given is not None:
            ds.SliceThickness = given
        assert float(with_slice_thickness(ds, 2.5).SliceThickness) == 2.5

    def test_present_is_kept(self):
        from pydicom import Dataset

        from edge_infer.seg import with_slice_thickness

        ds = Dataset()
        ds.SliceThickness = 1.0
        assert float(with_slice_thickness(ds, 2.5).SliceThickness) == 1.0


class TestInputBudget:
    """``Target.max_len``: libFuzzer's ``-max_len``; the committed corpus fits it (a seed above it
    would be fuzzed only by its start, and a parser fed megabytes explores slowly)."""

    @pytest.mark.parametrize("harness", sorted(TARGETS))
    def test_corpus_files_fit_the_budget(self, harness):
        budget = TARGETS[harness].max_len
        over = [p.name for p in corpus_files([CORPUS / harness]) if p.stat().st_size > budget]
        assert not over, f"{len(over)} file(s) over {budget} bytes: re-merge with scripts/fuzz.py --merge-seeds"


class TestWorkdir:
    """``fuzz.targets.workdir``: the harnesses' files go to memory where there is a tmpfs."""

    def test_made_inside_the_tmpfs(self, tmp_path, monkeypatch):
        import fuzz.targets as targets

        monkeypatch.setattr(targets, "TMPFS", tmp_path)
        folder = targets.workdir()
        assert folder.parent == tmp_path and folder.is_dir()

    def test_falls_back_to_the_temp_folder(self, tmp_path, monkeypatch):
        import tempfile

        import fuzz.targets as targets

        monkeypatch.setattr(targets, "TMPFS", tmp_path / "absent")
        folder = targets.workdir()
        try:
            assert folder.parent == Path(tempfile.gettempdir()) and folder.is_dir()
        finally:
            folder.rmdir()


class TestConfigPaths:
    """``edge_infer.node.config.from_mapping``: a path naming the home of a user who does not exist."""

    @pytest.mark.parametrize("key", ["spool", "tls_ca"])
    def test_home_of_no_such_user_is_a_config_error(self, key):
        from edge_infer.errors import ConfigError
        from edge_infer.node.config import from_mapping

        raw = {"spool": "/tmp/spool", key: "~edge-infer-no-such-user/x"}
        with pytest.raises(ConfigError, match=f"{key}: cannot expand ~ .*no such user"):
            from_mapping(raw)
