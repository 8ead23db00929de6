"""Machine-specific settings for building and running images in tests, detected and optional, so
that images/Dockerfile stays free of them:

- pip's own configuration (index, find-links, CA bundle: `pip config list`) is handed to the
  build as a config file plus read-only mounts of the local paths it names, never baked in;
- the container runtime settings this host needs (explicit ulimits where the runtime cannot
  raise them; runc where the default runtime fails) are found by probing and written to a
  containers.conf that podman reads through CONTAINERS_CONF.
"""
from __future__ import annotations

import itertools
import os
import re
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

BUILD_PIP_CONF = "/run/trainingjob-build/pip.conf"


def parse_pip_config(listing: str) -> dict[str, str]:
    """`pip config list` lines (`global.find-links='/opt/wheels'`, `:env:.cert='...'`) -> one
    merged option set. Environment entries win, as they do for pip."""
    found: dict[tuple[int, str], str] = {}
    for line in listing.splitlines():
        m = re.fullmatch(r"(:env:|global|install|download|wheel)\.([\w-]+)='(.*)'", line.strip())
        if m:
            found[(m.group(1) == ":env:", m.group(2))] = m.group(3)
    return {key: value for (_, key), value in sorted(found.items())}


def local_paths(options: dict[str, str]) -> list[str]:
    """Absolute host paths the options name (find-links folders, file:// indexes, CA bundle,
    constraint files): each must be mounted for pip inside the build to see it. A file://
    index is mounted with its parent: its pages may link to files beside it (../files/)."""
    paths = []
    for value in options.values():
        for word in value.split():
            path = word.removeprefix("file://")
            if path.startswith("/"):
                path = os.path.normpath(path)
                paths.append(os.path.dirname(path) if word.startswith("file://") else path)
    return sorted(set(paths))


def pip_conf_text(options: dict[str, str]) -> str:
    return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())


def pip_build_flags(options: dict[str, str], conf_file: Path, exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """Build flags that give pip inside the build this machine's configuration: the config file
    and every local path it names, read-only, at the same paths. Nothing of it reaches the
    image: RUN-time mounts are not committed and the ARG lives in the build stage only."""
    if not options:
        return []
    flags = ["--build-arg", f"PIP_CONFIG_FILE={BUILD_PIP_CONF}", "--volume", f"{conf_file}:{BUILD_PIP_CONF}:ro"]
    for path in local_paths(options):
        if exists(path):
            flags += ["--volume", f"{path}:{path}:ro"]
    return flags


def torch_from_pip_config(options: dict[str, str]) -> bool:
    """This machine points pip at its own wheels or indexes: let the build take torch from there
    (TORCH_INDEX=""), rather than from the public CPU index the Dockerfile defaults to."""
    return any(k in options for k in ("find-links", "index-url", "extra-index-url"))


def runtime_candidates(nofile_hard: int, nproc_hard: int, pid_max: int, have_runc: bool) -> list[dict]:
    """containers.conf settings to probe, plainest first. The default ulimits podman asks for can
    exceed what an unprivileged sandbox allows; the host's own hard limits always fit (nproc is
    also capped by pid_max on such hosts)."""
    ulimits = [[], [f"nofile={nofile_hard}:{nofile_hard}", f"nproc={min(nproc_hard, pid_max)}:{min(nproc_hard, pid_max)}"]]
    runtimes = [None, "runc"] if have_runc else [None]
    return [{"runtime": rt, "ulimits": ul} for rt, ul in itertools.product(runtimes, ulimits)]


def containers_conf_text(settings: dict) -> str:
    text = "[containers]\n"
    if settings["ulimits"]:
        text += "default_ulimits = [" + ", ".join(f'"{u}"' for u in settings["ulimits"]) + "]\n"
    if settings["runtime"]:
        text += f'[engine]\nruntime = "{settings["runtime"]}"\n'
    return text


def host_limits() -> tuple[int, int, int]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except OSError:
        pid_max = 32768
    big = 1 << 20  # RLIM_INFINITY reads as -1
    return (nofile if nofile > 0 else big), (nproc if nproc > 0 else big), pid_max


def find_runtime_conf(image: str, workdir: Path) -> tuple[Path | None, str]:
    """The first containers.conf under which `podman run image true` works here; (None, why)
    when none does. The plain one is tried first, so a normal machine gets no settings."""
    errors = []
    for i, settings in enumerate(runtime_candidates(*host_limits(), have_runc=bool(shutil.which("runc")))):
        conf = workdir / f"containers-{i}.conf"
        conf.write_text(containers_conf_text(settings))
        proc = subprocess.run(["podman", "run", "--rm", image, "true"], capture_output=True, text=True,
                              env={**os.environ, "CONTAINERS_CONF": str(conf)}, timeout=120)
        if proc.returncode == 0:
            return conf, ""
        errors.append(f"{settings}: {proc.stderr.strip()[-300:]}")
    return None, "\n".join(errors)


def pip_options(python: str) -> dict[str, str]:
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    return parse_pip_config(proc.stdout) if proc.returncode == 0 else {}


def missing_tools(tools: Sequence[str]) -> list[str]:
    return [t for t in tools if not shutil.which(t)]
