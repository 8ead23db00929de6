"""`make e2e-kind`: the whole flow on a real cluster (kind or any kubeconfig): the CRD, the
operator (run here, out of cluster, with your kubeconfig), PVCs and the CPU smoke TrainingJob,
until it succeeds. Skips with the reason where no cluster answers.

The trainer pods need the CPU image in the cluster: set TRAININGJOB_E2E_REGISTRY/VERSION to
where `make image HW=cpu` pushed it; on kind the test loads a local image (podman's or
docker's) into the nodes as an archive (`kind load image-archive`) when it exists.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from runner.launch.images import DEFAULT_REGISTRY, image_ref

pytestmark = [pytest.mark.e2e, pytest.mark.kind]
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = int(os.environ.get("TRAININGJOB_E2E_TIMEOUT", "1200"))


def kubectl(*args: str, check: bool = True, input: str | None = None, timeout: int = 120):
    exe = Path(sys.executable).parent / "kubectl"
    proc = subprocess.run([str(exe) if exe.exists() else "kubectl", *args], capture_output=True, text=True,
                          input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def cluster():
    if not os.environ.get("TRAININGJOB_E2E_KIND"):
        pytest.skip("runs only through `make e2e-kind` (it needs a cluster and minutes)")
    probe = kubectl("cluster-info", "--request-timeout=5s", check=False, timeout=30)
    if probe.returncode != 0:
        pytest.skip("no Kubernetes cluster answers (kubectl cluster-info failed): create one with "
                    "`kind create cluster` or point KUBECONFIG at one; " + probe.stderr.strip()[:200])
    return kubectl("config", "current-context").stdout.strip()


def load_into_kind(image: str, cluster: str, tmp_path: Path) -> str:
    """Put a locally built image into the kind nodes, as an archive: `make image` builds with
    podman (or buildah, into podman's store) before docker, and `kind load docker-image` sees
    only docker's. Without a local image the nodes pull it from the registry."""
    for engine in ("podman", "docker"):
        if not shutil.which(engine) or subprocess.run([engine, "image", "inspect", image],
                                                      capture_output=True).returncode != 0:
            continue
        archive = tmp_path / "image.tar"
        subprocess.run([engine, "save", *(["--format", "docker-archive"] if engine == "podman" else []),
                        "-o", str(archive), image], check=True, capture_output=True)
        proc = subprocess.run(["kind", "load", "image-archive", str(archive), "--name", cluster],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"kind load image-archive {image} (from {engine}): {proc.stderr[-1000:]}")
        return f"loaded {image} from {engine} into kind cluster {cluster}"
    return f"{image} is not built here (make image HW=cpu): the kind nodes pull it from its registry"


def test_smoke_job_runs_cache_then_train_on_a_real_cluster(cluster, tmp_path):
    registry = os.environ.get("TRAININGJOB_E2E_REGISTRY", DEFAULT_REGISTRY)
    version = os.environ.get("TRAININGJOB_E2E_VERSION")
    image = image_ref("cpu", registry=registry, **({"version": version} if version else {}))
    if cluster.startswith("kind-") and shutil.which("kind"):
        print(load_into_kind(image, cluster[len("kind-"):], tmp_path))
    ns = f"tj-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "--server-side", "-f", str(REPO / "k8s" / "crd.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/trainingjobs.diffusion.runner.dev", "--timeout=60s")
    kubectl("create", "namespace", ns)
    operator = None
    try:
        kubectl("apply", "-n", ns, "-f", str(REPO / "k8s" / "example-pvcs.yaml"))
        args = [sys.executable, "-m", "runner", "operator", "--namespace", ns, "--registry", registry,
                "--metrics-port", "0", "--health-port", "0"]
        if version:
            args += ["--version", version]
        operator = subprocess.Popen(args, cwd=REPO, stdout=open(tmp_path / "operator.log", "w"),
                                    stderr=subprocess.STDOUT)
        kubectl("apply", "-n", ns, "-f", str(REPO / "k8s" / "example-trainingjob.yaml"))
        deadline, status = time.time() + TIMEOUT_S, {}
        while time.time() < deadline:
            status = json.loads(kubectl("get", "-n", ns, "trainingjob", "smoke", "-o", "json").stdout).get("status", {})
            if status.get("state") in ("Succeeded", "Failed"):
                break
            time.sleep(5)
        table = kubectl("get", "-n", ns, "trainingjobs").stdout
        print(table, yaml.safe_dump(status), sep="\n")
        assert status.get("state") == "Succeeded", (status, (tmp_path / "operator.log").read_text()[-3000:])
        assert "Succeeded" in table  # the State column
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["Cached"] == conditions["Complete"] == "True" and conditions["Failed"] == "False"
        jobs = json.loads(kubectl("get", "-n", ns, "jobs", "-o", "json").stdout)["items"]
        assert sorted(j["metadata"]["name"] for j in jobs) == ["smoke-cache", "smoke-train"]
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        kubectl("delete", "namespace", ns, "--wait=false", check=False)
