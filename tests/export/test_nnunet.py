"""from-nnunet against nnU-Net's own predictor, on a results folder nnU-Net planned itself.

The results folder (nnU-Net planning, a short training here) is made once per session
(about 3-4 minutes on 2 cores) under a temporary folder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

from click.testing import CliRunner  # noqa: E402

from export.cli import cli  # noqa: E402
from export.errors import SourceError  # noqa: E402
from export.nnunet import modalities, network_orientation, output_fields, read_results  # noqa: E402
from byom_helpers import edge_infer_dice, write_nifti_case  # noqa: E402
from nnunet_fixture import CHANNELS, LABELS, nnunet_array, phantom  # noqa: E402

MODS = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory):
    """One raw dataset and one nnU-Net planning, shared by the configurations trained on it."""
    return tmp_path_factory.mktemp("nnunet")


@pytest.fixture(scope="session")
def nnunet_results(nnunet_root):
    from nnunet_fixture import make_results

    return make_results(nnunet_root)


@pytest.fixture(scope="session")
def nnunet_results_2d(nnunet_root):
    from nnunet_fixture import make_results

    return make_results(nnunet_root, configuration="2d")


class TestModalities:
    def test_channel_names_by_alias(self):
        assert modalities({"channel_names": CHANNELS}) == MODS

    def test_unmapped_name_says_how_to_map(self):
        with pytest.raises(SourceError, match=r"channel 1 'ADC' maps to no modality.*--modality-map ADC=t1ce"):
            modalities({"channel_names": {"0": "T1", "1": "ADC"}})

    def test_override(self):
        assert modalities({"channel_names": {"0": "ADC"}}, {"ADC": "t2"}) == ("t2",)


class TestOutputFields:
    def test_regions_painted_in_class_order(self):
        out = output_fields({"labels": LABELS, "regions_class_order": [1, 2, 3]})
        assert out["activation"] == "sigmoid" and out["channels"] == ["whole tumor", "tumor core", "enhancing tumor"]
        assert [lb["value"] for lb in out["labels"]] == [1, 2, 3]

    def test_plain_labels_are_softmax_classes(self):
        out = output_fields({"labels": {"background": 0, "edema": 1, "tumour": 2}})
        assert out["activation"] == "softmax" and out["channels"] == ["background", "edema", "tumour"]
        assert [(lb["value"], lb["region"]) for lb in out["labels"]] == [(1, "edema"), (2, "tumour")]


class TestNetworkOrientation:
    @pytest.mark.parametrize("stored, tf, want", [("RAS", [0, 1, 2], "SAR"), ("LPS", [0, 1, 2], "SPL"),
                                                  ("RAS", [2, 0, 1], "RSA")])
    def test_reversed_then_transposed(self, stored, tf, want):
        assert network_orientation(stored, tf) == want


class TestReadResults:
    def test_missing_fold_lists_existing(self, tmp_path):
        for name in ("plans.json", "dataset.json"):
            (tmp_path / name).write_text("{}")
        (tmp_path / "fold_1").mkdir()
        (tmp_path / "fold_1" / "checkpoint_final.pth").write_bytes(b"")
        with pytest.raises(SourceError, match="fold_0/checkpoint_final.pth does not exist; folds with .*: fold_1"):
            read_results(tmp_path, 0, "final")

    def test_missing_plans(self, tmp_path):
        with pytest.raises(SourceError, match="has no plans.json"):
            read_results(tmp_path, 0, "final")


def nnunet_prediction(results, image, configuration="3d_fullres"):
    """nnU-Net's own nnUNetPredictor (step 0.5, Gaussian, mirroring off, CPU): ``(labels, valid)``
    on ``[I, J, K]``.

    On CPU the predictor blends in float16: where every window's weight times its logit
    underflows (a volume's corners) its logits are exactly 0 (probability exactly 0.5 in that
    channel). Those voxels are not nnU-Net's answer but its rounding, and ``valid`` leaves them out.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from export.nnunet import build_network

    plans = json.loads((results / "plans.json").read_text())
    ckpt = torch.load(str(results / "fold_0" / "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    net = build_network(cm.configuration, 4, 3)
    net.load_state_dict(ckpt["network_weights"])
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                           device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    pred.manual_initialization(net, pm, cm, [ckpt["network_weights"]], json.loads((results / "dataset.json").read_text()),
                               ckpt["trainer_name"], None)
    seg, probs = pred.predict_single_npy_array(nnunet_array(image), {"spacing": [1.0, 1.0, 1.0]}, None, None, True)
    valid = ~(np.asarray(probs, np.float32) == 0.5).any(axis=0)
    return np.asarray(seg).transpose(2, 1, 0), valid.transpose(2, 1, 0)


def from_nnunet_then_run(results, configuration, tmp_path, border: int = 0, parity_scan: bool = True):
    """from-nnunet (parity on the held-out case, or on the command's own phantom without
    ``parity_scan``), then edge-infer run, then Dice per label against nnUNetPredictor:
    ``(manifest, Dice by (precision, label value))``. ``border``: zero planes around the case
    on every side (a skull-stripped scan: nnU-Net crops them off before it normalises)."""
    image, _ = phantom(123, shape=(48, 44, 40))          # not a training case, several windows per axis
    if border:
        image = np.pad(image, [(0, 0)] + [(border, border)] * 3)
    files = write_nifti_case(tmp_path / "case", image)
    scan = ["--parity-scan", str(files[0].parent)] if parity_scan else []
    res = CliRunner().invoke(cli, ["--threads", "2", "from-nnunet", str(results), str(tmp_path / "m"),
                                   "--precision", "fp16", *scan], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    want, valid = nnunet_prediction(results, image, configuration)
    assert valid.mean() > 0.9
    report = edge_infer_dice(files[0].parent, tmp_path / "m", want, (1, 2, 3), tmp_path, valid)
    print(configuration, "Dice vs nnUNetPredictor:", report, "voxels left out (nnU-Net float16 underflow):",
          int((~valid).sum()), "recorded:", manifest["provenance"]["parity"])
    return manifest, report


def assert_recorded(manifest, report):
    """The figures in the manifest are the ones this test measured, and the card shows them."""
    parity = manifest["provenance"]["parity"]
    assert parity["reference"].startswith("nnUNetPredictor") and parity["unit"] == "label"
    assert parity["volume"] == {"kind": "file", "inputs": 1, "shape": [48, 44, 40]}
    names = {lb["value"]: lb["name"] for lb in manifest["output"]["labels"]}
    for (precision, value), d in report.items():
        assert parity["artifacts"][f"onnx/{precision}"]["dice"][names[value]] == pytest.approx(d, abs=1e-12)
        assert parity["artifacts"][f"onnx/{precision}"]["max_prob_diff"] == \
            manifest["provenance"]["verification"]["artifacts"][f"onnx/{precision}"]["max_prob_diff"]


@pytest.mark.slow
def test_from_nnunet_matches_nnunet_predictor(nnunet_results, tmp_path):
    """3d_fullres: Dice per label against nnUNetPredictor >= 0.99, fp32 and fp16, as recorded."""
    manifest, report = from_nnunet_then_run(nnunet_results, "3d_fullres", tmp_path)
    assert manifest["input"]["orientation"] == "SAR" and manifest["input"]["tile"] == [32, 40, 40]
    assert min(report.values()) >= 0.99, report
    assert_recorded(manifest, report)
    assert "## Parity with the source" in (tmp_path / "m" / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_from_nnunet_2d_matches_nnunet_predictor(nnunet_results_2d, tmp_path):
    """2d: slices along the network array's axis 0 in nnU-Net's Gaussian-blended patches (a 3D
    window one slice deep); Dice per label against nnUNetPredictor >= 0.99, fp32 and fp16."""
    manifest, report = from_nnunet_then_run(nnunet_results_2d, "2d", tmp_path)
    assert manifest["provenance"]["configuration"] == "2d" and manifest["input"]["tile"] == [1, 40, 40]
    assert min(report.values()) >= 0.99, report
    assert_recorded(manifest, report)


@pytest.mark.slow
def test_from_nnunet_2d_on_a_skull_stripped_scan(nnunet_results_2d, tmp_path):
    """A zero border around the case (nnU-Net crops it off, then z-scores the box): the
    runtime's zscore takes the crop box's statistics too, so the masks still agree; and the
    command's own parity phantom (skull-stripped) passes without --parity-scan."""
    manifest, report = from_nnunet_then_run(nnunet_results_2d, "2d", tmp_path, border=8, parity_scan=False)
    assert manifest["input"]["normalization"] == "zscore" and manifest["input"]["crop"]["mode"] == "nonzero"
    assert manifest["provenance"]["parity"]["volume"]["kind"] != "file"
    assert min(report.values()) >= 0.99, report
