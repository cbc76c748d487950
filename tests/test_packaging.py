"""What the wheel installs, and the public API of ``import edge_infer``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def package_folders() -> set[str]:
    """Every folder with an ``__init__.py`` under the installed trees, as the wheel names it."""
    found = set()
    for top, installed_as in (("edge_infer", "edge_infer"), ("export", "edge_infer_export"),
                              ("firmware_profiles", "firmware_profiles")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((installed_as, *rel)))
    return found


class TestWheelPackages:
    @pytest.mark.parametrize("name", sorted(package_folders()))
    def test_every_package_folder_is_installed(self, name):
        """setup.py finds every package folder; ``export/`` installs as ``edge_infer_export``."""
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, f"{name} is not installed (pip install -e .)"
        folder = {"edge_infer_export": "export"}.get(name.split(".")[0], name.split(".")[0])
        assert Path(spec.origin).resolve() == (ROOT / folder / Path(*name.split(".")[1:]) / "__init__.py").resolve()

    def test_export_stage_installs_under_a_private_name(self):
        assert PYPROJECT["project"]["scripts"]["edge-infer-export"] == "edge_infer_export.cli:main"
        out = subprocess.run([sys.executable, "-c", "import edge_infer_export.phantoms, sys; print('torch' in sys.modules)"],
                             capture_output=True, text=True, cwd="/", check=True)
        assert out.stdout.strip() == "False"  # export.phantoms is numpy + nibabel only

    def test_version_has_one_source(self):
        from importlib.metadata import version

        import edge_infer

        assert edge_infer.__version__ == version("edge-infer") == PYPROJECT["project"]["version"]


class TestPublicApi:
    def test_import_loads_nothing_heavy(self):
        code = ("import sys, edge_infer; heavy = [m for m in ('numpy', 'onnxruntime', 'pydicom', 'nibabel') "
                "if m in sys.modules]; print(','.join(heavy))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == ""

    @pytest.mark.parametrize("name", ["read_scan", "load_model", "segment", "run_case", "FinishOptions",
                                      "ModelChoice", "OutputSpec", "ScanError", "EdgeInferError"])
    def test_names_resolve(self, name):
        import edge_infer

        assert name in edge_infer.__all__
        assert getattr(edge_infer, name).__name__ == name

    def test_unknown_name_is_an_attribute_error(self):
        import edge_infer

        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            edge_infer.nope  # noqa: B018

    def test_readme_example_runs(self, case_dir, tmp_path):
        import edge_infer as ei

        model = ei.load_model("default")
        scan = ei.read_scan([case_dir], model.manifest.modalities)
        seg = ei.segment(scan, model, ei.FinishOptions(keep_largest=True))
        assert seg.labels.shape == scan.shape
        assert set(seg.volumes_ml) == {lb.name for lb in model.manifest.labels}
