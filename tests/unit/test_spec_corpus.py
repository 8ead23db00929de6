"""Table-driven corpus of invalid TrainingJobs: each exits 2, names the field (or the file-level
reason), and never prints a traceback. A handful also run through `python -m runner`."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# The corpus base (tests/unit/conftest.py): the smallest valid TrainingJob. Each case breaks it in one way.
from tests.unit.conftest import MINIMAL_SPEC  # noqa: E402


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    expect: str
    sets: tuple[str, ...] = field(default=())


def raw(id: str, text: str | bytes, expect: str) -> Case:
    return Case(id, text if isinstance(text, bytes) else text.encode(), expect)


def mutate(id: str, edit: Callable[[dict], None], expect: str) -> Case:
    doc = yaml.safe_load(MINIMAL_SPEC)
    edit(doc)
    return Case(id, yaml.safe_dump(doc, sort_keys=False).encode(), expect)


def override(id: str, sets: list[str], expect: str) -> Case:
    return Case(id, MINIMAL_SPEC.encode(), expect, tuple(sets))


def ds(doc: dict) -> dict:
    return doc["spec"]["datasets"][0]


def sub(doc: dict, *path: str) -> dict:
    node = doc
    for part in path:
        node = node.setdefault(part, {})
    return node


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh"))
HEADER = "apiVersion: diffusion.runner.dev/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: x\n"

CASES = [
    # --- the file itself
    raw("empty", "", "the file is empty"),
    raw("only-comments", "# nothing here\n---\n", "the file is empty"),
    raw("binary-nul", bytes(range(256)) * 4, "not a text file"),
    raw("not-utf8", b"apiVersion: \xff\xfe\xfa\n", "not UTF-8"),
    raw("control-char", "apiVersion: a\x01b\n", "line 1, column 14: character U+0001"),
    raw("list", "- a\n- b\n", "got a list"),
    raw("scalar-number", "42\n", "got a number"),
    raw("scalar-string", "hello world\n", "got a string"),
    raw("two-documents", MINIMAL_SPEC + "---\n" + MINIMAL_SPEC, "holds 2 YAML documents"),
    raw("alias-bomb", BOMB, "expands to more than"),
    raw("deep-nesting", "a: " + "[" * 100 + "]" * 100 + "\n", "nesting deeper than 64"),
    raw("very-deep-nesting", "[" * 20000 + "]" * 20000, "nesting"),
    raw("recursive-alias", "a: &x [*x]\n", "nesting deeper"),
    raw("duplicate-key", MINIMAL_SPEC.replace("  name: corpus\n", "  name: corpus\n  name: again\n"),
        "line 5, column 3: duplicate key 'name' (first at line 4, column 3)"),
    raw("duplicate-top-key", MINIMAL_SPEC + "kind: TrainingJob\n", "duplicate key 'kind'"),
    raw("unclosed-flow", HEADER + "spec:\n  datasets: [{name: a, path: b]\n", "line 6, column"),
    raw("tab-indent", HEADER + "spec:\n\tdatasets: []\n", "line 6, column 1"),
    raw("bad-indent", HEADER + "spec:\n  datasets:\n - name: a\n    path: b\n", "YAML syntax error"),
    raw("custom-tag", HEADER + "spec: !custom {}\n", "tags are not allowed"),
    raw("python-tag", HEADER + "spec: !!python/object/apply:os.system [ls]\n", "tags are not allowed"),
    raw("impossible-date", HEADER + "spec:\n  cacheDir: 2024-13-45\n", "unreadable value '2024-13-45'"),
    raw("huge-integer", HEADER + "spec:\n  training:\n    maxSteps: " + "9" * 5000 + "\n", "unreadable value"),
    raw("complex-key", HEADER + "? [a, b]\n: c\n", "mapping keys must be plain scalars"),
    raw("over-1-mib", MINIMAL_SPEC + "# " + "x" * (1024 * 1024) + "\n", "limited to 1048576 bytes (1 MiB)"),
    # --- the envelope
    mutate("wrong-kind", lambda d: d.update(kind="Deployment"), "kind: 'Deployment' is not one of TrainingJob"),
    mutate("wrong-api-version", lambda d: d.update(apiVersion="v1"), "apiVersion: 'v1' is not one of"),
    mutate("missing-metadata", lambda d: d.pop("metadata"), "metadata: required field is missing"),
    mutate("missing-spec", lambda d: d.pop("spec"), "spec: required field is missing"),
    mutate("missing-name", lambda d: d["metadata"].pop("name"), "metadata.name: required field is missing"),
    mutate("name-not-dns", lambda d: d["metadata"].update(name="My_Job"), "metadata.name: 'My_Job' does not match"),
    mutate("name-too-long", lambda d: d["metadata"].update(name="a" * 64), "metadata.name: "),
    mutate("unknown-top-field", lambda d: d.update(specs={}), "specs: unknown field; did you mean 'spec'?"),
    mutate("spec-is-list", lambda d: d.update(spec=[1]), "spec: [1] is an array, expected object"),
    mutate("label-not-string", lambda d: d["metadata"].update(labels={"team": 7}), "metadata.labels.team: 7 is an integer"),
    # --- datasets
    mutate("datasets-missing", lambda d: d["spec"].pop("datasets"), "spec.datasets: required field is missing"),
    mutate("datasets-empty", lambda d: d["spec"].update(datasets=[]), "spec.datasets: needs at least 1 item(s), got 0"),
    mutate("dataset-no-name", lambda d: ds(d).pop("name"), "spec.datasets[0].name: required field is missing"),
    mutate("dataset-bad-type", lambda d: ds(d).update(type="ftp"), "spec.datasets[0].type: 'ftp' is not one of local"),
    mutate("dataset-unknown-field", lambda d: ds(d).update(pathh="x"), "spec.datasets[0].pathh: unknown field; did you mean 'path'?"),
    mutate("local-without-path", lambda d: ds(d).pop("path"), "spec.datasets[0].path: required when type is local"),
    mutate("hub-without-repo", lambda d: ds(d).update(type="huggingface"), "spec.datasets[0].repo: required when type is huggingface"),
    mutate("hub-bad-repo", lambda d: ds(d).update(type="huggingface", repo="no-owner"), "spec.datasets[0].repo: 'no-owner' does not match"),
    mutate("duplicate-dataset-names", lambda d: d["spec"]["datasets"].append(dict(ds(d))),
           "spec.datasets[1].name: 'photos' is already used by spec.datasets[0]"),
    mutate("all-disabled", lambda d: ds(d).update(disabled=True), "spec.datasets: every dataset is disabled"),
    mutate("instanceprompt-without-prompt", lambda d: ds(d).update(captionStrategy="instanceprompt"),
           "spec.datasets[0].instancePrompt: required when captionStrategy is instanceprompt"),
    mutate("resolution-zero", lambda d: ds(d).update(resolution=0), "spec.datasets[0].resolution: 0 is not greater than 0"),
    mutate("max-without-target", lambda d: ds(d).update(maximumImageSize=1.0),
           "spec.datasets[0].targetDownsampleSize: required when maximumImageSize is set"),
    mutate("min-over-max", lambda d: ds(d).update(minimumImageSize=2.0, maximumImageSize=1.0, targetDownsampleSize=1.0),
           "spec.datasets[0].minimumImageSize: 2.0 is larger than maximumImageSize 1.0"),
    mutate("crop-aspect-typo", lambda d: ds(d).update(cropAspect="sqaure"), "did you mean 'square'?"),
    mutate("crop-not-bool", lambda d: ds(d).update(crop="yes please"), "spec.datasets[0].crop: 'yes please' is a string, expected boolean"),
    mutate("area-that-is-pixels", lambda d: ds(d).update(resolution=512),
           "spec.datasets[0].resolution: 512 megapixels (a 23170x23170 square) with resolutionType area, which is "
           "measured in megapixels (1.0 = 1024x1024, at most 16); did you mean resolutionType: pixel"),
    override("readme-set-resolution-512", ["spec.datasets.0.resolution=512"], "did you mean resolutionType: pixel"),
    mutate("area-maximum-that-is-pixels", lambda d: ds(d).update(maximumImageSize=1536, targetDownsampleSize=1024),
           "spec.datasets[0].maximumImageSize: 1536 megapixels"),
    mutate("pixel-that-is-area", lambda d: ds(d).update(resolution=1.0, resolutionType="pixel"),
           "spec.datasets[0].resolution: 1 px with resolutionType pixel, which is the shorter side in px (buckets "
           "are at least 64 px); did you mean resolutionType: area (1 megapixels)?"),
    mutate("dataset-path-root", lambda d: ds(d).update(path="/"),
           "spec.datasets[0].path: '/' resolves to the filesystem root"),
    mutate("vae-cache-root", lambda d: ds(d).update(vaeCacheDir="//"),
           "spec.datasets[0].vaeCacheDir: '//' resolves to the filesystem root"),
    mutate("repeats-negative", lambda d: ds(d).update(repeats=-1), "spec.datasets[0].repeats: -1 is less than the minimum of 0"),
    # --- training
    mutate("batch-negative", lambda d: d["spec"]["training"].update(batchSize=-1),
           "spec.training.batchSize: -1 is less than the minimum of 1"),
    mutate("batch-string", lambda d: d["spec"]["training"].update(batchSize="two"), "spec.training.batchSize: 'two' is a string, expected integer"),
    mutate("batch-fraction", lambda d: d["spec"]["training"].update(batchSize=1.5), "spec.training.batchSize: 1.5 is a number, expected integer"),
    mutate("lr-zero", lambda d: d["spec"]["training"].update(learningRate=0), "spec.training.learningRate: 0 is not greater than 0"),
    mutate("lr-too-big", lambda d: d["spec"]["training"].update(learningRate=2), "spec.training.learningRate: 2 is greater than the maximum of 1"),
    raw("lr-nan", MINIMAL_SPEC + "    learningRate: .nan\n", "spec.training.learningRate: nan is not a finite number"),
    raw("resolution-inf", MINIMAL_SPEC.replace("      path:", "      resolution: .inf\n      path:"),
        "spec.datasets[0].resolution: inf is not a finite number"),
    mutate("optimizer-typo", lambda d: d["spec"]["training"].update(optimizer="adam"), "did you mean 'adamw'?"),
    mutate("scheduler-unknown", lambda d: d["spec"]["training"].update(lrScheduler="onecycle"), "spec.training.lrScheduler: 'onecycle' is not one of"),
    raw("precision-bare-no", MINIMAL_SPEC + "    mixedPrecision: no\n", 'quote the word you meant (e.g. "no")'),
    mutate("no-steps-or-epochs", lambda d: d["spec"]["training"].pop("maxSteps"), "spec.training: set maxSteps or epochs"),
    mutate("max-steps-zero", lambda d: d["spec"]["training"].update(maxSteps=0), "spec.training.maxSteps: 0 is less than the minimum of 1"),
    mutate("training-unknown-field", lambda d: d["spec"]["training"].update(bachSize=2), "spec.training.bachSize: unknown field; did you mean 'batchSize'?"),
    mutate("seed-over-numpy", lambda d: d["spec"]["training"].update(seed=2**32),
           "spec.training.seed: 4294967296 is greater than the maximum of 4294967295"),
    mutate("seed-plus-rank-over-numpy", lambda d: (d["spec"]["training"].update(seed=2**32 - 1),
                                                  sub(d, "spec", "hardware").update(gpusPerNode=2)),
           "spec.training.seed: 4294967295 + rank goes past 4294967295 with 2 processes"),
    mutate("ddp-static-graph-with-accumulation",
           lambda d: d["spec"]["training"].update(gradientAccumulationSteps=2, ddp={"staticGraph": True}),
           "spec.training.ddp.staticGraph: true does not work with gradientAccumulationSteps 2"),
    override("ddp-bucket-zero", ["spec.training.ddp.bucketCapMB=0"],
             "spec.training.ddp.bucketCapMB: 0 is less than the minimum of 1"),
    mutate("ddp-unknown-field", lambda d: d["spec"]["training"].update(ddp={"bucketCapMb": 50}),
           "spec.training.ddp.bucketCapMb: unknown field; did you mean 'bucketCapMB'?"),
    mutate("validation-seed-over-numpy", lambda d: sub(d, "spec", "validation").update(seed=-1),
           "spec.validation.seed: -1 is less than the minimum of 0"),
    mutate("resume-root", lambda d: d["spec"]["training"].update(resume="/tmp/.."),
           "spec.training.resume: '/tmp/..' resolves to the filesystem root"),
    mutate("mps-bf16", lambda d: sub(d, "spec", "hardware").update(accelerator="mps"),
           "spec.training.mixedPrecision: 'bf16' is not supported on mps"),
    # --- validation, output, tracking
    mutate("resolution-not-multiple-of-8", lambda d: sub(d, "spec", "validation").update(resolutions="1024x1001"),
           "spec.validation.resolutions: 1024x1001 is not a multiple of 16 on both sides"),
    # 136 = 17 x 8: a whole latent grid, but an odd one that PixArt's 2x2 patches cannot tile.
    mutate("resolution-not-multiple-of-patch", lambda d: sub(d, "spec", "validation").update(resolutions="128x128,136x136"),
           "spec.validation.resolutions: 136x136 is not a multiple of 16 on both sides (PixArt Sigma's VAE downsamples "
           "by 8 and its transformer takes 2x2 latent patches, so other sizes have no whole token grid); try 144x144"),
    mutate("resolutions-bad-format", lambda d: sub(d, "spec", "validation").update(resolutions="1024*1024"),
           "spec.validation.resolutions: '1024*1024' does not match"),
    mutate("resolutions-zero", lambda d: sub(d, "spec", "validation").update(resolutions="0x0"), "0x0 has a zero side"),
    mutate("guidance-too-big", lambda d: sub(d, "spec", "validation").update(guidance=50), "spec.validation.guidance: 50 is greater than the maximum of 30"),
    mutate("prompts-not-list", lambda d: sub(d, "spec", "validation").update(prompts="a cat"), "spec.validation.prompts: 'a cat' is a string, expected array"),
    mutate("prompt-empty", lambda d: sub(d, "spec", "validation").update(prompts=[""]), "spec.validation.prompts[0]: '' is too short"),
    mutate("push-without-repo", lambda d: sub(d, "spec", "output", "hub").update(push=True),
           "spec.output.hub.repoId: required when push is true"),
    mutate("token-in-token-env", lambda d: sub(d, "spec", "output", "hub").update(tokenEnv="hf_abc-123"),
           "spec.output.hub.tokenEnv: <hidden: may be a secret> is not a valid name here; this must be the name of "
           "an environment variable, not the token itself"),
    mutate("api-key-in-key-env", lambda d: sub(d, "spec", "tracking", "wandb").update(apiKeyEnv="0123456789abcdef" * 2 + "01234567"),
           "spec.tracking.wandb.apiKeyEnv: <hidden: may be a secret> is not a valid name here"),
    mutate("output-dir-root", lambda d: sub(d, "spec", "output").update(dir="/"),
           "spec.output.dir: '/' resolves to the filesystem root; point it at a directory of its own"),
    mutate("cache-dir-root", lambda d: d["spec"].update(cacheDir="/.."), "spec.cacheDir: '/..' resolves to the filesystem root"),
    mutate("text-cache-root", lambda d: sub(d, "spec", "textEmbeds").update(cacheDir="/"),
           "spec.textEmbeds.cacheDir: '/' resolves to the filesystem root"),
    mutate("wandb-without-project", lambda d: sub(d, "spec", "tracking", "wandb").update(enabled=True),
           "spec.tracking.wandb.project: required when wandb is enabled"),
    # --- model, hardware, kubernetes
    mutate("family-unknown", lambda d: sub(d, "spec", "model").update(family="sdxl"), "spec.model.family: 'sdxl' is not one of pixart_sigma"),
    mutate("t5-too-long", lambda d: sub(d, "spec", "model").update(textEncoderMaxLength=1000),
           "spec.model.textEncoderMaxLength: 1000 is greater than the maximum of 512"),
    mutate("accelerator-typo", lambda d: sub(d, "spec", "hardware").update(accelerator="cuda"), "spec.hardware.accelerator: 'cuda' is not one of"),
    mutate("gpus-zero", lambda d: sub(d, "spec", "hardware").update(gpusPerNode=0), "spec.hardware.gpusPerNode: 0 is less than the minimum of 1"),
    mutate("port-too-big", lambda d: sub(d, "spec", "metrics").update(port=70000), "spec.metrics.port: 70000 is greater than the maximum of 65535"),
    mutate("volume-without-claim", lambda d: sub(d, "spec", "kubernetes", "volumes", "data").update(readOnly=True),
           "spec.kubernetes.volumes.data.claimName: required field is missing"),
    mutate("mount-path-relative", lambda d: sub(d, "spec", "kubernetes", "volumes", "cache").update(claimName="c", mountPath="cache"),
           "spec.kubernetes.volumes.cache.mountPath: 'cache' does not match the required pattern ^/ (an absolute path)"),
    mutate("quantity-bad", lambda d: sub(d, "spec", "kubernetes", "resources", "requests").update(memory="lots"),
           "spec.kubernetes.resources.requests.memory: 'lots' does not match"),
    mutate("toleration-operator", lambda d: sub(d, "spec", "kubernetes").update(tolerations=[{"operator": "Maybe"}]),
           "spec.kubernetes.tolerations[0].operator: 'Maybe' is not one of Exists, Equal"),
    # --- --set overrides, validated like the file
    override("set-unknown-field", ["spec.training.bachSize=2"], "--set spec.training.bachSize: unknown field spec.training.bachSize; did you mean 'batchSize'?"),
    override("set-no-equals", ["spec.training.batchSize"], "--set 'spec.training.batchSize': expected PATH=VALUE"),
    override("set-below-minimum", ["spec.training.batchSize=-1"], "spec.training.batchSize: -1 is less than the minimum of 1"),
    override("set-index-out-of-range", ["spec.datasets[3].name=x"], "--set spec.datasets[3].name: spec.datasets has 1 item(s)"),
    override("set-list-without-index", ["spec.datasets.name=x"],
             "spec.datasets is a list; index it with a number from 0, e.g. spec.datasets[0].name"),
    override("set-list-with-a-wrong-index", ["spec.datasets.x.resolution=1"], "e.g. spec.datasets[0].resolution"),
    override("set-list-with-a-negative-index", ["spec.datasets.-1.resolution=1"], "e.g. spec.datasets[0].resolution"),
    override("set-bad-yaml", ["spec.training.batchSize=[1"], "--set spec.training.batchSize: "),
    override("set-null-removes", ["spec.training.maxSteps=null"], "spec.training: set maxSteps or epochs"),
    override("set-mps", ["spec.hardware.accelerator=mps"], "spec.training.mixedPrecision: 'bf16' is not supported on mps"),
    override("set-bad-name", ["metadata.name=Bad"], "metadata.name: 'Bad' does not match"),
    override("set-into-scalar", ["spec.training.batchSize.x=1"], "spec.training.batchSize is an integer; it has no field 'x'"),
    override("set-empty-segment", ["spec..training=1"], "empty segment"),
    override("set-several", ["spec.training.batchSize=0", "spec.training.learningRate=5"],
             "spec.training.learningRate: 5 is greater than the maximum of 1"),
]


def test_corpus_is_big_and_unique():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_input_exits_2_and_names_the_problem(case, tmp_path, cli):
    spec = tmp_path / "job.yaml"
    spec.write_bytes(case.data)
    args = ["validate", spec]
    for item in case.sets:
        args += ["--set", item]
    result = cli(*args)
    assert result.code == 2, result.text
    assert case.expect in result.err, result.err
    assert "Traceback" not in result.text
    assert result.out == ""
    # Every problem line names the file first, so several files can be validated at once.
    assert all(line.startswith(f"{spec}: ") for line in result.err.splitlines()), result.err


def test_every_problem_is_reported_at_once(tmp_path, cli):
    text = MINIMAL_SPEC.replace("maxSteps: 10", "batchSize: -1\n    optimizer: adam") + (
        "  validation:\n    resolutions: 1000x1001\n  hardware:\n    accelerator: mps\n")
    spec = tmp_path / "many.yaml"
    spec.write_text(text)
    result = cli("validate", spec)
    assert result.code == 2
    for expected in ("spec.training.batchSize: -1", "spec.training.optimizer: 'adam'",
                     "spec.training: set maxSteps or epochs", "spec.validation.resolutions: 1000x1001",
                     "spec.training.mixedPrecision: 'bf16' is not supported on mps"):
        assert expected in result.err


def test_schema_findings_hide_semantic_noise_in_the_same_field(tmp_path, cli):
    spec = tmp_path / "noise.yaml"
    spec.write_text(MINIMAL_SPEC + "    mixedPrecision: no\n  hardware:\n    accelerator: mps\n")
    result = cli("validate", spec)
    # One line about mixedPrecision (the YAML boolean), not a second one about mps.
    assert result.err.count("spec.training.mixedPrecision") == 1, result.err


@pytest.mark.parametrize("name, data, expect", [
    ("empty.yaml", b"", "the file is empty"),
    ("junk.yaml", bytes(range(256)), "not a text file"),
    ("bomb.yaml", BOMB.encode(), "expands to more than"),
    ("batch.yaml", MINIMAL_SPEC.replace("maxSteps: 10", "maxSteps: 10\n    batchSize: -1").encode(),
     "spec.training.batchSize: -1 is less than the minimum of 1"),
])
def test_console_path_in_a_real_process(name, data, expect, tmp_path):
    spec = tmp_path / name
    spec.write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "runner", "validate", str(spec)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"{spec}: " in proc.stderr and expect in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_console_path_valid_and_missing_files(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner", "validate", "examples/smoke.yaml",
                           str(tmp_path / "absent.yaml"), str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "examples/smoke.yaml: valid TrainingJob 'smoke'" in proc.stdout
    assert f"{tmp_path / 'absent.yaml'}: no such file" in proc.stderr
    assert f"{tmp_path}: is a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
