"""provenance.parity: the parity figures an imported model's manifest records."""

from __future__ import annotations

import copy

import pytest

from edge_infer.errors import ModelError
from edge_infer.manifest_parity import check_parity_block, check_provenance

BLOCK = {"reference": "nnUNetPredictor", "probability_reference": "eager PyTorch", "unit": "label",
         "left_out_voxels": 3, "volume": {"kind": "phantom", "seed": 1, "shape": [48, 44, 40]},
         "artifacts": {"onnx/fp16": {"dice": {"edema": 0.995}, "reference_voxels": {"edema": 812},
                                     "max_prob_diff": 1e-3, "min_dice": 0.99, "passed": True}}}


def with_field(path: str, value):
    block = copy.deepcopy(BLOCK)
    *parents, last = path.split(".")
    node = block
    for key in parents:
        node = node[key]
    node[last] = value
    return block


class TestCheckProvenance:
    def test_valid_block_kept(self):
        prov = {"source": "nnU-Net v2", "parity": BLOCK}
        assert check_provenance(prov) is prov

    def test_no_block_reads_as_before(self):
        assert check_provenance({"exporter": "edge-infer export"}) == {"exporter": "edge-infer export"}

    def test_bad_block_named_by_path(self):
        with pytest.raises(ModelError, match=r"'provenance.parity.unit' must be one of label, channel"):
            check_provenance({"parity": with_field("unit", "voxel")})


class TestCheckParityBlock:
    @pytest.mark.parametrize("path, value, match", [
        ("reference", " ", r"'p.reference' must name what the artifacts were compared with"),
        ("left_out_voxels", -1, r"'p.left_out_voxels' must be >= 0"),
        ("volume.kind", "scan", r"'p.volume.kind' must be one of phantom"),
        ("volume.shape", [48, 0], r"'p.volume.shape' must be a list of positive integers"),
        ("volume.file", "Doe_John.nii.gz", r"'p.volume.file' is not allowed"),
        ("artifacts", {}, r"'p.artifacts' must hold one entry per artifact"),
        ("artifacts.onnx/fp16.dice", {"edema": 1.2}, r"'p.artifacts.onnx/fp16.dice.edema' must be a number in \[0, 1\]"),
        ("artifacts.onnx/fp16.dice", {"core": 0.9}, r"'p.artifacts.onnx/fp16.dice' must name the same labels"),
        ("artifacts.onnx/fp16.reference_voxels", {"edema": -2}, r"reference_voxels.edema' must be an integer >= 0"),
        ("artifacts.onnx/fp16.max_prob_diff", float("nan"), r"max_prob_diff' must be a probability difference"),
        ("artifacts.onnx/fp16.passed", "yes", r"field 'p.artifacts.onnx/fp16.passed' must be true or false"),
    ])
    def test_bad_field(self, path, value, match):
        block = with_field(path, value) if "/" not in path else _row_field(path, value)
        with pytest.raises(ModelError, match=match):
            check_parity_block(block, "p")

    def test_missing_field(self):
        block = copy.deepcopy(BLOCK)
        del block["volume"]
        with pytest.raises(ModelError, match=r"missing field 'p.volume'"):
            check_parity_block(block, "p")


def _row_field(path: str, value):
    block = copy.deepcopy(BLOCK)
    field = path.rsplit(".", 1)[1]
    block["artifacts"]["onnx/fp16"][field] = value
    return block
