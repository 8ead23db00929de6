"""`make test` installs the extras it names (Makefile: `-e '.[train,samples,operator,dev]'`), so no
test may skip for want of one of their packages: a skip there would be a test that can never
fail, hiding a broken import as a pass. Tests that need torch, diffusers or accelerate import
them at the top and fail loudly when they are missing.

Skips for what `make test` cannot install everywhere (a system binary, root capabilities, a
cluster) stay allowed: they name what is missing (e.g. tests/observe_tools.require_tool).
"""
from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_by_make_test() -> set[str]:
    """Top-level module names of every distribution in the extras `make test` installs."""
    extras = re.search(r"-e '\.\[([\w,]+)\]'", (REPO / "Makefile").read_text()).group(1).split(",")
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = {_normal(re.split(r"[<>=!~\[ ;]", req)[0]) for extra in extras for req in optional[extra]}
    return {module for module, dists in packages_distributions().items()
            if any(_normal(d) in wanted for d in dists)}


def _module_of(node: ast.AST) -> str | None:
    return node.value.split(".")[0] if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_skip(node: ast.AST) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return isinstance(func, ast.Attribute) and func.attr in ("skip", "importorskip")


def skips_for_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of each `pytest.importorskip("m")`, and of each `try: import m` whose
    ImportError handler skips."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)) \
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "importorskip" and node.args:
            found += [(node.lineno, m) for m in [_module_of(node.args[0])] if m]
        if isinstance(node, ast.Try):
            skipping = any(any(_is_skip(n) for n in ast.walk(h)) for h in node.handlers)
            if skipping:
                for stmt in node.body:
                    if isinstance(stmt, ast.Import):
                        found += [(stmt.lineno, a.name.split(".")[0]) for a in stmt.names]
                    elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
                        found.append((stmt.lineno, stmt.module.split(".")[0]))
    return sorted(found)


def test_the_installed_set_holds_the_core_training_stack():
    assert {"torch", "diffusers", "accelerate", "transformers", "safetensors", "torchmetrics"} <= installed_by_make_test()


def test_the_scan_finds_both_ways_of_skipping():
    # Made-up module names: this sample is parsed, never run, and names no real dependency.
    source = ('import pytest\nlib = pytest.importorskip("example_lib")\n'
              'try:\n    import example_pkg.utils\nexcept ImportError:\n    pytest.skip("no example_pkg")\n')
    assert skips_for_modules(source) == [(2, "example_lib"), (4, "example_pkg")]


def test_no_test_skips_for_a_package_make_test_installs():
    installed = installed_by_make_test()
    offenders = [f"{path.relative_to(REPO)}:{line}: skips when {module} is missing; import it instead "
                 "(make test installs it)"
                 for path in sorted(TESTS.rglob("*.py"))
                 for line, module in skips_for_modules(path.read_text()) if module in installed]
    assert not offenders, "\n".join(offenders)
