"""The operator's liveness endpoint, /healthz, on every address of the host: IPv6 and IPv4.

Not kopf's own (`liveness_endpoint="http://HOST:PORT/healthz"`), which binds the one host its
URL names: 0.0.0.0 is IPv4 only, so on an IPv6-only cluster the kubelet's probe of the pod's
address is refused and the operator restarted again and again; `[::]` is IPv6 only (asyncio
sets IPV6_V6ONLY on the sockets it binds), refused on an IPv4 cluster. Here one socket on "::"
with IPV6_V6ONLY off takes both, as runner/observe/serve.py does for /metrics; a host without
IPv6 gets 0.0.0.0.

Like kopf's, it is served from the operator's event loop, so it stops answering when that loop
is stuck; and it answers 500 while `problem()` names one (the resync task has ended).

Standard library only when imported (aiohttp, which kopf runs on, inside the functions).
"""
from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

PATH = "/healthz"


def _bound(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def listening_socket(port: int) -> socket.socket:
    """A socket listening on `port`: dual-stack where the host has IPv6, else IPv4. A port in
    use raises OSError(EADDRINUSE)."""
    from runner.observe.serve import NO_IPV6

    if socket.has_ipv6:
        try:
            return _bound(socket.AF_INET6, "::", port)
        except OSError as e:
            if e.errno not in NO_IPV6:
                raise
    return _bound(socket.AF_INET, "0.0.0.0", port)


async def serve_health(port: int, problem: Callable[[], str | None]) -> Any:
    """Serve /healthz on `port` (0: any free one) until the returned aiohttp AppRunner's
    `cleanup()`; `runner.addresses` holds the address bound. 200 `ok`, or 500 and the problem."""
    import aiohttp.web

    async def healthz(_request: aiohttp.web.Request) -> aiohttp.web.Response:
        trouble = problem()
        return aiohttp.web.Response(status=500 if trouble else 200, text=trouble or "ok")

    app = aiohttp.web.Application()
    app.add_routes([aiohttp.web.get(PATH, healthz)])
    runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await aiohttp.web.SockSite(runner, listening_socket(port)).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
