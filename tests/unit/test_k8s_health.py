"""The operator's /healthz (runner/k8s/health.py), fetched over real HTTP: on IPv6 and IPv4 at
once (kopf's liveness endpoint binds one of them), 500 while something is wrong, and IPv4 alone
on a host without IPv6."""
from __future__ import annotations

import asyncio
import errno
import socket
import urllib.error
import urllib.request

import pytest

from runner.k8s import health


def host_has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def get(host: str, port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{health.PATH}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def fetch(hosts: list[str], problem=lambda: None) -> dict[str, tuple[int, str] | str]:
    """Serve /healthz on a free port and GET it at each host; an error's text where refused."""
    async def main():
        runner = await health.serve_health(0, problem)
        try:
            port = runner.addresses[0][1]
            out = {}
            for host in hosts:
                try:
                    out[host] = await asyncio.to_thread(get, host, port)
                except OSError as e:
                    out[host] = str(e)
            return out
        finally:
            await runner.cleanup()

    return asyncio.run(main())


@pytest.mark.skipif(not host_has_ipv6(), reason="this host has no IPv6")
def test_healthz_answers_on_ipv6_and_ipv4():
    assert fetch(["[::1]", "127.0.0.1"]) == {"[::1]": (200, "ok"), "127.0.0.1": (200, "ok")}


def test_healthz_says_what_is_wrong():
    assert fetch(["127.0.0.1"], lambda: "the resync task has ended") == {
        "127.0.0.1": (500, "the resync task has ended")}


def test_a_host_without_ipv6_is_served_on_ipv4(monkeypatch):
    real = health._bound

    def no_ipv6(family, host, port):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, host, port)

    monkeypatch.setattr(health, "_bound", no_ipv6)
    assert fetch(["127.0.0.1"]) == {"127.0.0.1": (200, "ok")}


def test_a_port_in_use_is_an_error():
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        with pytest.raises(OSError) as raised:
            health.listening_socket(taken.getsockname()[1]).close()
    assert raised.value.errno == errno.EADDRINUSE
