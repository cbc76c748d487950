"""A case's outputs rendered once (`render_outputs`) and committed atomically (`commit_outputs`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_infer.errors import OutputError
from edge_infer.model import load_model
from edge_infer.outputs import Case, commit_outputs, output_names, render_outputs
from edge_infer.report import build_report
from edge_infer.readers import read_scan
from edge_infer.segmentation import segment


@pytest.fixture(scope="module")
def case(case_dir, model2d) -> Case:
    lm = load_model(model2d, threads=1)
    scan = read_scan([case_dir], lm.manifest.modalities)
    return Case(scan, segment(scan, lm), lm)


def report_of(case: Case, names: dict[str, str]):
    return build_report(case.scan, case.model, case.seg, {"infer": 1.0}, names, case.provenance)


class TestOutputNames:
    @pytest.mark.parametrize("formats, overlay, kinds", [
        (("nifti",), False, ["mask", "report"]),
        (("nifti", "seg"), True, ["mask", "seg", "report", "overlay"]),
        (("seg",), False, ["seg", "report"]),
    ])
    def test_kinds_follow_formats(self, formats, overlay, kinds):
        names = output_names("c", formats, overlay)
        assert list(names) == kinds and all(n.startswith("c_") for n in names.values())


class TestRenderOutputs:
    def test_every_named_output_and_the_report_last(self, case):
        names = output_names("c", ("nifti",), overlay=True)
        seen = []

        def report(c: Case):
            seen.append(c)
            return report_of(c, names)

        out = render_outputs(case, names, report)
        files = out.files
        assert out.report.outputs == names and list(files) == ["c_mask.nii.gz", "c_overlay.png", "c_report.json"] and seen == [case]
        doc = json.loads(files["c_report.json"])
        assert doc["outputs"] == names and doc["volumes_ml"] == case.seg.volumes_ml

    def test_a_refused_report_renders_nothing_further(self, case):
        def refuse(c: Case):
            raise OutputError("no")

        with pytest.raises(OutputError, match="no"):
            render_outputs(case, output_names("c", ("nifti",)), refuse)


class TestCommitOutputs:
    def test_all_files_land_in_the_folder(self, tmp_path):
        paths = commit_outputs({"a_mask.nii.gz": b"1", "a_report.json": b"{}"}, tmp_path / "out")
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_mask.nii.gz", "a_report.json"]
        assert paths["a_report.json"].read_bytes() == b"{}"

    def test_a_name_outside_the_folder_writes_nothing(self, tmp_path):
        with pytest.raises(OutputError, match="outside the output folder"):
            commit_outputs({"ok.json": b"{}", "../escaped.json": b"{}"}, tmp_path / "out")
        assert not list((tmp_path / "out").iterdir()) and not (tmp_path / "escaped.json").exists()


class TestCase:
    def test_provenance_names_the_artifact(self, case):
        assert case.provenance["model_sha256"] == case.model.artifact.sha256
        assert np.array_equal(case.seg.labels.shape, case.scan.shape)
