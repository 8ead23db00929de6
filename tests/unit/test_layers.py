"""Layering: the spec/CLI modules import only the standard library, PyYAML, jsonschema and each
other at module level, so `validate`, `explain`, `schema`, `init` and `import-simpletuner` stay
fast and work without the training extras. Heavy imports belong inside the functions that need
them (e.g. `cmd_run`)."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from runner.spec import schema as schema_mod

REPO = Path(__file__).resolve().parents[2]
LIGHT_MODULES = ["runner/cli.py", "runner/spec/load.py", "runner/spec/schema.py", "runner/spec/semantics.py",
                 "runner/spec/explain.py", "runner/spec/starter.py", "runner/importers/simpletuner/config.py",
                 "runner/k8s/__init__.py", "runner/k8s/crd.py", "runner/spec/redact.py", "runner/models/registry.py",
                 "runner/k8s/build.py", "runner/k8s/render.py", "runner/k8s/reconcile.py", "runner/k8s/status.py",
                 "runner/k8s/progress.py", "runner/launch/images.py", "runner/launch/torchrun.py",
                 "runner/launch/nodes.py",
                 "runner/spec/problems.py", "runner/smoke/__init__.py", "runner/smoke/command.py",
                 "runner/smoke/session.py", "runner/smoke/shrink.py", "runner/smoke/checks.py",
                 "runner/smoke/report.py"]
LIGHT_RUNNER = {"runner", "runner.spec", "runner.spec.load", "runner.spec.schema", "runner.spec.semantics", "runner.spec.explain",
                "runner.spec.starter", "runner.importers.simpletuner.config", "runner.k8s", "runner.k8s.crd", "runner.spec.redact",
                "runner.models.registry", "runner.k8s.build", "runner.k8s.render", "runner.k8s.status",
                "runner.k8s.progress", "runner.k8s.reconcile", "runner.launch", "runner.launch.images",
                "runner.launch.torchrun", "runner.__version__",
                "runner.spec.problems", "runner.smoke", "runner.smoke.session",
                "runner.smoke.shrink", "runner.smoke.checks", "runner.smoke.report"}
THIRD_PARTY = {"yaml", "jsonschema"}


def module_level_imports(path: Path) -> list[str]:
    """Imports executed when the module is imported (not those inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in tree.body:
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else []:
            if isinstance(sub, ast.Import):
                names += [alias.name for alias in sub.names]
            elif isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                names += [sub.module] + [f"{sub.module}.{alias.name}" for alias in sub.names
                                         if sub.module == "runner"]
    return names


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_import_nothing_heavy_at_module_level(module):
    for name in module_level_imports(REPO / module):
        top = name.split(".")[0]
        if top == "runner":
            assert name in LIGHT_RUNNER, f"{module} imports {name} at module level"
        else:
            assert top in sys.stdlib_module_names or top in THIRD_PARTY or top == "__future__", (
                f"{module} imports {name} at module level")


def test_run_is_the_only_command_that_reaches_the_stages():
    source = (REPO / "runner" / "cli.py").read_text()
    assert source.count("runner.launch.run") == 1 and "from runner.launch.run import run_job" in source


def test_every_schema_field_name_is_camel_case():
    bad = [path for path, _ in schema_mod.iter_fields()
           if not re.fullmatch(r"[a-z][a-zA-Z0-9]*", path.rsplit(".", 1)[-1])]
    assert bad == []


TORCH_SIDE = ["runner/cache", "runner/train", "runner/models", "runner/data", "runner/evaluation"]


def all_imports(path: Path) -> list[str]:
    """Every import in a module, including those inside functions."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", TORCH_SIDE)
def test_stages_never_import_kubernetes(package):
    """Stages run inside pods; they talk to the cluster only through files, env and metrics."""
    offenders = [f"{p.relative_to(REPO)}: {name}" for p in sorted((REPO / package).rglob("*.py"))
                 for name in all_imports(p) if name.split(".")[0] in ("kubernetes", "kopf", "runner.k8s")
                 or name.startswith("runner.k8s")]
    assert offenders == []


def test_data_layer_never_imports_torch():
    """Dataset preflight runs in `validate`, which must stay light."""
    offenders = [f"{p.relative_to(REPO)}: {name}" for p in sorted((REPO / "runner" / "data").rglob("*.py"))
                 for name in all_imports(p) if name.split(".")[0] in ("torch", "diffusers", "transformers")]
    assert offenders == []


HEAVY = ("torch", "diffusers", "transformers", "accelerate")


def test_operator_and_render_never_import_the_training_stack():
    """The operator image has no torch: nothing under runner/k8s may reach it, even lazily."""
    offenders = [f"{p.relative_to(REPO)}: {name}" for p in sorted((REPO / "runner" / "k8s").rglob("*.py"))
                 for name in all_imports(p) if name.split(".")[0] in HEAVY
                 or name.startswith(("runner.stages", "runner.train", "runner.models"))]
    assert offenders == []


def test_importing_the_operator_loads_no_torch():
    import subprocess

    code = ("import sys, runner.cli, runner.k8s.operator, runner.k8s.render, runner.k8s.reconcile; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
