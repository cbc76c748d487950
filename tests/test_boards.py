"""Tests of edge_infer.boards: shipped profiles, user profiles, validation messages."""

from __future__ import annotations

import pytest

from edge_infer.boards import PROFILES_ENV, all_boards, get_board, load_profile_file
from edge_infer.errors import ProfileError

SHIPPED = {"rpi3", "rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "x86-host"}

VALID = """
name = "myboard"
arch = "aarch64"
ram_mb = 2048
[budget]
memory_fraction = 0.5
latency_per_unit_ms = 100
latency_per_volume_s = 60
[compute]
threads = 4
backends = ["tflite", "onnx"]
precisions = ["fp32"]
fp16_arithmetic = false
max_batch = 8
max_tile = [96, 96, 96]
peak_gflops = 40.0
sustained_fraction = 0.4
bandwidth_gbs = 4.0
"""


def write(tmp_path, text, name="myboard"):
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


class TestShippedProfiles:
    @pytest.mark.parametrize("name", sorted(SHIPPED))
    def test_parses_and_is_sane(self, name):
        b = get_board(name)
        assert b.name == name and 0 < b.memory_budget_mb < b.ram_mb
        assert b.backends and b.precisions and b.peak_gflops > 0

    def test_all_listed(self):
        assert SHIPPED <= {b.name for b in all_boards()}

    def test_fp16_only_where_the_cpu_has_it(self):
        assert "fp16" not in get_board("rpi4").precisions
        assert get_board("rpi5").fp16_arithmetic and "fp16" in get_board("rpi5").precisions

    def test_jetson_providers_order(self):
        assert get_board("jetson-orin-nano").providers[:2] == ("TensorrtExecutionProvider", "CUDAExecutionProvider")

    def test_rpi3_is_tflite_only(self):
        assert get_board("rpi3").backends == ("tflite",)

    def test_ram_variant(self):
        assert get_board("rpi4", ram_mb=2048).memory_budget_mb == 1024


class TestGetBoard:
    def test_unknown_lists_known(self):
        with pytest.raises(ProfileError, match="unknown board 'rpi9'; known boards: .*rpi4.*x86-host"):
            get_board("rpi9")

    def test_user_folder_by_flag(self, tmp_path):
        write(tmp_path, VALID)
        assert get_board("myboard", [tmp_path]).memory_budget_mb == 1024

    def test_user_folder_by_env(self, tmp_path, monkeypatch):
        write(tmp_path, VALID)
        monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
        assert get_board("myboard").threads == 4

    def test_missing_folder(self, tmp_path):
        with pytest.raises(ProfileError, match="does not exist"):
            get_board("rpi4", [tmp_path / "nope"])

    def test_negative_ram_override(self):
        with pytest.raises(ProfileError, match="--ram-mb must be positive"):
            get_board("rpi4", ram_mb=-1)


class TestLoadProfileFile:
    @pytest.mark.parametrize("old, new, match", [
        ("latency_per_unit_ms = 100", "latency_per_unit_ms = 0", "'budget.latency_per_unit_ms' must be positive"),
        ("latency_per_volume_s = 60", "latency_per_volume_s = -5", "'budget.latency_per_volume_s' must be positive"),
        ("memory_fraction = 0.5", "memory_fraction = 1.5", "'budget.memory_fraction' must be at most 1"),
        ("ram_mb = 2048", "ram_mb = \"lots\"", "'ram_mb' must be an integer"),
        ('backends = ["tflite", "onnx"]', 'backends = ["tensorrt"]', "'compute.backends' has 'tensorrt'"),
        ('precisions = ["fp32"]', 'precisions = ["bf16"]', "'compute.precisions' has 'bf16'"),
        ("max_tile = [96, 96, 96]", "max_tile = [96, 96]", "'compute.max_tile' must be three"),
        ("threads = 4\n", "", "missing field 'compute.threads'"),
        ("max_batch = 8", "max_batch = true", "'compute.max_batch' must be an integer"),
    ])
    def test_field_named(self, tmp_path, old, new, match):
        assert old in VALID
        with pytest.raises(ProfileError, match=match):
            load_profile_file(write(tmp_path, VALID.replace(old, new)))

    def test_not_toml(self, tmp_path):
        with pytest.raises(ProfileError, match="is not valid TOML"):
            load_profile_file(write(tmp_path, "name = [unclosed"))

    def test_name_must_match_file(self, tmp_path):
        with pytest.raises(ProfileError, match="file is named 'other'"):
            load_profile_file(write(tmp_path, VALID, name="other"))
