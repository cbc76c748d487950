"""The shape of the code itself (issue 12's goal): small functions, small modules, no import
cycles, and a slim runtime that never imports torch or the export stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
MAX_MODULE_LINES = 400


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_click_command(node: ast.AST) -> bool:
    """Click commands are exempt: their parameters are the command's options."""
    for dec in getattr(node, "decorator_list", []):
        target = dec.func if isinstance(dec, ast.Call) else dec
        text = ast.unparse(target)
        if text.endswith((".command", ".group")) or text in ("click.command", "click.group"):
            return True
    return False


def functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_click_command(node):
            yield node


def imported_modules(path: Path, package: str) -> set[str]:
    """The modules of ``package`` that ``path`` imports at module level or inside functions."""
    me = module_name(path)
    pkg_parts = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == package:
                found.add(name)
                for alias in node.names:
                    found.add(f"{name}.{alias.name}")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == package)
    return found


class TestFunctionSize:
    @pytest.mark.parametrize("package", ["edge_infer"])
    def test_no_long_functions(self, package):
        long = [f"{p.relative_to(ROOT)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
                for p in modules(package) for f in functions(p)
                if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
        assert not long, "functions over {} lines:\n".format(MAX_FUNCTION_LINES) + "\n".join(long)

    @pytest.mark.parametrize("package", ["edge_infer"])
    def test_no_long_parameter_lists(self, package):
        def count(f) -> int:
            a = f.args
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
            return len([n for n in names if n not in ("self", "cls")])

        many = [f"{p.relative_to(ROOT)}:{f.lineno} {f.name} ({count(f)} parameters)"
                for p in modules(package) for f in functions(p) if count(f) > MAX_PARAMETERS]
        assert not many, "functions over {} parameters:\n".format(MAX_PARAMETERS) + "\n".join(many)


class TestModuleSize:
    @pytest.mark.parametrize("package", ["edge_infer"])
    def test_no_long_modules(self, package):
        long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in modules(package)
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
        assert not long, "modules over {} lines:\n".format(MAX_MODULE_LINES) + "\n".join(long)


class TestImports:
    @pytest.mark.parametrize("package", ["edge_infer", "bench"])
    def test_no_import_cycles(self, package):
        paths = {module_name(p): p for p in modules(package)}
        graph = {m: {d for d in imported_modules(p, package) if d in paths and d != m} for m, p in paths.items()}
        # a package's __init__ importing its own submodules is not a cycle of concern
        for m in graph:
            graph[m] = {d for d in graph[m] if not d.startswith(m + ".")}
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(m: str) -> list[str] | None:
            state[m] = 1
            stack.append(m)
            for d in sorted(graph[m]):
                if state.get(d) == 1:
                    return stack[stack.index(d):] + [d]
                if d not in state and (cycle := visit(d)):
                    return cycle
            stack.pop()
            state[m] = 2
            return None

        for m in sorted(graph):
            if m not in state and (cycle := visit(m)):
                pytest.fail("import cycle: " + " -> ".join(cycle))

    def test_runtime_imports_no_torch_or_export(self):
        bad = []
        for p in modules("edge_infer"):
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                bad += [f"{p.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                        if n.split(".")[0] in ("torch", "export", "edge_infer_export")]
        assert not bad, "\n".join(bad)
