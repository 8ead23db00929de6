"""Where the CRD and the schema agree beyond the spec: a root CEL rule refuses the names the
schema refuses (the API server alone takes any DNS-1123 subdomain), and a resource quantity may be
a number, as a pod's may (`cpu: 0.5`)."""
from __future__ import annotations

import pytest
import yaml

from tests.unit.test_crd import REPO, _doc, as_typed, openapi_validator, root_schema


def failing_root_rules(doc: dict) -> list[str]:
    """Messages of the root rules that read only `self` (cel-python), on a create."""
    import celpy

    env, root = celpy.Environment(), root_schema()
    act = {"self": celpy.json_to_cel(as_typed(doc, root))}
    return [r["message"] for r in root["x-kubernetes-validations"] if "oldSelf" not in r["rule"]
            and not env.program(env.compile(r["rule"])).evaluate(act)]


@pytest.mark.parametrize("name, ok", [
    ("smoke", True), ("a", True), ("9lives", True), ("a" * 63, True), ("my-job-2", True),
    ("a" * 64, False),  # a DNS-1123 label is at most 63
    ("My_Job", False), ("-job", False), ("job-", False), ("my.job", False),  # a subdomain, not a label
])
def test_the_crd_refuses_a_name_the_operator_would_fail(name, ok):
    """The API server takes any DNS-1123 subdomain (253 characters, dots); the schema wants a
    label of at most 63, so such a TrainingJob was accepted and then failed as InvalidSpec."""
    from runner.spec.validate import schema_problems

    doc = {**_doc(), "metadata": {"name": name}}
    failures = failing_root_rules(doc)
    assert (failures == []) == ok, failures
    if not ok:
        assert failures[0].startswith("metadata.name must be a DNS-1123 label of at most 63 characters")
    assert (not [p for p in schema_problems(doc) if p.startswith("metadata.name")]) == ok  # the same rule


@pytest.mark.parametrize("cpu, ok", [
    (0.5, True), (2, True), ("500m", True), ("1.5", True), (0, True),
    (-1, False), ("-1", False), ("half", False), ("1e3", False),
])
def test_a_quantity_may_be_a_number_as_in_a_pod(cpu, ok):
    """`cpu: 0.5` is a valid pod (the API server turns it into 500m) and was refused as "a number"."""
    from runner.spec.validate import schema_problems

    doc = yaml.safe_load((REPO / "k8s" / "example-trainingjob.yaml").read_text())
    doc["spec"]["kubernetes"]["resources"]["requests"]["cpu"] = cpu
    crd_problems = list(openapi_validator().iter_errors(doc))
    assert (crd_problems == []) == ok, [e.message for e in crd_problems]
    problems = schema_problems(doc)
    assert (problems == []) == ok, problems
    if not ok:
        assert problems[0].startswith("spec.kubernetes.resources.requests.cpu: ")


def test_a_fractional_cpu_renders_into_valid_pods():
    import kubernetes_validate

    from runner.k8s.build import Options
    from runner.k8s.render import render_objects
    from tests.unit.test_k8s_build import VERSIONS, make_doc

    doc = make_doc(resources={"requests": {"cpu": 0.5, "memory": "4Gi"}, "limits": {"cpu": 2.5}})
    jobs = [o for o in render_objects(doc, Options()) if o["kind"] == "Job"]
    for job in jobs:
        assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == 0.5
        for version in VERSIONS:
            kubernetes_validate.validate(job, version, strict=True)
