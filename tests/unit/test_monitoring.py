"""k8s/monitoring: the alert rules pass `promtool check rules` and their own `promtool test rules`
cases; the Grafana dashboard's queries parse as PromQL, name only series the runner exports,
and cover what the issue asks for. (tests/e2e/test_observe_run.py runs the dashboard's queries
against a real Prometheus that scraped a smoke run.)"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from runner.observe import names as N
from tests.observe_tools import require_tool

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "k8s" / "monitoring"
DASHBOARD = json.loads((MONITORING / "grafana-dashboard.json").read_text())


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    tool = require_tool("promtool", "prometheus")
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def exprs_of_dashboard() -> list[str]:
    return [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]


def series_used(expr: str) -> set[str]:
    return {re.sub(r"_(bucket|count|sum)$", "", m) for m in re.findall(r"\btrainingjob_[a-z_]+", expr)}


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_alert_rules_fire_on_their_cases_and_not_otherwise() -> None:
    result = promtool("test", "rules", "alerts_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_stalled_diverged_and_failed() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {"TrainingJobStalled", "TrainingJobDiverged", "TrainingJobFailed",
                                           "TrainingJobPodNotStarting"}
    # The trainer stops before a loss sample can be NaN: the alert reads the series it sets
    # (tests/e2e/test_observe_run.py evaluates it on a real diverged run's scrapes).
    diverged = next(r for r in rules if r["alert"] == "TrainingJobDiverged")
    assert series_used(diverged["expr"]) == {N.TRAIN_DIVERGED}
    stalled = next(r for r in rules if r["alert"] == "TrainingJobStalled")
    assert N.LAST_PROGRESS in stalled["expr"] and "600" in stalled["expr"]
    assert N.PHASE in stalled["expr"] and "3600" in stalled["expr"]  # long phases get an hour
    failed = next(r for r in rules if r["alert"] == "TrainingJobFailed")
    # Jobs a TrainingJob owns, not Jobs named like them (nightly-train); the cases are in alerts_test.yaml.
    assert 'kube_job_owner{owner_kind="TrainingJob"}' in failed["expr"] and "job_name=~" not in failed["expr"]
    for r in rules:
        assert series_used(r["expr"]) <= set(N.BY_NAME), r["alert"]


def test_pods_that_never_start_alert_like_the_operator_reports_them() -> None:
    """kube-state-metrics' waiting reasons, joined through the pod's Job to its TrainingJob, after
    as long as the operator waits before it reports ContainerCreatingTooLong."""
    from runner.k8s import status as st

    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"][0]["rules"]
    rule = next(r for r in rules if r["alert"] == "TrainingJobPodNotStarting")
    assert "kube_pod_container_status_waiting_reason" in rule["expr"] and 'kube_pod_owner{owner_kind="Job"}' in rule["expr"]
    assert 'kube_job_owner{owner_kind="TrainingJob"}' in rule["expr"]
    for reason in ("ContainerCreating", *st.IMAGE_PULL_REASONS, *st.CREATE_CONTAINER_REASONS):
        assert reason in rule["expr"], reason
    assert rule["for"] == f"{st.CONTAINER_CREATING_AFTER_S // 60}m"


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every expression of a rule file: wrap the panels' queries in one."""
    rules = [{"record": f"dashboard:panel_{i}", "expr": e.replace("$job", ".+").replace("$__rate_interval", "1m")}
             for i, e in enumerate(exprs_of_dashboard())]
    (tmp_path / "panels.yaml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = promtool("check", "rules", "panels.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_names_only_exported_series_and_covers_the_issue() -> None:
    used = set().union(*map(series_used, exprs_of_dashboard()))
    assert used <= set(N.BY_NAME), used - set(N.BY_NAME)
    for required in (N.TRAIN_LOSS, N.TRAIN_SAMPLES, N.TRAIN_ETA, N.CACHE_ITEMS_DONE, N.CACHE_ITEMS,
                     N.GPU_MEMORY_ALLOCATED, N.GPU_MEMORY_PEAK):
        assert required in used, required
    # Rates come from counters through rate(), never from a gauge that holds a precomputed rate.
    exprs = exprs_of_dashboard()
    assert not any(N.TRAIN_SAMPLES_PER_SECOND in e or N.CACHE_ENCODE_RATE in e for e in exprs)
    assert any(f"rate({N.TRAIN_SAMPLES}{{" in e for e in exprs)


def test_dashboard_is_a_grafana_dashboard() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["namespace"]["query"]["query"] == f"label_values({N.STAGE}, namespace)"
    assert variables["trainingjob"]["query"]["query"] == \
        f'label_values({N.STAGE}{{namespace=~"$namespace"}}, {N.JOB_LABEL})'
    assert variables["namespace"]["allValue"] == ".*"  # a local run has no namespace label
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        sel = f'namespace=~"$namespace", {N.JOB_LABEL}=~"$trainingjob"'
        assert all(t["expr"].count(sel) == t["expr"].count("trainingjob_") for t in p["targets"]), p["title"]
        # Prometheus's `job` is the scrape job, never the TrainingJob: no panel selects or groups by it.
        assert all(not re.search(r"\bjob\b", t["expr"] + t["legendFormat"]) for t in p["targets"]), p["title"]


@pytest.mark.parametrize("name", [s.name for s in N.SERIES])
def test_readme_lists_every_series(name: str) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Metrics and the run report"):]
    assert f"`{name}`" in section


def test_promtool_accepts_the_operators_metrics() -> None:
    from prometheus_client import generate_latest

    from runner.k8s.operator import OperatorMetrics

    metrics = OperatorMetrics()
    metrics.reconciles.labels("create", "ok").inc()
    metrics.errors.labels("TemporaryError").inc()
    metrics.observe_state(("ml", "pixart"), "Training")
    text = generate_latest(metrics.registry).decode()
    assert "trainingjob_operator_reconciles_total" in text
    result = subprocess.run([require_tool("promtool", "prometheus"), "check", "metrics"], input=text,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
