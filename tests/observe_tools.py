"""Helpers shared by the observability tests: scraping over real HTTP and the real system tools
(promtool, prometheus, chromium) that `make test` installs with apt-get where it can."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import urllib.request

import pytest

INSTALL_HINT = "`make test` installs it with apt-get (tests/system-deps.sh) where apt-get works: apt-get install {pkg}"


def require_tool(name: str, package: str) -> str:
    """The tool's path, or a skip that says why (never a silent pass)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed; " + INSTALL_HINT.format(pkg=package))
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, timeout: float = 5) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        assert resp.status == 200
        assert resp.headers.get("Content-Type", "").startswith("text/plain")
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """Value of one sample line of the exposition text, or None."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and sorted(filter(None, (m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    return None


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess:
    """`promtool check metrics` lints an exposition (naming, units, _total, help text)."""
    tool = require_tool("promtool", "prometheus")
    return subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
