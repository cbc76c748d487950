"""from-monai-bundle: transform mapping (refused by name), and parity with the bundle's own inferer."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from click.testing import CliRunner  # noqa: E402

from export.cli import cli  # noqa: E402
from export.errors import SourceError  # noqa: E402
from export.monai_bundle import map_inferer, map_postprocessing, map_preprocessing  # noqa: E402
from byom_helpers import edge_infer_dice, write_nifti_case  # noqa: E402
from monai_fixture import inference_config  # noqa: E402
from nnunet_fixture import phantom  # noqa: E402

class TestMapPreprocessing:
    def test_brats_bundle(self):
        out = map_preprocessing(inference_config()["preprocessing"]["transforms"])
        assert out == {"orientation": "RAS", "spacing_mm": [1.0, 1.0, 1.0], "normalization": "zscore_nonzero"}

    def test_scale_intensity_range_is_clipped_zscore(self):
        out = map_preprocessing([{"_target_": "ScaleIntensityRanged", "a_min": -100, "a_max": 300, "b_min": 0,
                                  "b_max": 1, "clip": True}])
        it = out["intensity_one"]
        assert out["normalization"] == "clipped_zscore" and (it["low"], it["high"], it["mean"], it["std"]) == (-100, 300, -100, 400)

    def test_unmappable_transform_refused_by_name(self):
        with pytest.raises(SourceError, match="preprocessing transform CropForegroundd has no manifest equivalent"):
            map_preprocessing(inference_config(extra_pre=[{"_target_": "CropForegroundd", "keys": "image"}])
                              ["preprocessing"]["transforms"])


class TestMapInferer:
    def test_sliding_window(self):
        assert map_inferer(inference_config()["inferer"]) == {"tile": [32, 32, 32], "step": 0.5, "blending": "gaussian",
                                                              "windows": "monai"}

    @pytest.mark.parametrize("key, value", [("sigma_scale", 0.25), ("padding_mode", "reflect")])
    def test_window_settings_the_runtime_cannot_honour_refused(self, key, value):
        with pytest.raises(SourceError, match=f"inferer {key}="):
            map_inferer({**inference_config()["inferer"], key: value})

    def test_simple_inferer_refused(self):
        with pytest.raises(SourceError, match="inferer SimpleInferer has no manifest equivalent"):
            map_inferer({"_target_": "SimpleInferer"})


class TestMapPostprocessing:
    def test_sigmoid_brats_order(self):
        out = map_postprocessing(inference_config()["postprocessing"]["transforms"], 3)
        assert out["channels"] == ["TC", "WT", "ET"] and [lb["region"] for lb in out["labels"]] == ["WT", "TC", "ET"]

    def test_unknown_refused(self):
        with pytest.raises(SourceError, match="postprocessing transform KeepLargestConnectedComponentd"):
            map_postprocessing([{"_target_": "KeepLargestConnectedComponentd"}], 3)


def bundle_prediction(bundle, files):
    """The bundle's own pipeline: its preprocessing, network, inferer and postprocessing."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(str(bundle / "models" / "model.pt"), weights_only=True))
    data = parser.get_parsed_content("preprocessing")({"image": [str(f) for f in files]})
    with torch.no_grad():
        pred = parser.get_parsed_content("inferer")(data["image"][None], net.eval())[0]
    out = np.asarray(parser.get_parsed_content("postprocessing")({"pred": pred})["pred"]).astype(bool)
    labels = np.zeros(out.shape[1:], np.uint8)
    labels[out[1]], labels[out[0]], labels[out[2]] = 2, 1, 4       # TC, WT, ET painted WT -> 2, TC -> 1, ET -> 4
    return labels


@pytest.mark.slow
def test_from_monai_bundle_matches_bundle_inferer(tmp_path):
    from monai_fixture import make_bundle

    bundle = make_bundle(tmp_path)
    image, _ = phantom(321, shape=(48, 44, 40))
    files = write_nifti_case(tmp_path / "case", image)
    res = CliRunner().invoke(cli, ["--threads", "2", "from-monai-bundle", str(bundle), str(tmp_path / "m"),
                                   "--precision", "fp16", "--parity-scan", str(files[0].parent)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    want = bundle_prediction(bundle, files)
    report = edge_infer_dice(files[0].parent, tmp_path / "m", want, (1, 2, 4), tmp_path)
    print("Dice vs the bundle's inferer:", report)
    assert min(report.values()) >= 0.99, report
    parity = json.loads((tmp_path / "m" / "model.json").read_text())["provenance"]["parity"]
    assert parity["reference"].startswith("the bundle's own") and parity["volume"]["shape"] == [48, 44, 40]
    names = {1: "necrotic_core", 2: "edema", 4: "enhancing"}
    for (precision, value), d in report.items():         # the figures recorded are the ones measured here
        assert parity["artifacts"][f"onnx/{precision}"]["dice"][names[value]] == pytest.approx(d, abs=1e-12)
