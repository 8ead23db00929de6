"""`trainingjob run --container`: the engine command is built by a pure function (tables here);
the CLI flag runs it. The real run in a real image is tests/e2e/test_image_build.py."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runner.launch import images
from runner.launch.container import ContainerError, Mount, container_command, env_names, gpu_args, job_mounts
from runner.spec.schema import apply_defaults

REPO = Path(__file__).resolve().parents[2]


def spec(**sections) -> dict:
    base = {"datasets": [{"name": "photos", "type": "local", "path": "data/photos"}], "cacheDir": "cache/job",
            "output": {"dir": "out/job"}, "training": {"maxSteps": 1}, "metrics": {"port": 0},
            "hardware": {"accelerator": "cpu"}}
    base.update(sections)
    return apply_defaults({"apiVersion": "x", "kind": "TrainingJob", "metadata": {"name": "j"}, "spec": base})["spec"]


def args_of(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


@pytest.mark.parametrize("sections, exists, expected", [
    # defaults: the text cache lies inside cacheDir, so one writable mount covers both
    ({}, (), [Mount("/w/cache/job", True), Mount("/w/out/job", True), Mount("/w/data/photos", False),
              Mount("/w/job.yaml", False)]),
    # an explicit VAE cache elsewhere, a text cache inside; absolute paths kept
    ({"datasets": [{"name": "p", "path": "/srv/photos", "vaeCacheDir": "/fast/vae"}],
      "textEmbeds": {"cacheDir": "cache/job/text2"}}, (),
     [Mount("/fast/vae", True), Mount("/w/cache/job", True), Mount("/w/out/job", True),
      Mount("/srv/photos", False), Mount("/w/job.yaml", False)]),
    # a local model folder and a resume path are inputs; a Hub id and `auto` are not paths
    ({"model": {"pretrained": "models/pixart"}, "training": {"maxSteps": 1, "resume": "/ckpt/step-5"}},
     ("/w/models/pixart", "/ckpt/step-5"),
     [Mount("/ckpt/step-5", False), Mount("/w/cache/job", True), Mount("/w/out/job", True),
      Mount("/w/data/photos", False), Mount("/w/job.yaml", False), Mount("/w/models/pixart", False)]),
    # data inside the cache dir is already visible; output inside a read-only tree stays writable
    ({"datasets": [{"name": "p", "path": "data/in"}, {"name": "q", "path": "photos"}],
      "output": {"dir": "photos/out"}, "cacheDir": "data"}, (),
     [Mount("/w/data", True), Mount("/w/job.yaml", False), Mount("/w/photos", False), Mount("/w/photos/out", True)]),
])
def test_job_mounts(sections, exists, expected):
    mounts = job_mounts(spec(**sections), "/w/job.yaml", "/w", exists=lambda p: p in exists)
    assert sorted(mounts, key=lambda m: m.path) == sorted(expected, key=lambda m: m.path)


@pytest.mark.parametrize("hardware, engine, gids, expected", [
    ("cpu", "docker", (), []),
    ("cuda12", "docker", (), ["--gpus", "all"]),
    ("cuda13", "/usr/local/bin/docker", (), ["--gpus", "all"]),
    ("cuda12", "podman", (), ["--device", "nvidia.com/gpu=all"]),
    ("rocm", "podman", (44, 109, 44), ["--device", "/dev/kfd", "--device", "/dev/dri",
                                       "--group-add", "44", "--group-add", "109"]),
    ("rocm", "docker", (), ["--device", "/dev/kfd", "--device", "/dev/dri"]),
])
def test_gpu_args(hardware, engine, gids, expected):
    assert gpu_args(hardware, engine, gids) == expected


def test_env_names_adds_the_specs_token_variables_when_set():
    s = spec(output={"dir": "o", "hub": {"push": False, "tokenEnv": "MY_HUB"}},
             tracking={"wandb": {"enabled": False, "apiKeyEnv": "TEAM_WANDB"}})
    present = {"HF_ENDPOINT", "MY_HUB", "TEAM_WANDB", "UNRELATED"}
    assert env_names(s, present.__contains__) == ["HF_ENDPOINT", "MY_HUB", "TEAM_WANDB"]


def test_container_command_cpu_as_the_caller():
    cmd = container_command(engine="podman", image="img:cpu", spec=spec(), spec_file="job.yaml", cwd="/w",
                            overrides=["spec.training.maxSteps=3"], stage="cache", user="1000:1000",
                            env=["HF_TOKEN"], exists=lambda p: False)
    assert cmd[:3] == ["podman", "run", "--rm"]
    assert args_of(cmd, "--workdir") == ["/w"] and args_of(cmd, "--user") == ["1000:1000"]
    assert sorted(args_of(cmd, "--volume")) == ["/w/cache/job:/w/cache/job", "/w/data/photos:/w/data/photos:ro",
                                                "/w/job.yaml:/w/job.yaml:ro", "/w/out/job:/w/out/job"]
    # the token's value never appears on the command line: the engine copies it by name
    assert args_of(cmd, "--env") == ["HF_HOME=/w/cache/job/huggingface", "HF_TOKEN"]
    assert "--publish" not in cmd and "--gpus" not in cmd and "--device" not in cmd
    assert cmd[cmd.index("img:cpu"):] == ["img:cpu", "run", "/w/job.yaml", "--stage", "cache",
                                          "--set", "spec.training.maxSteps=3"]


def test_container_command_gpu_image_user_metrics_and_shared_hub_cache():
    s = spec(hardware={"accelerator": "cuda13", "gpusPerNode": 2, "nodes": 1}, metrics={"port": 9400})
    cmd = container_command(engine="docker", image="img:cuda13", spec=s, spec_file="/jobs/a.yaml", cwd="/w",
                            hf_home="/home/me/.cache/huggingface", exists=lambda p: False)
    assert "--user" not in cmd, "no user given: the image's own non-root user"
    assert "/home/me/.cache/huggingface:/home/me/.cache/huggingface" in args_of(cmd, "--volume")
    assert args_of(cmd, "--env") == ["HF_HOME=/home/me/.cache/huggingface"]
    assert args_of(cmd, "--publish") == ["9400:9400"] and args_of(cmd, "--gpus") == ["all"]
    assert args_of(cmd, "--ipc") == ["host"]


@pytest.mark.parametrize("hardware, error, match", [
    ({"accelerator": "mps"}, images.NoImageError, "mps"),
    ({"accelerator": "cpu", "nodes": 2}, ContainerError, "nodes > 1"),
])
def test_container_command_refuses(hardware, error, match):
    with pytest.raises(error, match=match):
        container_command(engine="podman", image="i", spec=spec(hardware=hardware), spec_file="j.yaml", cwd="/w")


# ----------------------------------------------------------------------------- the CLI flag

# Records its arguments, one a line, and answers as a container that exited 7 would.
FAKE_ENGINE = """#!/bin/sh
printf '%s\\n' "$@" > "$0.args"
exit 7
"""


def test_cli_run_container_execs_the_engine_and_returns_its_exit_code(cli, tmp_path, monkeypatch):
    engine = tmp_path / "fake-engine"
    engine.write_text(FAKE_ENGINE)
    engine.chmod(engine.stat().st_mode | stat.S_IEXEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAININGJOB_ENGINE", str(engine))
    monkeypatch.setenv("TRAININGJOB_IMAGE", "localhost/tj:test")
    monkeypatch.setenv("HF_TOKEN", "secret-value")
    code = cli("run", "--container", REPO / "examples/smoke.yaml", "--set", "spec.output.dir=out").code
    assert code == 7
    argv = (tmp_path / "fake-engine.args").read_text().splitlines()
    assert argv[:2] == ["run", "--rm"] and "localhost/tj:test" in argv
    assert "secret-value" not in " ".join(argv) and "HF_TOKEN" in argv
    assert (tmp_path / "out").is_dir(), "bind-mount sources are created before the engine starts"
    if os.getuid() == 0:
        assert (tmp_path / "out").stat().st_uid == images.IMAGE_UID
        assert "--user" not in argv


def test_cli_run_container_without_an_engine(cli, monkeypatch):
    monkeypatch.setenv("TRAININGJOB_ENGINE", "no-such-engine-xyz")
    result = cli("run", "--container", REPO / "examples/smoke.yaml")
    assert result.code == 2 and "TRAININGJOB_ENGINE=no-such-engine-xyz is not a command here" in result.err
    monkeypatch.delenv("TRAININGJOB_ENGINE")
    monkeypatch.setenv("PATH", "/nonexistent")
    result = cli("run", "--container", REPO / "examples/smoke.yaml")
    assert result.code == 2 and "no container engine found; install podman or docker" in result.err


def test_cli_run_container_when_the_engine_cannot_start_it(cli, tmp_path, monkeypatch):
    """podman exits 125 when it cannot pull the image: that is not one of our exit codes."""
    engine = tmp_path / "fake-engine"
    engine.write_text(FAKE_ENGINE.replace("exit 7", "echo 'Error: initializing source docker://x' >&2; exit 125"))
    engine.chmod(engine.stat().st_mode | stat.S_IEXEC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAININGJOB_ENGINE", str(engine))
    result = cli("run", "--container", REPO / "examples/smoke.yaml", "--set", "spec.output.dir=out")
    assert result.code == 2
    assert f"{engine} could not run the container (exit 125: the engine failed" in result.err
    assert "make image HW=cpu" in result.err and "TRAININGJOB_IMAGE" in result.err


def test_launch_modules_import_neither_torch_nor_kubernetes():
    """images.py is shared with the operator image (no torch) and the stages (no kubernetes)."""
    import subprocess
    import sys

    code = ("import sys, runner.launch.images, runner.launch.container, runner.cli; "
            "print([m for m in ('torch', 'kubernetes', 'kopf', 'diffusers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
