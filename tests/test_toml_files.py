"""`read_toml`: one error style for every TOML document (board profiles, node configuration)."""

from __future__ import annotations

import pytest

from edge_infer.errors import ConfigError, ProfileError
from edge_infer.toml_files import read_toml


class TestReadToml:
    def test_a_table(self, tmp_path):
        (tmp_path / "a.toml").write_text('name = "x"\n[compute]\ngflops = 1.5\n')
        assert read_toml(tmp_path / "a.toml", "board profile", ProfileError) == {"name": "x", "compute": {"gflops": 1.5}}

    @pytest.mark.parametrize("content, words", [
        (b"name = ", "is not valid TOML"),
        (b"\xff\xfe = 1", "cannot be read: it is not UTF-8 text"),
        (b"a = " + b"[" * 5000 + b"]" * 5000, "TOML"),
    ])
    def test_bad_documents_are_one_line_in_the_callers_error(self, tmp_path, content, words):
        (tmp_path / "bad.toml").write_bytes(content)
        with pytest.raises(ConfigError, match=f"^config file .*bad.toml .*{words}") as info:
            read_toml(tmp_path / "bad.toml", "config file", ConfigError)
        assert "\n" not in str(info.value)

    def test_missing_file(self, tmp_path):
        with pytest.raises(ProfileError, match="board profile .*none.toml cannot be read: No such file"):
            read_toml(tmp_path / "none.toml", "board profile", ProfileError)
