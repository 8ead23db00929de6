"""Layer contracts: which parts of the runner may import which. Each test fails, naming the
module and the import, when a change crosses a layer.

- The light side (the spec, the CLI, the importers, smoke planning, the Kubernetes code, the
  model registry) imports only the standard library, PyYAML and jsonschema when it is
  imported, however deep the chain of runner modules: `validate`, `explain`, `schema`, `init`,
  `import-simpletuner` and the operator stay fast and work without the training extras.
  Heavy imports belong inside the functions that need them (e.g. `cmd_run`).
- Stages and models run inside pods and talk to the cluster only through files, env and
  metrics: they never import Kubernetes, even lazily. Kubernetes code never reaches the
  training stack, even lazily (the operator image has no torch).
- The data layer never imports torch (dataset preflight runs in `validate`).
- A model family imports no stage: stages call families, never the other way round.
- Nothing outside runner/models imports a concrete family: the stages get one from the
  registry by `spec.model.family`.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from runner.models import registry
from runner.spec import schema as schema_mod

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "runner"
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "torchvision")
LIGHT_THIRD_PARTY = {"yaml", "jsonschema"}
# The operator (its handlers, and the resync they start) is the one light part with third-party
# dependencies of its own (the `operator` extra; urllib3 comes with the kubernetes client, whose
# connection errors are urllib3's); what it imports from the runner is checked like everything else.
OPERATOR_MODULES = ("runner.k8s.operator", "runner.k8s.resync")
OPERATOR_THIRD_PARTY = {"kopf", "kubernetes", "prometheus_client", "urllib3"}
LIGHT_PACKAGES = ("runner.spec", "runner.importers", "runner.k8s", "runner.smoke")
LIGHT_MODULES = ("runner", "runner.__main__", "runner.cli", "runner.files", "runner.exitcodes", "runner.envvars",
                 "runner.models", "runner.models.registry", "runner.models.family", "runner.observe.names",
                 "runner.launch", "runner.launch.images", "runner.launch.torchrun", "runner.launch.nodes")
STAGES = ("runner.cache", "runner.train", "runner.launch")
KUBERNETES = ("kubernetes", "kopf", "runner.k8s")
TRAINING_STACK = ("runner.cache", "runner.train", "runner.launch.run", "runner.models", "runner.data", "runner.evaluation")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(RUNNER.rglob("*.py"))}


def is_under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports(path: Path, module_level: bool) -> list[str]:
    """Absolute names imported by a module (`from a import b` gives `a` and `a.b`, so importing a
    submodule that way counts). `module_level`: only what runs when the module is imported, not
    what runs inside functions and classes or under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = []
    if module_level:
        stack = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                stack.extend(node.orelse)  # annotations only: never runs
                continue
            nodes.append(node)
            stack.extend(ast.iter_child_nodes(node))
    else:
        nodes = list(ast.walk(tree))
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


@lru_cache(maxsize=None)
def module_level_imports(name: str) -> tuple[str, ...]:
    return tuple(_imports(MODULES[name], module_level=True))


def all_imports(name: str) -> list[str]:
    return _imports(MODULES[name], module_level=False)


def loaded_with(name: str) -> dict[str, str]:
    """Every name imported when `name` is imported, with the runner module that imports it:
    module-level imports, followed through the runner's own modules (and the packages above
    each, which Python imports first)."""
    found: dict[str, str] = {}
    visited, todo = {name}, [name]
    while todo:
        current = todo.pop()
        for imported in module_level_imports(current):
            found.setdefault(imported, current)
            chain = imported.split(".")
            for parent in (".".join(chain[:i]) for i in range(1, len(chain) + 1)):
                if parent in MODULES and parent not in visited:
                    found.setdefault(parent, current)
                    visited.add(parent)
                    todo.append(parent)
    return found


LIGHT = sorted(n for n in MODULES if is_under(n, LIGHT_PACKAGES) or n in LIGHT_MODULES)


def test_the_light_side_is_what_it_says():
    """Guard against the list going stale: every named light module exists."""
    assert [n for n in LIGHT_MODULES if n not in MODULES] == []
    assert all(any(is_under(n, [p]) for n in MODULES) for p in LIGHT_PACKAGES)


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_load_nothing_heavy(module):
    allowed = LIGHT_THIRD_PARTY | (OPERATOR_THIRD_PARTY if module in OPERATOR_MODULES else set())
    offenders = []
    for name, importer in loaded_with(module).items():
        top = name.split(".")[0]
        if top == "runner":
            if name in MODULES and name not in LIGHT:
                offenders.append(f"{importer} imports {name}, which is not on the light side")
        elif top not in sys.stdlib_module_names and top != "__future__" and top not in allowed:
            offenders.append(f"{importer} imports {name} at module level")
    assert offenders == [], f"importing {module}:"


def test_importing_the_light_side_loads_no_torch():
    """The same, measured: import every light module in a fresh interpreter."""
    code = ("import importlib, sys\n"
            f"for name in {[n for n in LIGHT if n != 'runner.__main__']!r}:\n    importlib.import_module(name)\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_run_is_the_only_command_that_reaches_the_stages():
    source = (RUNNER / "cli.py").read_text()
    assert source.count("runner.launch.run") == 1 and "from runner.launch.run import run_job" in source


@pytest.mark.parametrize("package", [*STAGES, "runner.models", "runner.data", "runner.evaluation", "runner.observe"])
def test_stages_and_models_never_import_kubernetes(package):
    """Stages run inside pods; they talk to the cluster only through files, env and metrics."""
    offenders = [f"{n}: {imp}" for n in MODULES if is_under(n, [package])
                 for imp in all_imports(n) if is_under(imp, KUBERNETES)]
    assert offenders == []


def test_kubernetes_code_never_reaches_the_training_stack():
    """The operator image has no torch: nothing under runner/k8s may reach it, even lazily."""
    offenders = [f"{n}: {imp}" for n in MODULES if is_under(n, ["runner.k8s"])
                 for imp in all_imports(n)
                 if imp.split(".")[0] in HEAVY or is_under(imp, TRAINING_STACK)]
    assert offenders == []


def test_the_kubernetes_modules_import_one_another_without_a_cycle():
    """operator.py's handlers sit on resync.py, which sits on reconcile.py and the rest, never
    the other way round (lazily neither)."""
    graph = {n: {i for i in all_imports(n) if i in MODULES and i != n and is_under(i, ["runner.k8s"])}
             for n in MODULES if is_under(n, ["runner.k8s"])}
    cycles, done = [], set()

    def visit(name: str, path: list[str]) -> None:
        for imported in sorted(graph[name]):
            if imported in path:
                cycles.append(" -> ".join(path[path.index(imported):] + [imported]))
            elif imported not in done:
                visit(imported, path + [imported])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])
    assert cycles == []


def test_the_data_layer_never_imports_torch():
    """Dataset preflight runs in `validate`, which must stay light."""
    offenders = [f"{n}: {imp}" for n in MODULES if is_under(n, ["runner.data"])
                 for imp in all_imports(n) if imp.split(".")[0] in HEAVY]
    assert offenders == []


def test_model_families_import_no_stage():
    """Stages call a family through runner.models.family.ModelFamily; a family that called back
    into a stage would tie the two together again."""
    offenders = [f"{n}: {imp}" for n in MODULES if is_under(n, ["runner.models"])
                 for imp in all_imports(n) if is_under(imp, [*STAGES, "runner.smoke", "runner.k8s", "runner.cli"])]
    assert offenders == []


CONCRETE_FAMILIES = sorted({t.implementation for t in registry.FAMILIES.values()})


def test_the_registry_names_every_family_module():
    assert CONCRETE_FAMILIES and all(name in MODULES for name in CONCRETE_FAMILIES)


def test_nothing_outside_models_imports_a_concrete_family():
    """Stages, training, validation, smoke and the cache get their family from
    runner.models.registry by spec.model.family, so adding one touches none of them."""
    offenders = [f"{n}: {imp}" for n in MODULES if not is_under(n, ["runner.models"])
                 for imp in all_imports(n) if is_under(imp, CONCRETE_FAMILIES)]
    assert offenders == []


def test_every_schema_field_name_is_camel_case():
    bad = [path for path, _ in schema_mod.iter_fields()
           if not re.fullmatch(r"[a-z][a-zA-Z0-9]*", path.rsplit(".", 1)[-1])]
    assert bad == []
