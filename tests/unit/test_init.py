"""`trainingjob init`: the starter validates, guard rails hold, prompts work (injected and on a TTY)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from runner.spec import starter
from runner.spec.load import load_spec

REPO = Path(__file__).resolve().parents[2]


def answers_from(*lines: str):
    """An `ask` that answers from a script and records the prompts it was shown."""
    queue = list(lines)
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)

    ask.prompts = prompts  # type: ignore[attr-defined]
    return ask


def test_yes_writes_a_starter_that_validates(tmp_path, cli, monkeypatch):
    out = tmp_path / "job.yaml"
    result = cli("init", "--yes", "--output", out)
    assert result.code == 0, result.err
    text = out.read_text()
    assert text.startswith("# A TrainingJob written by `trainingjob init`")
    job = load_spec(out)
    assert job.name == "pixart-sigma-finetune"
    assert job.spec.model.pretrained == "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    assert job.spec.validation.guidance == 4.0
    assert job.spec.hardware.accelerator == "cuda12" and job.spec.training.mixedPrecision == "bf16"
    ds = job.spec.datasets[0]
    assert (ds.type, ds.path, ds.crop, ds.cropAspect, ds.cropStyle) == ("local", "datasets/my-images", True, "square", "random")
    assert job.warnings == ()
    # The starter's dataset folder does not exist yet: validate says so, naming the field.
    monkeypatch.chdir(tmp_path)
    result = cli("validate", out)
    assert result.code == 2 and "spec.datasets[0].path: datasets/my-images does not exist" in result.err
    from PIL import Image

    (tmp_path / "datasets" / "my-images").mkdir(parents=True)
    Image.new("RGB", (768, 768), (20, 40, 60)).save(tmp_path / "datasets" / "my-images" / "a_cat.png")
    assert cli("validate", out).code == 0


def test_refuses_to_overwrite_without_force(tmp_path, cli):
    out = tmp_path / "job.yaml"
    out.write_text("mine\n")
    result = cli("init", "--yes", "--output", out)
    assert result.code == 2 and "already exists; pass --force" in result.err
    assert out.read_text() == "mine\n"
    assert cli("init", "--yes", "--force", "--output", out).code == 0
    assert load_spec(out).name == "pixart-sigma-finetune"


def test_output_dash_prints_the_spec(cli):
    result = cli("init", "--yes", "--output", "-")
    assert result.code == 0
    assert yaml.safe_load(result.out)["kind"] == "TrainingJob"


def test_answers_land_in_the_spec_and_bad_answers_are_asked_again(tmp_path, capsys):
    out = tmp_path / "job.yaml"
    ask = answers_from("Bad Name!", "my-run", "", str(tmp_path / "My Photos"), "instanceprompt",
                       "a photo of sks dog", "mps", "")
    code = starter.run_init(str(out), yes=False, force=False, ask=ask, interactive=True)
    assert code == 0, capsys.readouterr().err
    assert "metadata.name: 'Bad Name!' does not match" in capsys.readouterr().err
    assert len(ask.prompts) == 8 and ask.prompts[0] == ask.prompts[1]
    assert "(filename/textfile/instanceprompt) [filename]" in ask.prompts[4]
    job = load_spec(out)
    assert job.name == "my-run"
    assert job.spec.output.dir == "output/my-run"  # default follows the answered name
    ds = job.spec.datasets[0]
    assert (ds.name, ds.path) == ("my-photos", str(tmp_path / "My Photos"))
    assert (ds.captionStrategy, ds.instancePrompt) == ("instanceprompt", "a photo of sks dog")
    # Guard rail: Apple silicon trains in full precision.
    assert job.spec.hardware.accelerator == "mps" and job.spec.training.mixedPrecision == "no"


def test_quotes_and_odd_characters_survive(tmp_path):
    out = tmp_path / "job.yaml"
    ask = answers_from("", "./models/pixart: \"local\" # copy", "data/été #1", "", "cpu", "out dir/x")
    assert starter.run_init(str(out), yes=False, force=False, ask=ask, interactive=True) == 0
    job = load_spec(out)
    assert job.spec.model.pretrained == "./models/pixart: \"local\" # copy"
    assert job.spec.datasets[0].path == "data/été #1"
    assert job.spec.training.mixedPrecision == "no"


def test_end_of_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "job.yaml"
    code = starter.run_init(str(out), yes=False, force=False, ask=answers_from("a-name"), interactive=True)
    assert code == 2 and not out.exists()
    assert "nothing written" in capsys.readouterr().err


def test_without_a_tty_the_defaults_are_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("ignored\n"))
    out = tmp_path / "job.yaml"
    assert starter.run_init(str(out), yes=False, force=False) == 0
    assert load_spec(out).name == "pixart-sigma-finetune"


def test_every_accelerator_gives_a_valid_starter():
    for accelerator in ("cpu", "cuda12", "cuda13", "rocm", "mps"):
        answers = starter.gather(None) | {"accelerator": accelerator}
        assert starter.check(starter.render(answers), accelerator) == []


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_prompts_on_a_real_pseudo_tty(tmp_path):
    out = tmp_path / "job.yaml"
    controller, terminal = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "runner", "init", "--output", str(out)], cwd=REPO,
                            stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    os.write(controller, b"tty-job\n\n\ntextfile\ncpu\n\n")
    transcript = b""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        transcript += _read_some(controller)
    transcript += _read_some(controller)
    os.close(controller)
    assert proc.wait(timeout=5) == 0, transcript.decode(errors="replace")
    assert b"Job name" in transcript and b"Accelerator (cpu/cuda12/cuda13/rocm/mps) [cuda12]" in transcript
    job = load_spec(out)
    assert (job.name, job.spec.datasets[0].captionStrategy, job.spec.hardware.accelerator) == ("tty-job", "textfile", "cpu")
    assert job.spec.output.dir == "output/tty-job"


def _read_some(fd: int) -> bytes:
    import select

    ready, _, _ = select.select([fd], [], [], 0.2)
    if not ready:
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO once the child has closed the terminal
        return b""


def test_a_root_folder_answer_is_asked_again(tmp_path, capsys):
    """`/` passed each question's check and then threw every answer away at the end."""
    out = tmp_path / "job.yaml"
    ask = answers_from("root-job", "", "/", "data/imgs", "", "cpu", "/", "out/here")
    assert starter.run_init(str(out), yes=False, force=False, ask=ask, interactive=True) == 0
    err = capsys.readouterr().err
    assert "spec.datasets[0].path: '/' resolves to the filesystem root; give a folder of its own, e.g. " \
           "datasets/my-images" in err
    assert "spec.output.dir: '/' resolves to the filesystem root; give a folder of its own, e.g. output/root-job" in err
    spec = yaml.safe_load(out.read_text())["spec"]
    assert spec["datasets"][0]["path"] == "data/imgs" and spec["output"]["dir"] == "out/here"


def test_an_empty_output_name_is_refused(cli):
    result = cli("init", "--yes", "--output", "")
    assert result.code == 2 and "--output: give a file name, or - to print the spec" in result.err
