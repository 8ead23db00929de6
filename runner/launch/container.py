"""`trainingjob run --container FILE`: the same run, inside the image for the spec's hardware.

`container_command` is pure (a table test covers it); `run_in_container` gathers what it needs
from the machine (engine, uid, environment, GPU device groups) and runs the engine.

Host paths are mounted at the same paths inside the container and the working directory is
the same, so relative paths in the spec resolve exactly as in a native run, and a cache built
natively is reused in the container (its manifests hold those paths) and back.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from runner.envvars import DEBUG_ENV
from runner.exitcodes import EXIT_INVALID
from runner.launch import images
from runner.spec.plan import job_paths

# Read from the host by name (`-e NAME`: the engine copies the value, which never appears in
# the command line). Spec-named token variables are added to these.
PASSED_ENV = ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT",
              DEBUG_ENV, "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "NCCL_DEBUG")
# podman's and docker's own exit codes for a container they could not start.
ENGINE_FAILURES = {125: "the engine failed, e.g. the image could not be pulled",
                   126: "the container's command could not be invoked", 127: "the container's command was not found"}
IMAGE_ENV = "TRAININGJOB_IMAGE"   # overrides the image (a local build, a mirror)
ENGINE_ENV = "TRAININGJOB_ENGINE"


class ContainerError(ValueError):
    """The spec cannot run in a container here; the message says why and what to do."""


@dataclass(frozen=True)
class Mount:
    path: str        # absolute; the same on the host and in the container
    writable: bool

    def arg(self) -> str:
        return f"{self.path}:{self.path}" + ("" if self.writable else ":ro")


def _abs(path: str, cwd: str) -> str:
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def job_mounts(spec: Mapping[str, Any], spec_file: str, cwd: str,
               exists: Callable[[str], bool] = os.path.exists) -> list[Mount]:
    """What the job reads (read-only) and writes, deduplicated: a path inside a writable mount
    is already visible, and so is one inside a read-only mount unless it must be writable."""
    paths = job_paths(spec)
    writable = [paths.cache_dir, paths.text_dir, paths.output_dir]
    writable += [Path(d["vaeCacheDir"]) for d in spec.get("datasets", []) if d.get("vaeCacheDir")]
    inputs = [spec_file] + [d["path"] for d in spec.get("datasets", []) if d.get("path")]
    # Model references and `resume` are paths only when they exist here; otherwise they are
    # Hub ids, `builtin:` names, or `auto`/`none`.
    refs = [spec.get("model", {}).get("pretrained"), spec.get("evaluation", {}).get("clipModel"),
            spec.get("training", {}).get("resume")]
    inputs += [r for r in refs if isinstance(r, str) and exists(_abs(r, cwd))]
    wanted = [Mount(_abs(str(p), cwd), True) for p in writable] + [Mount(_abs(p, cwd), False) for p in inputs]
    kept: list[Mount] = []
    for m in sorted(wanted, key=lambda m: (m.path.count("/"), not m.writable, m.path)):
        if any(_within(m.path, k.path) and (k.writable or not m.writable) for k in kept):
            continue
        kept.append(m)
    return kept


def gpu_args(hardware: str, engine: str, device_gids: Sequence[int] = ()) -> list[str]:
    """GPU pass-through flags. NVIDIA: docker's `--gpus` (NVIDIA Container Toolkit) or a CDI
    device for podman. ROCm: the kernel driver's device nodes, plus the groups that own them
    on this host (numeric, as group names differ between host and image)."""
    if hardware in ("cuda12", "cuda13"):
        return ["--gpus", "all"] if Path(engine).name == "docker" else ["--device", "nvidia.com/gpu=all"]
    if hardware == "rocm":
        out = ["--device", "/dev/kfd", "--device", "/dev/dri"]
        for gid in sorted(set(device_gids)):
            out += ["--group-add", str(gid)]
        return out
    return []


def env_names(spec: Mapping[str, Any], present: Callable[[str], bool]) -> list[str]:
    """Environment variables to copy into the container: the fixed list plus the token
    variables the spec names, those set here only."""
    named = [spec.get("output", {}).get("hub", {}).get("tokenEnv"),
             spec.get("tracking", {}).get("wandb", {}).get("apiKeyEnv")]
    names = list(PASSED_ENV) + [n for n in named if n and n not in PASSED_ENV]
    return [n for n in names if present(n)]


def container_command(*, engine: str, image: str, spec: Mapping[str, Any], spec_file: str, cwd: str,
                      overrides: Sequence[str] = (), stage: str = "all", user: str | None = None,
                      hf_home: str | None = None, env: Sequence[str] = (), device_gids: Sequence[int] = (),
                      exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """The engine command that runs `trainingjob run` on this spec inside `image`.
    `user` is `uid:gid` (None: the image's own non-root user); `hf_home` is a host Hugging Face
    cache to share (None: `<cacheDir>/huggingface`, on the cache mount)."""
    hardware = spec.get("hardware", {}).get("accelerator", "cpu")
    images.flavour(hardware)  # NoImageError for mps
    if spec.get("hardware", {}).get("nodes", 1) > 1:
        raise ContainerError("spec.hardware.nodes > 1: `run --container` starts one node; "
                             "run multi-node jobs on Kubernetes (trainingjob render / the operator)")
    mounts = job_mounts(spec, _abs(spec_file, cwd), cwd, exists)
    if hf_home:
        mounts.append(Mount(_abs(hf_home, cwd), True))
    hf = _abs(hf_home, cwd) if hf_home else os.path.join(_abs(str(job_paths(spec).cache_dir), cwd), "huggingface")
    cmd = [engine, "run", "--rm",
           # PyTorch data loaders and NCCL share tensors through /dev/shm; the engines' 64 MB is too small.
           "--ipc", "host",
           "--workdir", cwd]
    if user:
        cmd += ["--user", user]
    for m in mounts:
        cmd += ["--volume", m.arg()]
    cmd += ["--env", f"HF_HOME={hf}"]
    for name in env:
        cmd += ["--env", name]
    port = spec.get("metrics", {}).get("port", 0)
    if port:
        cmd += ["--publish", f"{port}:{port}"]
    cmd += gpu_args(hardware, engine, device_gids)
    cmd += [image, "run", _abs(spec_file, cwd), "--stage", stage]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def _device_gids() -> list[int]:
    gids = []
    for dev in [Path("/dev/kfd"), *sorted(Path("/dev/dri").glob("renderD*"))]:
        try:
            gids.append(dev.stat().st_gid)
        except OSError:
            pass
    return gids


def _host_hf_home() -> str | None:
    """The host's Hugging Face cache, shared so models downloaded natively are not fetched again;
    root's lies under /root, which the image's user cannot enter, so root gets none."""
    if os.getuid() == 0:
        return None
    home = os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
    return home if os.path.isdir(home) else None


def run_in_container(job: Any, spec_file: str, overrides: Sequence[str], stage: str, engine: str = "") -> int:
    """Run the validated `job` inside its image; returns the container's exit code."""
    spec = job.document.to_dict()["spec"]
    engine = engine or os.environ.get(ENGINE_ENV) or images.find_engine(images.RUN_ENGINES) or ""
    if engine and engine == os.environ.get(ENGINE_ENV) and not shutil.which(engine):
        print(f"run --container: {ENGINE_ENV}={engine} is not a command here; point it at podman or docker, "
              "or unset it to use whichever is installed", file=sys.stderr)
        return EXIT_INVALID
    if not engine or not shutil.which(engine):
        print(f"run --container: no container engine found; install podman or docker "
              f"(or set {ENGINE_ENV})", file=sys.stderr)
        return EXIT_INVALID
    hardware = spec.get("hardware", {}).get("accelerator", "cpu")
    try:
        image = os.environ.get(IMAGE_ENV) or images.image_ref(hardware)
        cwd = os.getcwd()
        root = os.getuid() == 0
        cmd = container_command(engine=engine, image=image, spec=spec, spec_file=spec_file, cwd=cwd,
                                overrides=overrides, stage=stage, user=None if root else f"{os.getuid()}:{os.getgid()}",
                                hf_home=_host_hf_home(), env=env_names(spec, lambda n: bool(os.environ.get(n))),
                                device_gids=_device_gids())
    except (images.NoImageError, ContainerError) as e:
        print(f"{spec_file}: {e}", file=sys.stderr)
        return EXIT_INVALID
    # Bind mounts need their source; creating the writable ones here also makes them the
    # caller's. A root caller's job runs as the image's non-root user, so it gets the new ones.
    for m in job_mounts(spec, os.path.abspath(spec_file), cwd):
        if m.writable and not os.path.exists(m.path):
            os.makedirs(m.path)
            if root:
                os.chown(m.path, images.IMAGE_UID, images.IMAGE_UID)
    print(f"running in {image} with {engine}", file=sys.stderr, flush=True)
    code = subprocess.call(cmd)
    if code in ENGINE_FAILURES:  # the job itself never exits with these: the engine could not run it
        print(f"run --container: {engine} could not run the container (exit {code}: {ENGINE_FAILURES[code]}); its "
              f"own message is above. Without the image here: build it with `make image HW={hardware}`, or set "
              f"{IMAGE_ENV} to one you have", file=sys.stderr)
        return EXIT_INVALID
    return code
