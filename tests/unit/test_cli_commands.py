"""`schema`, `explain`, exit codes, and the promise that the light commands never import torch."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from runner.spec import schema as schema_mod
from runner.spec.explain import ExplainError, explain, first_sentence, resolve

REPO = Path(__file__).resolve().parents[2]


def test_schema_prints_the_json_schema(cli):
    result = cli("schema")
    assert result.code == 0
    assert json.loads(result.out) == schema_mod.load_schema()


def test_schema_as_yaml(cli):
    result = cli("schema", "--format", "yaml")
    assert result.code == 0
    assert yaml.safe_load(result.out) == schema_mod.load_schema()


def test_explain_an_object_lists_children_like_kubectl(cli):
    result = cli("explain", "spec.training")
    assert result.code == 0
    out = result.out
    assert "KIND:       TrainingJob" in out and "VERSION:    diffusion.runner.dev/v1alpha1" in out
    assert "FIELD:      spec.training" in out and "TYPE:       <Object>" in out
    assert "DESCRIPTION:\n    The optimisation loop." in out
    assert "FIELDS:\n  batchSize\t<integer>\n    Images per device per micro-batch (train_batch_size). Default: 1." in out
    assert "One of: adamw, adafactor, sgd. Default: adamw." in out


def test_explain_a_leaf_shows_default_enum_and_limits(cli):
    out = cli("explain", "spec.datasets[0].cropAspect").out
    assert "TYPE:       <string>" in out and "DEFAULT:    square" in out
    assert "ENUM:       square, preserve, closest" in out
    assert "ALLOWED:    >= 1" in cli("explain", "spec.training.batchSize").out


def test_explain_lists_required_children_and_array_types():
    out = explain("spec")
    assert "  datasets\t<[]Object> -required-" in out
    assert "TYPE:       <map[string]Quantity>" in explain("spec.kubernetes.resources.limits")  # as kubectl says
    assert "-required-" in explain("trainingjob.metadata.name")


def test_explain_recursive_shows_the_tree(cli):
    out = cli("explain", "spec.kubernetes", "--recursive").out
    assert "  volumes\t<Object>\n    data\t<Object>\n      claimName\t<string> -required-" in out


def test_explain_the_whole_job(cli):
    out = cli("explain").out
    assert "FIELD:      <TrainingJob>" in out and "  spec\t<Object> -required-" in out


@pytest.mark.parametrize("path, hint", [
    ("spec.trainng", "did you mean 'training'?"),
    ("spec.training.batchsize", "did you mean 'batchSize'?"),
    ("spec.training.batchSize.x", "spec.training.batchSize has no fields"),
    ("spex", "did you mean 'spec'?"),
])
def test_explain_unknown_field_exits_2_with_a_hint(cli, path, hint):
    result = cli("explain", path)
    assert result.code == 2
    assert hint in result.err and result.out == ""


def test_every_schema_field_has_a_description():
    fields = list(schema_mod.iter_fields())
    assert len(fields) > 100
    assert [path for path, node in fields if not node.get("description")] == []


@pytest.mark.parametrize("path", [path for path, _ in schema_mod.iter_fields()])
def test_no_field_summary_stops_mid_thought(path):
    """Eight summaries ended at "e.g." (`requests  Requested resources, e.g.`): the first dot
    followed by a space was taken as the end of the sentence."""
    description = dict(schema_mod.iter_fields())[path]["description"]
    summary = first_sentence(description)
    assert description.startswith(summary) and summary.strip()
    assert not summary.lower().endswith(("e.g.", "i.e.", "vs.", "cf.", "(etc.", ",")), summary
    assert summary.count("(") == summary.count(")") and summary.count("`") % 2 == 0, summary


@pytest.mark.parametrize("text, summary", [
    ("One. Two.", "One."),
    ("Requested resources, e.g. `cpu: 8`. Applied to every pod.", "Requested resources, e.g. `cpu: 8`."),
    ("Why, in CamelCase (e.g. OOMKilled, InvalidSpec). Machine-readable.",
     "Why, in CamelCase (e.g. OOMKilled, InvalidSpec)."),
    ("Only one kind, i.e. the builtin. More later.", "Only one kind, i.e. the builtin."),
    ("Float32 vs. bfloat16 weights. Default float32.", "Float32 vs. bfloat16 weights."),
    ("Images, captions, etc. and their crops. Then more.", "Images, captions, etc. and their crops."),
    ("Images, captions, etc. (all of them). Then more.", "Images, captions, etc. (all of them)."),
    ("Images, captions, etc. Then more.", "Images, captions, etc."),
    ("Scale 1.5 by default. Then more.", "Scale 1.5 by default."),
    ("Under spec.cacheDir. Then more.", "Under spec.cacheDir."),
    ("Written to model_index.json in the folder. Then more.", "Written to model_index.json in the folder."),
    ("Steps of the run. `0` disables it.", "Steps of the run."),
    ("Wait ... then go. Done.", "Wait ... then go."),
    ("No dot at all", "No dot at all"),
    ("", ""),
])
def test_first_sentence(text, summary):
    assert first_sentence(text) == summary


@pytest.mark.parametrize("path, child, summary", [
    ("spec.kubernetes.resources", "requests", "Requested resources, e.g. `cpu: 8`, `memory: 64Gi`."),
    ("spec.validation", "resolutions", "Comma-separated WIDTHxHEIGHT list, e.g. `1024x1024,1280x768`."),
    ("spec.output.hub", "repoId", "Target model repo id, e.g. `me/pixart-sigma-finetune`."),
])
def test_explain_shows_whole_summaries(cli, path, child, summary):
    out = cli("explain", path).out
    block = out[out.index(f"\n  {child}\t") + 1:].split("\n\n")[0]
    assert " ".join(line.strip() for line in block.splitlines()[1:]).startswith(summary), block


def test_every_schema_field_is_explainable():
    def walk(node, parts):
        for name, child in node.get("properties", {}).items():
            assert resolve(parts + [name]) is child
            walk(child.get("items", child) if child.get("type") == "array" else child, parts + [name])

    walk(schema_mod.load_schema(), [])
    with pytest.raises(ExplainError):
        resolve(["nope"])


def test_usage_errors_exit_2(cli):
    assert cli("validate").code == 2
    assert cli("frobnicate").code == 2


def test_unexpected_exceptions_are_internal_errors_with_exit_1(cli, monkeypatch, tmp_path):
    import runner.spec.problems

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(runner.spec.problems, "job_from_document", boom)  # what `validate` calls per file
    monkeypatch.delenv("TRAININGJOB_DEBUG", raising=False)
    (tmp_path / "x.yaml").write_text((REPO / "examples" / "smoke.yaml").read_text())
    result = cli("validate", tmp_path / "x.yaml")
    assert result.code == 1
    assert "internal error: RuntimeError: kaboom" in result.err
    assert "report it" in result.err and "Traceback" not in result.err


# Runs every light command in one process, then reports which heavy modules got imported.
LIGHT_COMMANDS = textwrap.dedent("""
    import contextlib, io, json, sys
    from runner.cli import main
    codes = []
    for argv in json.loads(sys.argv[1]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            codes.append(main(argv))
    heavy = sorted(m for m in ("torch", "diffusers", "transformers", "accelerate") if m in sys.modules)
    print(json.dumps({"codes": codes, "heavy": heavy}))
""")


def test_light_commands_never_import_torch(tmp_path):
    config, backends = tmp_path / "config.json", tmp_path / "multidatabackend.json"
    config.write_text(json.dumps({"model_type": "full", "model_family": "pixart_sigma"}))
    backends.write_text(json.dumps([{"id": "a", "type": "local", "instance_data_dir": "/nonexistent"}]))
    commands = [
        ["validate", "examples/smoke.yaml", "examples/pixart-sigma-1024.yaml"],
        ["explain", "spec.training", "--recursive"],
        ["schema"],
        ["schema", "--format", "yaml"],
        ["init", "--yes", "--output", str(tmp_path / "init.yaml")],
        ["import-simpletuner", str(config), str(backends), "--output", str(tmp_path / "st.yaml")],
    ]
    proc = subprocess.run([sys.executable, "-c", LIGHT_COMMANDS, json.dumps(commands)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0] * len(commands)
    assert report["heavy"] == []


@pytest.mark.parametrize("field", ["spec.output.dir", "spec.cacheDir", "spec.textEmbeds.cacheDir",
                                   "spec.datasets.vaeCacheDir", "spec.datasets.path", "spec.training.resume"])
def test_explain_says_where_relative_paths_resolve(field):
    text = " ".join(explain(field).split())
    assert "Relative paths resolve from the working directory of the `trainingjob` process" in text
    assert "a filesystem root is refused" in text
