"""runner.spec/semantics on valid input: defaults, YAML details, overrides, freezing, warnings."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from runner.spec import semantics
from runner.spec.errors import SpecError
from runner.spec.load import job_from_document, load_spec
from runner.spec.overrides import apply_overrides
from runner.spec.parse import parse_document

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_every_example_validates(cli):
    assert EXAMPLES, "examples/ holds no specs"
    result = cli("validate", *EXAMPLES)
    assert result.code == 0, result.err
    for example in EXAMPLES:
        assert f"{example}: valid TrainingJob" in result.out


def test_quickstart_example_carries_the_quickstart_settings():
    job = load_spec(REPO / "examples" / "pixart-sigma-1024.yaml")
    ds = job.spec.datasets[0]
    assert job.spec.model.pretrained == "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    assert (ds.type, ds.repo) == ("huggingface", "bghira/pseudo-camera-10k")
    assert (ds.crop, ds.cropAspect, ds.cropStyle) == (True, "square", "random")
    assert (ds.resolution, ds.resolutionType, ds.minimumImageSize, ds.maximumImageSize,
            ds.targetDownsampleSize) == (1.0, "area", 0.25, 1.0, 1.0)
    assert ds.captionStrategy == "filename"
    assert job.spec.validation.resolutions == "1024x1024,1280x768"
    assert job.spec.validation.guidance == 4.0
    assert job.spec.hardware.accelerator == "cuda12"
    assert 1 <= job.spec.training.batchSize <= 4
    assert job.warnings == ()


def test_defaults_are_filled_and_the_result_is_frozen(minimal_spec):
    job = job_from_document(parse_document(minimal_spec))
    assert job.spec.training.batchSize == 1
    assert job.spec.datasets[0].cropAspect == "square"
    assert job.spec.hardware.accelerator == "cuda12"
    assert job.spec.training.epochs is None
    with pytest.raises(AttributeError):
        job.spec.training.batchSize = 4  # type: ignore[misc]
    assert len(job.hash) == 16
    assert job.hash == job_from_document(parse_document(minimal_spec)).hash


@pytest.mark.parametrize("read, where, hint", [
    (lambda job: job.spec.training.batchSiz, "spec.training.batchSiz", "did you mean 'batchSize'?"),
    (lambda job: job.spec.datasets[0].pathh, "spec.datasets[0].pathh", "did you mean 'path'?"),
    (lambda job: job.document.metadata.nmae, "metadata.nmae", "did you mean 'name'?"),
    (lambda job: job.spec.modle, "spec.modle", "did you mean 'model'?"),
])
def test_a_misspelt_field_in_code_raises_naming_its_path(minimal_spec, read, where, hint):
    """An optional field the spec leaves out reads as None; a name the schema does not have is a
    bug in the code that reads it, so it fails there instead of reading as None."""
    job = job_from_document(parse_document(minimal_spec))
    with pytest.raises(AttributeError, match=f"^{re.escape(where)}: no such field; {re.escape(hint)}$"):
        read(job)
    assert job.spec.output.hub.get("repoId") is None and job.spec.output.hub.repoId is None
    assert not hasattr(job.spec.training, "batchSiz") and hasattr(job.spec.training, "epochs")


def test_yaml12_style_exponent_reads_as_a_number(minimal_spec):
    job = job_from_document(parse_document(minimal_spec + "    learningRate: 1e-5\n"))
    assert job.spec.training.learningRate == pytest.approx(1e-5)


def test_integral_float_in_an_integer_field_becomes_an_int(minimal_spec):
    job = job_from_document(parse_document(minimal_spec.replace("maxSteps: 10", "maxSteps: 1e3")))
    assert job.spec.training.maxSteps == 1000 and isinstance(job.spec.training.maxSteps, int)


def test_merge_keys_are_allowed_and_may_be_overridden():
    doc = parse_document("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n")
    assert doc["use"] == {"x": 1, "y": 3}


def test_json_is_yaml_too(minimal_spec):
    import json
    import yaml

    text = json.dumps(yaml.safe_load(minimal_spec))
    assert job_from_document(parse_document(text)).name == "corpus"


def test_overrides_set_coerce_index_append_and_remove(minimal_spec):
    doc = parse_document(minimal_spec)
    out = apply_overrides(doc, [
        "spec.training.batchSize=4",
        "spec.training.mixedPrecision=no",  # a string field: "no", not YAML 1.1's false
        "spec.datasets[0].crop=true",
        "spec.datasets.1={name: more, path: /elsewhere}",
        "spec.training.maxSteps=null",
        "spec.training.epochs=2",
        "metadata.labels.team=42",  # map of strings: stays "42"
        "spec.validation.prompts=[a cat, a dog]",
        "spec.cacheDir=/data/cache #1: shared",  # text fields take the text as typed
        "spec.output.dir='quoted'",  # quoting still works
    ])
    assert out["spec"]["cacheDir"] == "/data/cache #1: shared"
    assert out["spec"]["output"]["dir"] == "quoted"
    assert doc["spec"]["training"] == {"maxSteps": 10}, "the input must not be modified"
    assert out["spec"]["training"] == {"batchSize": 4, "mixedPrecision": "no", "epochs": 2}
    assert out["spec"]["datasets"][0]["crop"] is True
    assert out["spec"]["datasets"][1] == {"name": "more", "path": "/elsewhere"}
    assert out["metadata"]["labels"] == {"team": "42"}
    assert out["spec"]["validation"]["prompts"] == ["a cat", "a dog"]
    job = job_from_document(out)
    assert job.spec.training.mixedPrecision == "no"


def test_override_problems_are_all_listed(minimal_spec):
    with pytest.raises(SpecError) as e:
        apply_overrides(parse_document(minimal_spec), ["spec.training.bachSize=1", "oops", "spec.datasets[9].x=1"])
    assert len(e.value.problems) == 3
    assert "did you mean 'batchSize'?" in e.value.problems[0]


def test_set_works_on_run_too(tmp_path, cli, minimal_spec):
    spec = tmp_path / "job.yaml"
    spec.write_text(minimal_spec)
    result = cli("run", spec, "--set", "spec.training.batchSize=0")
    assert result.code == 2
    assert "spec.training.batchSize: 0 is less than the minimum of 1" in result.err


def test_guidance_outside_the_pixart_range_is_a_warning_not_an_error(tmp_path, cli, minimal_spec):
    spec = tmp_path / "job.yaml"
    # A samples dataset has no path to check, so only the guidance is at issue.
    spec.write_text(minimal_spec.replace("      path: /nonexistent-trainingjob-corpus/photos", "      type: samples")
                    + "  validation:\n    guidance: 3.5\n")
    result = cli("validate", spec)
    assert result.code == 0
    assert f"{spec}: warning: spec.validation.guidance: 3.5 is outside 3.6-4.4" in result.err
    assert "valid TrainingJob 'corpus'" in result.out


@pytest.mark.parametrize("training, warned", [
    ({"maxSteps": 3, "lrWarmupSteps": 100, "lrScheduler": "cosine"}, True),
    ({"maxSteps": 100, "lrWarmupSteps": 100, "lrScheduler": "linear"}, True),
    ({"maxSteps": 101, "lrWarmupSteps": 100, "lrScheduler": "linear"}, False),
    ({"maxSteps": 3, "lrWarmupSteps": 100, "lrScheduler": "constant"}, False),  # constant has no warmup
    ({"maxSteps": None, "epochs": 1, "lrWarmupSteps": 100, "lrScheduler": "cosine"}, False),  # steps unknown yet
    ({"maxSteps": True, "lrWarmupSteps": 2, "lrScheduler": "cosine"}, False),  # the schema's type error says it
])
def test_a_warmup_as_long_as_the_run_is_a_warning(training, warned):
    doc = {"spec": {"training": {"lrWarmupSteps": 0, "lrScheduler": "constant", **training}}}
    found = list(semantics._warmup(doc["spec"]))
    assert bool(found) == warned
    if warned:
        assert found[0][0] == semantics.WARNING and found[0][1].startswith("spec.training.lrWarmupSteps: 100 is not below")


@pytest.mark.parametrize("dataset, warned", [
    ({"crop": False, "cropAspect": "closest"}, ["spec.datasets[0].cropAspect: 'closest' is ignored because crop is false"]),
    ({"crop": False, "cropStyle": "center"}, ["spec.datasets[0].cropStyle: 'center' is ignored because crop is false"]),
    ({"crop": True, "cropAspect": "closest", "cropStyle": "center"}, []),
    ({"crop": False}, []),  # the defaults
])
def test_crop_settings_without_crop_are_a_warning(minimal_spec, dataset, warned):
    doc = parse_document(minimal_spec)
    doc["spec"]["datasets"][0].update(dataset)
    crop_warnings = [w for w in job_from_document(doc).warnings if "crop" in w]
    assert len(crop_warnings) == len(warned)
    for got, want in zip(crop_warnings, warned):
        assert want in got


@pytest.mark.parametrize("feed_forward, fp8, refused", [
    ("fused", True, True), ("auto", True, False), ("fused", False, False), ("diffusers", True, False)])
def test_a_fused_feed_forward_with_fp8_is_refused(minimal_spec, feed_forward, fp8, refused):
    doc = parse_document(minimal_spec)
    doc["spec"]["model"] = {"feedForward": feed_forward}
    doc["spec"]["training"]["fp8"] = fp8
    if refused:
        with pytest.raises(SpecError, match="spec.model.feedForward: fused runs the feed-forward's GEMMs in bf16"):
            job_from_document(doc)
    else:
        job_from_document(doc)


@pytest.mark.parametrize("dataset, output, refused", [
    ("data/photos", "data/photos/out", True),
    ("data/photos", "data/photos", True),
    ("data/photos/", "./data/photos/runs/x", True),
    ("data/photos", "data/photos-out", False),  # a sibling with a common prefix
    ("data/photos", "output/x", False),
])
def test_an_output_dir_inside_a_dataset_folder_is_refused(tmp_path, minimal_spec, dataset, output, refused):
    doc = parse_document(minimal_spec)
    doc["spec"]["datasets"][0]["path"] = dataset
    doc["spec"]["output"] = {"dir": output}
    found = list(semantics._output_in_dataset(doc["spec"], cwd=str(tmp_path)))
    assert bool(found) == refused
    if refused:
        assert found[0][0] == semantics.ERROR
        assert found[0][1].startswith(f"spec.output.dir: {output!r} is inside spec.datasets[0].path {dataset!r}")


def test_warnings_still_print_when_the_spec_is_rejected(tmp_path, cli, minimal_spec):
    spec = tmp_path / "job.yaml"
    spec.write_text(minimal_spec + "    batchSize: 0\n  validation:\n    guidance: 9\n")
    result = cli("validate", spec)
    assert result.code == 2
    assert "warning: spec.validation.guidance: 9" in result.err
    assert "spec.training.batchSize: 0" in result.err


@pytest.mark.parametrize("text, expected", [
    ("1024x1024, 1280x768", [(1024, 1024), (1280, 768)]),
    ("512X512", [(512, 512)]),
])
def test_parse_resolutions(text, expected):
    assert semantics.parse_resolutions(text) == expected


def test_parse_resolutions_rejects_garbage():
    with pytest.raises(ValueError):
        semantics.parse_resolutions("1024")


def test_semantics_is_strict_on_valid_documents_and_tolerant_otherwise():
    broken = {"spec": {"training": 5, "validation": {"resolutions": "8x8", "guidance": "high"}}}
    errors, warnings = semantics.check(broken, tolerant=True)
    assert warnings == []
    with pytest.raises(AttributeError):  # a rule tripping on a *valid* document is a bug: surface it
        semantics.check(broken)


def test_world_size():
    assert semantics.world_size({"hardware": {"gpusPerNode": 4, "nodes": 2}}) == 8
    assert semantics.world_size({}) == 1


def _one_photo_spec(tmp_path, minimal_spec, training: str):
    from PIL import Image

    data = tmp_path / "photos"
    data.mkdir()
    Image.new("RGB", (1024, 1024), (10, 20, 30)).save(data / "a_red_fox.png")
    spec = tmp_path / "job.yaml"
    spec.write_text(minimal_spec.replace("/nonexistent-trainingjob-corpus/photos", str(data)) + training)
    return spec


def test_real_preflight_counts_images_when_the_directory_exists(tmp_path, cli, minimal_spec):
    spec = _one_photo_spec(tmp_path, minimal_spec, "    batchSize: 2\n    gradientAccumulationSteps: 2\n")
    result = cli("validate", spec)
    assert result.code == 2, result.text
    assert f"{spec}: spec.datasets[0]: dataset 'photos' has 0 usable image(s) but one optimizer step needs 4" in result.err  # its bucket cannot fill a batch of 2


def test_dataset_checks_do_not_run_on_an_invalid_spec(tmp_path, cli, minimal_spec):
    # The same too-small dataset, but the spec itself is wrong: only the spec problem is shown.
    spec = _one_photo_spec(tmp_path, minimal_spec, "    batchSize: 0\n")
    result = cli("validate", spec)
    assert result.code == 2
    assert "batchSize: 0 is less than the minimum of 1" in result.err
    assert "usable image" not in result.err


def test_a_dataset_path_that_does_not_exist_is_reported(tmp_path, cli, minimal_spec, monkeypatch):
    spec = tmp_path / "job.yaml"
    spec.write_text(minimal_spec)
    result = cli("validate", spec)
    assert result.code == 2
    assert (f"{spec}: spec.datasets[0].path: /nonexistent-trainingjob-corpus/photos does not exist" in result.err)
    # A relative one says where it was looked for.
    monkeypatch.chdir(tmp_path)
    spec.write_text(minimal_spec.replace("/nonexistent-trainingjob-corpus/photos", "data/photos"))
    result = cli("validate", spec)
    assert result.code == 2
    assert (f"spec.datasets[0].path: data/photos does not exist (relative paths resolve from the working "
            f"directory, {tmp_path})") in result.err


def test_a_relative_path_that_climbs_to_the_root_is_refused(tmp_path, cli, minimal_spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    climb = "/".join([".."] * (len(tmp_path.parts) + 2))  # more than enough: `..` stops at /
    spec = tmp_path / "job.yaml"
    spec.write_text(minimal_spec + f"  output:\n    dir: {climb}\n  cacheDir: ../cache\n")
    result = cli("validate", spec)
    assert result.code == 2
    assert (f"spec.output.dir: '{climb}' resolves to the filesystem root (from the working directory "
            f"{tmp_path}); point it at a directory of its own") in result.err
    assert "spec.cacheDir" not in result.err  # one level up is a directory like any other


@pytest.mark.parametrize("path, root", [
    ("/", True), ("//", True), ("/tmp/..", True), ("/.", True), ("..", False), ("output", False), ("/data", False),
])
def test_is_filesystem_root(tmp_path, path, root):
    assert semantics.is_filesystem_root(path, cwd=str(tmp_path / "a")) is root


def test_the_seed_bound_is_numpys():
    """The schema's maximum is exactly what numpy (which accelerate's set_seed calls) accepts."""
    import numpy as np

    from runner.spec import schema as schema_mod

    for path in ("spec.training.seed", "spec.validation.seed"):
        top = schema_mod.subschema(path)["maximum"]
        np.random.seed(top)
        with pytest.raises(ValueError):
            np.random.seed(top + 1)


def test_dataset_buckets_are_always_whole_token_grids():
    """Dataset sizes need no multiple-of-16 check: buckets are aligned to 64 px, a multiple of
    every family's resolution multiple."""
    from runner.data.transforms import ALIGN
    from runner.models.registry import FAMILIES

    assert semantics.MIN_PIXEL_SIDE == ALIGN
    assert all(ALIGN % t.resolution_multiple == 0 for t in FAMILIES.values())


@pytest.mark.parametrize("field, under", [("spec.output.dir", ""), ("spec.cacheDir", "/sub")])
def test_run_refuses_an_output_or_cache_dir_that_a_file_is_in_the_way_of(tmp_path, cli, minimal_spec, field, under):
    """It used to get as far as the metrics log and end in "internal error: FileExistsError"."""
    spec, blocker = tmp_path / "job.yaml", tmp_path / "a-file"
    spec.write_text(minimal_spec.replace("      path: /nonexistent-trainingjob-corpus/photos", "      type: samples"))
    blocker.write_text("not a folder")
    result = cli("run", spec, "--set", f"{field}={blocker}{under}")
    assert result.code == 2, result.err
    why = f"{blocker} is a file, not a directory" if not under else \
        f"{blocker} is a file, so {blocker}{under} cannot be a directory under it"
    assert f"error: {field}: {why}; point it at a directory" in result.err
    assert "internal error" not in result.err and blocker.read_text() == "not a folder"


@pytest.mark.parametrize("args, expect", [
    (["--stage", "cache"], "error: --stage cache: not with --smoke, which runs every stage"),
    (["--junit", "{dir}"], "error: --junit: {dir} is a directory; give a file name"),
    (["--junit", "{file}/report.xml"], "error: --junit: {file} is a file, not a directory"),
    (["--smoke-dir", "{file}"], "error: --smoke-dir: {file} is a file, not a directory"),
])
def test_smoke_options_that_cannot_work_are_refused_before_the_run(tmp_path, cli, minimal_spec, args, expect):
    """--stage was silently ignored; a --junit directory failed after the whole smoke had passed, and a
    --smoke-dir file at once, both as "internal error"."""
    spec, folder, blocker = tmp_path / "job.yaml", tmp_path / "reports", tmp_path / "a-file"
    spec.write_text(minimal_spec)
    folder.mkdir()
    blocker.write_text("x")
    fill = {"dir": str(folder), "file": str(blocker)}
    result = cli("run", spec, "--smoke", *[a.format(**fill) for a in args])
    assert result.code == 2, result.err
    assert expect.format(**fill) in result.err
    assert "smoke run" not in result.out  # nothing ran


@pytest.mark.parametrize("make, what", [(lambda p: None, "not there"), (lambda p: p.write_text("x"), "a file")])
def test_a_resume_folder_that_is_not_there_is_refused_before_the_cache_stage(tmp_path, cli, minimal_spec, make, what):
    """It was found only after the whole cache stage had run."""
    spec, ckpt = tmp_path / "job.yaml", tmp_path / "step-100"
    spec.write_text(minimal_spec.replace("      path: /nonexistent-trainingjob-corpus/photos", "      type: samples"))
    make(ckpt)
    result = cli("run", spec, "--set", f"spec.training.resume={ckpt}", "--set", f"spec.cacheDir={tmp_path / 'c'}")
    assert result.code == 2, result.err
    assert f"error: spec.training.resume: {ckpt} is {what}; give a checkpoint folder" in result.err
    assert not (tmp_path / "c").exists()  # no cache work was done


@pytest.mark.parametrize("field", ["spec.output.dir", "spec.cacheDir"])
def test_run_refuses_an_output_or_cache_dir_it_may_not_write(tmp_path, minimal_spec, field):
    """It ended in "internal error: OSError: [Errno 30] Read-only file system ... This is a bug in
    trainingjob". chmod does not stop root, so as root the run goes without the capability that
    lets root write anywhere (setpriv), as the unreadable-file test does."""
    import os
    import shutil
    import subprocess
    import sys

    spec, locked = tmp_path / "job.yaml", tmp_path / "locked"
    spec.write_text(minimal_spec.replace("      path: /nonexistent-trainingjob-corpus/photos", "      type: samples"))
    locked.mkdir()
    locked.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a folder unwritable")
        prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    proc = subprocess.run(prefix + [sys.executable, "-m", "runner", "run", str(spec), "--set", f"{field}={locked}/job"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (f"error: {field}: {locked}/job cannot be written: {locked} is not writable by this user; point it at a "
            "folder this run may write to") in proc.stderr
    assert "internal error" not in proc.stderr and list(locked.iterdir()) == []


def test_run_and_render_read_a_spec_from_standard_input(tmp_path, minimal_spec):
    """`validate -` did, `run -` and `render -` said "-: no such file" (kubectl apply -f - reads stdin)."""
    import subprocess
    import sys

    example = (REPO / "k8s" / "example-trainingjob.yaml").read_text()

    def trainingjob(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "runner", *args], input=stdin, capture_output=True, text=True,
                              cwd=tmp_path, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})

    from_file = trainingjob("render", str(REPO / "k8s" / "example-trainingjob.yaml"))
    piped = trainingjob("render", "-", stdin=example)
    assert from_file.returncode == piped.returncode == 0, piped.stderr
    assert piped.stdout == from_file.stdout and "kind: Job" in piped.stdout
    bad = trainingjob("render", "-", stdin=example.replace("maxSteps:", "maxStepz:"))
    assert bad.returncode == 2 and "<stdin>: spec.training" in bad.stderr and "maxStepz" in bad.stderr, bad.stderr
    for flag in ("--smoke", "--container"):
        refused = trainingjob("run", "-", flag, stdin=minimal_spec)
        assert refused.returncode == 2
        assert f"a spec from standard input (-) does not go with {flag}" in refused.stderr, refused.stderr


@pytest.mark.parametrize("field", ["spec.output.dir", "spec.cacheDir"])
def test_a_system_folder_that_takes_no_folder_is_bad_input_for_run_and_validate(tmp_path, capsys, field):
    """`/sys` refuses mkdir with EPERM, even to root, whom os.access lets write anywhere: validate
    called the spec valid and run ended in "internal error: PermissionError: [Errno 1] Operation
    not permitted: '/sys/tj-out'" (exit 1, "a bug in trainingjob")."""
    import errno
    import os

    from runner.cli import main

    target = Path("/sys/trainingjob-test-out")
    try:
        os.mkdir(target)
        os.rmdir(target)
        pytest.skip("/sys takes folders here")
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EACCES, errno.ENOENT, errno.EROFS):
            pytest.skip(f"/sys: {e}")
    smoke = str(REPO / "examples" / "smoke.yaml")
    sets = ["--set", f"{field}={target}"]
    if field == "spec.cacheDir":
        sets += ["--set", f"spec.output.dir={tmp_path / 'out'}"]
    said = f"{field}: {target} cannot be written: /sys "
    assert main(["validate", smoke, *sets]) == 2
    assert said in "".join(capsys.readouterr())
    assert main(["run", smoke, *sets, "--set", "spec.metrics.port=0"]) == 2
    err = capsys.readouterr().err
    assert said in err and "point it at a folder this run may write to" in err and "internal error" not in err


def test_a_read_only_file_system_is_named_as_such(tmp_path, monkeypatch):
    """EROFS where os.access says yes (a volume mounted read-only under a writable mode)."""
    import errno
    import tempfile

    from runner.files import not_writable

    def refuse(**_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert not_writable(tmp_path / "out") == f"{tmp_path / 'out'} cannot be written: {tmp_path} is on a read-only file system"


@pytest.mark.parametrize("code", ["EACCES", "EPERM", "EROFS"])
def test_a_write_refused_under_a_spec_folder_mid_run_names_the_field(tmp_path, code):
    """A folder made read-only under a running job: bad input naming the field, not our bug."""
    import errno

    from runner.launch.outcomes import unwritable
    from runner.spec.load import load_spec

    spec = load_spec(REPO / "examples" / "smoke.yaml", [f"spec.cacheDir={tmp_path / 'c'}"]).spec.to_dict()
    e = OSError(getattr(errno, code), "refused", str(tmp_path / "c" / "text" / "ab" / "x.safetensors"))
    assert unwritable(e, spec).startswith(f"spec.cacheDir: {tmp_path / 'c'}/text/ab/x.safetensors cannot be written")
    assert unwritable(OSError(getattr(errno, code), "refused", "/elsewhere/x"), spec) is None
    assert unwritable(OSError(errno.ENOENT, "gone", str(tmp_path / "c" / "x")), spec) is None
