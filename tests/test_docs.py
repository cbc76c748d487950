"""The README and docs/ against the code: CI runs exactly the README's test command, the test
script does every install step, and documented exit codes and node keys are the real ones."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def readme_test_command() -> str:
    (block,) = [b for b in bash_blocks(README) if "scripts/test.sh" in b][:1]
    (line,) = block.strip().splitlines()
    return line


class TestReadmeCommands:
    def test_ci_runs_exactly_the_readme_test_command(self):
        ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
        assert readme_test_command() in ci

    def test_every_install_step_is_in_the_test_script(self):
        """CI installs nothing the README's command would not: no pip line in .ci/run."""
        ci = (ROOT / ".ci" / "run").read_text()
        assert not [ln for ln in ci.splitlines() if "pip " in ln and not ln.lstrip().startswith("#")]

    def test_test_script_installs_the_pip_the_lock_test_needs(self):
        need = re.search(r'Version\("(\d+\.\d+)"\), \("needs pip >= \1',
                         (ROOT / "tests" / "test_docker.py").read_text()).group(1)
        script = (ROOT / "scripts" / "test.sh").read_text()
        assert f'-m pip install -q --upgrade "pip>={need}"' in script
        assert script.index("--upgrade \"pip>=") < script.index("pip install -q torch==")

    def test_quick_start_installs_and_runs_the_demo(self):
        assert "python3 -m venv .venv && . .venv/bin/activate && pip install . && edge-infer demo" in README


class TestExitCodes:
    def test_readme_lists_the_real_codes(self):
        from edge_infer.errors import BudgetError, EdgeInferError, InputError

        line = README[README.index("Exit codes:"):].split("\n\n")[0]
        for code in (0, InputError.exit_code, BudgetError.exit_code, EdgeInferError.exit_code, 130):
            assert f"`{code}`" in line, code
        assert "ctx.exit(130)" in (ROOT / "edge_infer" / "cli_group.py").read_text()


class TestNodeDocs:
    TEXT = (ROOT / "docs" / "node.md").read_text(encoding="utf-8")

    def test_every_config_key_is_documented(self):
        from edge_infer.node.config import Destination, NodeConfig
        from edge_infer.node.dicomweb import WebDestination

        rows = re.findall(r"^\| (`.*?) \|", self.TEXT, re.M)
        top = {k for row in rows if not row.startswith("`[") for k in re.findall(r"`(\w+)`", row)}
        table = {k for row in rows if row.startswith("`[destination]`") for k in re.findall(r"`(\w+)`", row)}
        assert top | {"destination"} == {f.name for f in fields(NodeConfig)}
        assert table == {f.name for f in (*fields(Destination), *fields(WebDestination))}

    def test_toml_example_loads(self):
        from edge_infer.node.config import from_mapping
        from edge_infer.toml_files import tomllib

        example = (ROOT / "docker" / "deploy" / "node.toml").read_text(encoding="utf-8")
        cfg = from_mapping(tomllib.loads(example))
        assert cfg.destination is not None and cfg.spool

    @pytest.mark.parametrize("doc", ["docs/node.md", "docs/boards.md", "docs/performance.md", "docker/README.md"])
    def test_readme_links_resolve(self, doc):
        assert f"({doc})" in README and (ROOT / doc).is_file()
