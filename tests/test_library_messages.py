"""Tests of edge_infer.library_messages: library chatter captured and reworded without patient data."""

from __future__ import annotations

import logging
import warnings

import pytest

from edge_infer.library_messages import capture_library_messages, reword, summarise


class TestReword:
    def test_person_name_warning_in_our_words(self):
        line = reword('The string "DOE JOHN" is unlikely to represent the intended person name since ...')
        assert "DOE" not in line and "FAMILY^GIVEN" in line

    def test_invalid_uid_warning_names_the_vr_only(self):
        line = reword("Invalid value for VR UI: '1.2.826.0.1.3680043.99.A'. Please see <https://x>")
        assert line == "a header value is not valid for VR UI (value withheld)"

    def test_empty_seg_notice_in_our_words(self):
        line = reword("Encoding an empty image with 'omit_empty_frames' set to True. Reverting to ...")
        assert line == "the mask is empty: the SEG holds all its frames, all empty"

    @pytest.mark.parametrize("text, hidden", [
        ("odd element 'Smith^Anna' in group", "Smith"),
        ('value "12345" kept', "12345"),
        ("uid 1.2.840.113619.2.55 seen", "113619"),
        ("patient 98765432 found", "98765432"),
    ])
    def test_unknown_messages_withhold_values(self, text, hidden):
        assert hidden not in reword(text)

    def test_long_message_is_shortened(self):
        assert len(reword("x " * 400)) <= 160


class TestSummarise:
    def test_repeats_are_counted_once(self):
        assert summarise(["a b", "a  b", "c"], "reader") == ["reader: a b (2 times)", "reader: c"]


class TestCaptureLibraryMessages:
    def test_warnings_and_log_records_are_kept_not_printed(self, capfd, caplog):
        with capture_library_messages("reader") as got:
            warnings.warn("The string \"ROE RICHARD\" is unlikely to represent the intended person name", UserWarning)
            logging.getLogger("pydicom.filereader").warning("Invalid value for VR PN: 'ROE RICHARD'")
        out, err = capfd.readouterr()
        assert "ROE" not in out + err + caplog.text
        assert len(got) == 2 and all(line.startswith("reader: ") for line in got)
        assert not any("ROE" in line for line in got)

    def test_loggers_are_restored(self):
        logger = logging.getLogger("highdicom")
        handlers, propagate = list(logger.handlers), logger.propagate
        with capture_library_messages():
            assert logger.propagate is False
        assert logger.handlers == handlers and logger.propagate == propagate

    def test_an_error_drops_the_messages_and_propagates(self):
        with pytest.raises(ValueError, match="ours"):
            with capture_library_messages() as got:
                warnings.warn("chatter", UserWarning)
                raise ValueError("ours")
        assert got == []

    def test_deprecation_chatter_is_dropped(self):
        with capture_library_messages() as got:
            warnings.warn("old API", DeprecationWarning)
        assert got == []

    def test_child_logger_with_its_own_handler_is_captured(self, capfd):
        child = logging.getLogger("nibabel.global")
        own, level = logging.StreamHandler(), child.level
        child.addHandler(own)
        child.setLevel(logging.WARNING)           # other tests may have silenced "nibabel"
        try:
            with capture_library_messages("reader") as got:
                child.warning("pixdim[1,2,3] should be non-zero; setting 0 dims to 1")
        finally:
            child.removeHandler(own)
            child.setLevel(level)
        assert "pixdim" not in capfd.readouterr().err
        assert got == ["reader: pixdim[1,2,3] should be non-zero; setting 0 dims to 1"]


class TestGuardLibraryOutput:
    """In a process of its own: the guard changes process-wide warning and logging state."""

    SCRIPT = """
import io, logging, sys, warnings
import pydicom
from pydicom.data import get_testdata_file
from edge_infer.library_messages import guard_library_output
from edge_infer.node.scp import InstanceProblem, check_instance

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
if sys.argv[1] == "guarded":
    guard_library_output()
    guard_library_output()  # twice: still one rewording
ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ds.StudyInstanceUID = "1.2.3.Zyxq"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
try:
    check_instance(buf.getvalue())
except InstanceProblem as exc:
    print("refused:", exc)
"""

    def _run(self, mode: str):
        import subprocess
        import sys

        return subprocess.run([sys.executable, "-c", self.SCRIPT, mode], capture_output=True, text=True, timeout=120)

    def test_a_received_instance_with_a_bad_uid_prints_no_value(self):
        bare, guarded = self._run("bare"), self._run("guarded")
        assert "refused: StudyInstanceUID is not a valid UID" in guarded.stdout
        assert "Zyxq" in bare.stderr  # what the guard is for: pydicom quotes the value
        assert "Zyxq" not in guarded.stderr, guarded.stderr
        lines = [line for line in guarded.stderr.splitlines() if "VR UI" in line]
        assert lines and all(line.endswith("a header value is not valid for VR UI (value withheld)") for line in lines)
