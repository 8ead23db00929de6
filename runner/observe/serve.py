"""Serving a Prometheus registry on every address of the host: IPv6 and IPv4 alike.

prometheus_client's `start_http_server(port)` binds 0.0.0.0, IPv4 only: on an IPv6-only
Kubernetes cluster the pod's one address is IPv6, and neither Prometheus nor the operator
(which reads the trainer's /metrics for status.progress) could reach it. Here the socket is
bound to "::" with IPV6_V6ONLY off, so it takes IPv6 and IPv4 (as IPv4-mapped addresses)
whatever the host's net.ipv6.bindv6only default is; a host without IPv6 (a kernel without
it, or booted with ipv6.disable=1) gets prometheus_client's own IPv4 server.

Standard library only when imported (prometheus_client inside the function), so the operator
can use it too.
"""
from __future__ import annotations

import errno
import socket
import threading
from typing import Any

# What a host without IPv6 answers to an AF_INET6 socket or a bind to "::".
NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def serve(port: int, registry: Any) -> tuple[Any, threading.Thread]:
    """Serve `registry` at /metrics on `port`, dual-stack where the host has IPv6, else IPv4.
    Returns (server, thread) as prometheus_client's start_http_server does; `server.shutdown()`
    and `server.server_close()` stop it. A port in use raises OSError(EADDRINUSE), as there."""
    from prometheus_client import start_http_server
    from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class DualStackServer(ThreadingWSGIServer):
        address_family = socket.AF_INET6

        def server_bind(self) -> None:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
            pass  # one line on stderr per scrape otherwise

    if socket.has_ipv6:
        try:
            server = make_server("::", port, make_wsgi_app(registry), DualStackServer, handler_class=Quiet)
        except OSError as e:
            if e.errno not in NO_IPV6:
                raise
        else:
            thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
            thread.start()
            return server, thread
    return start_http_server(port, addr="0.0.0.0", registry=registry)
