"""runner.spec.localpaths: the paths `run` refuses at once, which `validate` reports too, on real
files (tmp_path is the working directory, so relative paths resolve there)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from runner.spec.load import job_from_document
from runner.spec.localpaths import local_path_problems, pretrained_problem

PIPELINE_INDEX = '{"_class_name": "PixArtSigmaPipeline"}'


def spec_with(minimal_spec: str, sets: dict[str, str], volumes: dict | None = None) -> dict:
    """The defaulted spec of the minimal spec with `sets` (field path -> value) applied as `--set`s."""
    doc = yaml.safe_load(minimal_spec)
    if volumes is not None:
        doc["spec"]["kubernetes"] = {"volumes": volumes}
    return job_from_document(doc, "<test>", [f"{path}={value}" for path, value in sets.items()]).spec.to_dict()


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A working directory with a file, a checkpoint folder, a pipeline folder and an empty one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "out" / "checkpoints" / "step-5").mkdir(parents=True)
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(PIPELINE_INDEX)
    (tmp_path / "empty").mkdir()
    return tmp_path


# id, fields set, the problems (their start; [] = none)
CASES = [
    ("defaults", {}, []),
    ("output-dir-is-a-file", {"spec.output.dir": "a-file"},
     ["spec.output.dir: a-file is a file, not a directory; point it at a directory"]),
    ("output-dir-under-a-file", {"spec.output.dir": "a-file/job"},
     ["spec.output.dir: {here}/a-file is a file, so a-file/job cannot be a directory under it"]),
    ("output-dir-not-there-yet", {"spec.output.dir": "new/job"}, []),
    ("cache-dir-is-a-file", {"spec.cacheDir": "a-file"}, ["spec.cacheDir: a-file is a file, not a directory"]),
    ("resume-auto", {"spec.training.resume": "auto"}, []),
    ("resume-none", {"spec.training.resume": "none"}, []),
    ("resume-a-folder", {"spec.training.resume": "out/checkpoints/step-5"}, []),
    ("resume-not-there", {"spec.training.resume": "out/checkpoints/step-9"},
     ["spec.training.resume: out/checkpoints/step-9 is not there; give a checkpoint folder"]),
    ("resume-a-file", {"spec.training.resume": "a-file"},
     ["spec.training.resume: a-file is a file; give a checkpoint folder"]),
    ("pretrained-hub-id", {"spec.model.pretrained": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"}, []),
    ("pretrained-builtin", {"spec.model.pretrained": "builtin:tiny-pixart-sigma"}, []),
    ("pretrained-a-pipeline", {"spec.model.pretrained": "./pipe"}, []),
    ("pretrained-absolute-pipeline", {"spec.model.pretrained": "{here}/pipe"}, []),
    ("pretrained-relative-not-there", {"spec.model.pretrained": "./models/pixart"},
     ["spec.model.pretrained: local folder ./models/pixart does not exist (relative paths resolve from the "
      "working directory, {here}); point it at a diffusers pipeline folder, or give a Hub repo id"]),
    ("pretrained-absolute-not-there", {"spec.model.pretrained": "{here}/models/pixart"},
     ["spec.model.pretrained: local folder {here}/models/pixart does not exist; point it at"]),
    ("pretrained-no-model-index", {"spec.model.pretrained": "./empty"},
     ["spec.model.pretrained: empty is a folder but holds no model_index.json; point it at a diffusers"]),
    ("all-at-once", {"spec.output.dir": "a-file", "spec.training.resume": "gone", "spec.model.pretrained": "./gone"},
     ["spec.output.dir: ", "spec.training.resume: ", "spec.model.pretrained: "]),
]


@pytest.mark.parametrize("case, sets, expected", CASES, ids=[c[0] for c in CASES])
def test_local_path_problems_table(here, minimal_spec, case, sets, expected):
    sets = {k: v.format(here=here) for k, v in sets.items()}
    problems = local_path_problems(spec_with(minimal_spec, sets))
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected):
        assert problem.startswith(start.format(here=here)), (problem, start)


# id, volumes, fields set, the fields reported: a path on a volume that is not here exists only in the pod
VOLUME_CASES = [
    ("resume-on-the-output-volume", {"output": {"claimName": "out"}},
     {"spec.training.resume": "/output/job/checkpoints/step-5"}, []),
    ("resume-off-the-volumes", {"output": {"claimName": "out"}},
     {"spec.training.resume": "/elsewhere/step-5"}, ["spec.training.resume"]),
    ("no-volumes-no-pod", None, {"spec.training.resume": "/output/job/checkpoints/step-5"}, ["spec.training.resume"]),
    ("pretrained-on-the-data-volume", {"data": {"claimName": "d", "mountPath": "/mnt/models"}},
     {"spec.model.pretrained": "/mnt/models/pixart"}, []),
    ("pretrained-on-the-cache-volume", {"cache": {"claimName": "c"}},
     {"spec.model.pretrained": "/cache/pixart"}, []),
    ("a-volume-not-mounted", {"cache": {"claimName": "c"}},
     {"spec.model.pretrained": "/data/pixart"}, ["spec.model.pretrained"]),
    ("output-dir-under-the-volume-mount-point", {"output": {"claimName": "out", "mountPath": "{here}/a-file"}},
     {"spec.output.dir": "{here}/a-file/job"}, []),
    # Here, it is what it is: a file on this machine under a mount path is still checked.
    ("a-file-here-on-a-volume-path", {"output": {"claimName": "out", "mountPath": "{here}"}},
     {"spec.training.resume": "{here}/a-file"}, ["spec.training.resume"]),
]


@pytest.mark.parametrize("case, volumes, sets, fields", VOLUME_CASES, ids=[c[0] for c in VOLUME_CASES])
def test_paths_on_a_kubernetes_volume_exist_only_in_the_pod(here, minimal_spec, case, volumes, sets, fields):
    sets = {k: v.format(here=here) for k, v in sets.items()}
    volumes = json.loads(json.dumps(volumes).replace("{here}", str(here))) if volumes else None
    problems = local_path_problems(spec_with(minimal_spec, sets, volumes))
    assert [p.split(":")[0] for p in problems] == fields, problems


def test_run_resolves_a_model_with_the_same_check(here):
    """resolve_model_dir (run) refuses with the very message validate prints."""
    from runner.models.pipeline import ModelError, resolve_model_dir

    with pytest.raises(ModelError) as refused:
        resolve_model_dir("./empty", "main", here / "cache", ())
    assert str(refused.value) == pretrained_problem("./empty")
    assert resolve_model_dir("./pipe", "main", here / "cache", ()) == Path("pipe")


def test_validate_exits_2_for_what_run_refuses(here, cli, minimal_spec):
    spec = here / "job.yaml"
    spec.write_text(minimal_spec.replace("      path: /nonexistent-trainingjob-corpus/photos", "      type: samples"))
    ok = cli("validate", spec)
    assert ok.code == 0, ok.err
    result = cli("validate", spec, "--set", "spec.output.dir=a-file", "--set", "spec.training.resume=gone",
                 "--set", "spec.model.pretrained=./empty")
    assert result.code == 2
    assert [line.split(": ")[1] for line in result.err.splitlines()] == [
        "spec.output.dir", "spec.training.resume", "spec.model.pretrained"], result.err
    # `run` refuses the first two with the same words, before any work.
    run = cli("run", spec, "--set", "spec.output.dir=a-file", "--set", "spec.training.resume=gone")
    assert run.code == 2
    for line in result.err.splitlines()[:2]:
        assert f"error: {line.removeprefix(f'{spec}: ')}" in run.err
