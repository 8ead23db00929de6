"""The image test's machine-specific settings are detected by pure functions: tables here."""
from __future__ import annotations

import pytest

from tests.e2e import image_harness as h

LISTING = """\
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.extra-index-url='file:///opt/pypi/simple https://mirror.example/simple'
global.find-links='/opt/wheels'
:env:.find-links='/srv/wheels'
:env:.default-timeout='180'
site.ignored='x'
"""


def test_parse_pip_config_merges_with_environment_last():
    assert h.parse_pip_config(LISTING) == {
        "cert": "/etc/ssl/certs/ca-certificates.crt",
        "extra-index-url": "file:///opt/pypi/simple https://mirror.example/simple",
        "find-links": "/srv/wheels",
        "default-timeout": "180",
    }


@pytest.mark.parametrize("options, paths", [
    ({}, []),
    ({"index-url": "https://pypi.example/simple"}, []),
    ({"extra-index-url": "file:///opt/pypi/simple file:///opt/more/", "cert": "/etc/ca.pem", "find-links": "/w"},
     ["/etc/ca.pem", "/opt", "/opt/pypi", "/w"]),
])
def test_local_paths(options, paths):
    assert h.local_paths(options) == paths


def test_pip_build_flags_mount_only_existing_paths_read_only(tmp_path):
    conf = tmp_path / "pip.conf"
    flags = h.pip_build_flags({"find-links": "/w /gone", "cert": "/ca.pem"}, conf, exists=lambda p: p != "/gone")
    assert flags == ["--build-arg", f"PIP_CONFIG_FILE={h.BUILD_PIP_CONF}", "--volume", f"{conf}:{h.BUILD_PIP_CONF}:ro",
                     "--volume", "/ca.pem:/ca.pem:ro", "--volume", "/w:/w:ro"]
    assert h.pip_build_flags({}, conf) == [], "a machine without pip settings builds with the Dockerfile's defaults"


@pytest.mark.parametrize("options, local", [
    ({}, False), ({"cert": "/ca.pem"}, False), ({"find-links": "/w"}, True), ({"index-url": "https://m/simple"}, True),
])
def test_torch_from_pip_config(options, local):
    assert h.torch_from_pip_config(options) is local


def test_runtime_candidates_plainest_first_and_nproc_capped_by_pid_max():
    cands = h.runtime_candidates(20000, 96365, 32768, have_runc=True)
    assert cands[0] == {"runtime": None, "ulimits": []}
    assert {"runtime": "runc", "ulimits": ["nofile=20000:20000", "nproc=32768:32768"]} in cands
    assert all(c["runtime"] is None for c in h.runtime_candidates(1, 1, 1, have_runc=False))


@pytest.mark.parametrize("settings, text", [
    ({"runtime": None, "ulimits": []}, "[containers]\n"),
    ({"runtime": "runc", "ulimits": ["nofile=5:5"]},
     '[containers]\ndefault_ulimits = ["nofile=5:5"]\n[engine]\nruntime = "runc"\n'),
])
def test_containers_conf_text(settings, text):
    assert h.containers_conf_text(settings) == text
