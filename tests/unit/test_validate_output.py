"""What CI tools expect from the CLI: --version, `validate -` (standard input) and
`validate --output json` (every problem of many files as {file, field, message, severity})."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.spec.problems import record

REPO = Path(__file__).resolve().parents[2]
SMOKE = (REPO / "examples" / "smoke.yaml").read_text()


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=REPO, input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_version():
    from runner import __version__

    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"trainingjob {__version__}"


def test_validate_reads_standard_input():
    proc = run("validate", "-", stdin=SMOKE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "<stdin>: valid TrainingJob 'smoke'"
    bad = run("validate", "-", stdin=SMOKE.replace("maxSteps: 20", "maxSteps: 0"))
    assert bad.returncode == 2
    assert "<stdin>: spec.training.maxSteps: 0 is less than the minimum of 1" in bad.stderr


def test_standard_input_named_twice_is_refused():
    proc = run("validate", "-", "examples/smoke.yaml", "-", stdin=SMOKE)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "standard input (-) is named 2 times; it can be read once" in proc.stderr


def test_json_output_has_a_record_per_problem_across_files(tmp_path, minimal_spec):
    bad = tmp_path / "bad.yaml"
    bad.write_text(minimal_spec.replace("maxSteps: 10", "maxSteps: 0\n    batchSize: nope")
                   + "  validation:\n    guidance: 9\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    proc = run("validate", "--output", "json", "examples/smoke.yaml", str(bad), str(broken), "-", stdin=SMOKE)
    assert proc.returncode == 2
    assert proc.stderr == ""
    out = json.loads(proc.stdout)
    assert out["valid"] is False
    assert out["files"] == [
        {"file": "examples/smoke.yaml", "name": "smoke", "valid": True, "datasets": []},
        {"file": str(bad), "name": "corpus", "valid": False, "datasets": []},  # invalid, but its name is valid
        {"file": str(broken), "name": None, "valid": False, "datasets": []},
        {"file": "<stdin>", "name": "smoke", "valid": True, "datasets": []},
    ]
    by_field = {(p["file"], p["field"]): p for p in out["problems"]}
    assert by_field[(str(bad), "spec.training.maxSteps")] == {
        "file": str(bad), "field": "spec.training.maxSteps", "message": "0 is less than the minimum of 1",
        "severity": "error"}
    assert by_field[(str(bad), "spec.training.batchSize")]["message"] == "'nope' is a string, expected integer"
    assert by_field[(str(bad), "spec.validation.guidance")]["severity"] == "warning"
    syntax = [p for p in out["problems"] if p["file"] == str(broken)]
    assert len(syntax) == 1 and syntax[0]["field"] is None and "YAML syntax error" in syntax[0]["message"]


def test_json_output_of_valid_files_exits_0():
    proc = run("validate", "-o", "json", "examples/smoke.yaml", "examples/pixart-sigma-1024.yaml")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"valid": True, "problems": [], "files": [
        {"file": "examples/smoke.yaml", "name": "smoke", "valid": True, "datasets": []},
        {"file": "examples/pixart-sigma-1024.yaml", "name": "pixart-sigma-1024", "valid": True, "datasets": []}]}


@pytest.mark.parametrize("line, field, message, severity", [
    ("a.yaml: spec.datasets[0].crop: True is not a string", "spec.datasets[0].crop", "True is not a string", "error"),
    ("a.yaml: warning: spec.validation.guidance: 9 is outside", "spec.validation.guidance", "9 is outside", "warning"),
    ("a.yaml: metadata.name: required field is missing", "metadata.name", "required field is missing", "error"),
    ("a.yaml: --set spec.training.x: unknown field", "--set spec.training.x", "unknown field", "error"),
    ("a.yaml: (document): expected a mapping", "(document)", "expected a mapping", "error"),
    # no field: the line stays whole rather than being split at a guess
    ("a.yaml: line 3, column 1: YAML syntax error: x", None, "line 3, column 1: YAML syntax error: x", "error"),
    ("a.yaml: the file is empty; expected a TrainingJob", None, "the file is empty; expected a TrainingJob", "error"),
])
def test_problem_lines_become_records(line, field, message, severity):
    p = record(line, "a.yaml")
    assert (p.file, p.field, p.message, p.severity, p.text) == ("a.yaml", field, message, severity, line)


@pytest.mark.parametrize("doc, expected", [
    ({"metadata": {"name": "smoke"}, "spec": {"training": {"batchSize": -1}}}, "smoke"),
    ({"metadata": {"name": "a" * 63}}, "a" * 63),
    ({"metadata": {"name": "a" * 64}}, None),     # longer than a DNS label
    ({"metadata": {"name": "Smoke_1"}}, None),    # not a DNS label
    ({"metadata": {"name": 7}}, None),
    ({"metadata": {}}, None),
    ({"metadata": ["name"]}, None),
    (["metadata"], None),
    (None, None),
])
def test_valid_name_table(doc, expected):
    from runner.spec.problems import valid_name

    assert valid_name(doc) == expected


def test_json_output_names_an_invalid_spec_whose_name_is_valid(tmp_path):
    proc = run("validate", "examples/smoke.yaml", "--set", "spec.training.batchSize=-1", "--output", "json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["files"] == [{"file": "examples/smoke.yaml", "name": "smoke", "valid": False,
                                                 "datasets": []}]
    renamed = run("validate", "examples/smoke.yaml", "--set", "spec.training.batchSize=-1",
                  "--set", "metadata.name=other", "-o", "json")
    assert json.loads(renamed.stdout)["files"][0]["name"] == "other"
    bad_name = run("validate", "examples/smoke.yaml", "--set", "metadata.name=Not_A_Label", "-o", "json")
    assert json.loads(bad_name.stdout)["files"][0]["name"] is None


def test_json_output_carries_the_dataset_lines_and_the_warnings(tmp_path, minimal_spec):
    """What the text output prints under a valid file (a line per local dataset) is in the JSON
    too, per file; warnings are problem records with severity warning and leave the file valid."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, size in enumerate([(256, 256)] * 5 + [(256, 384), (640, 256)]):
        Image.new("RGB", size, (30 * i, 90, 200)).save(photos / f"photo-{i}.png")
    spec = tmp_path / "job.yaml"
    spec.write_text(minimal_spec.replace("/nonexistent-trainingjob-corpus/photos", str(photos)).replace(
        "      path:", "      crop: true\n      cropAspect: preserve\n      resolution: 128\n"
        "      resolutionType: pixel\n      path:")
        + "    batchSize: 2\n  validation:\n    guidance: 9\n")
    line = ("spec.datasets[0] (photos): 5 usable images: 128x128 5; 2 in buckets too small for one batch of 2 are "
            "dropped (128x192 1, 320x128 1)")
    text = run("validate", str(spec))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [f"{spec}: valid TrainingJob 'corpus'", f"  {line}"]
    out = json.loads(run("validate", str(spec), "--output", "json").stdout)
    assert out["valid"] is True
    assert out["files"] == [{"file": str(spec), "name": "corpus", "valid": True, "datasets": [line]}]
    assert [(p["field"], p["severity"]) for p in out["problems"]] == [("spec.validation.guidance", "warning")]
    # An invalid file keeps the lines of its datasets that passed; its problems say why it is invalid.
    broken = run("validate", str(spec), "--set", f"spec.training.resume={tmp_path / 'gone'}", "-o", "json")
    assert broken.returncode == 2
    out = json.loads(broken.stdout)
    assert out["files"] == [{"file": str(spec), "name": "corpus", "valid": False, "datasets": [line]}]
    assert [(p["field"], p["severity"]) for p in out["problems"]] == [
        ("spec.validation.guidance", "warning"), ("spec.training.resume", "error")]
