"""Deterministic SIGKILL points for the fault-injection tests. Never imported by the runner.

A test puts this folder on PYTHONPATH, so Python imports this file at start-up in the process
it launches (and in every worker that process starts), and sets TJ_KILL_AT to a JSON object:

    target  "module:function" or "module:Class.method", e.g. "os:replace", "runner.files:open"
            (a module global that does not exist, like `open` in runner.files, shadows the builtin)
    match   optional regex searched in str() of the call's first argument; other calls pass through
    nth     the Nth matching call is the fatal one (1-based)
    when    "before" the call, "after" it returns, or "mid-write" (for `open` targets: the
            file's first write() puts half its bytes on disk, then the process dies)
    rank    optional: only the process whose RANK environment variable equals this
    raise   optional "module:Name" of an exception class: at the point, raise it (with a message
            naming the point) instead of dying, as an error of that process's own would

The process then kills itself with SIGKILL, so no `except`/`finally`/atexit handler runs: the
same as the OOM killer, a node losing power's worth of process death, or `kill -9`. Nothing
in the production code knows about this.
"""
from __future__ import annotations

import builtins
import functools
import importlib
import json
import os
import re
import signal
import sys
import threading


def _die(where: str) -> None:
    sys.stderr.write(f"KILLPOINT {where} pid={os.getpid()} rank={os.environ.get('RANK', '-')}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _HalfWriter:
    """A file object whose first write() reaches the disk only halfway before the process dies."""

    def __init__(self, f, where: str):
        self._f, self._where = f, where

    def write(self, data):
        self._f.write(data[: max(1, len(data) // 2)])
        self._f.flush()
        _die(self._where)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _install(cfg: dict) -> None:
    if cfg.get("rank") is not None and os.environ.get("RANK") != str(cfg["rank"]):
        return
    module_name, _, attr_path = cfg["target"].partition(":")
    owner = importlib.import_module(module_name)
    *parents, attr = attr_path.split(".")
    for name in parents:
        owner = getattr(owner, name)
    original = getattr(owner, attr, None) or getattr(builtins, attr)
    pattern = re.compile(cfg["match"]) if cfg.get("match") else None
    nth, when = int(cfg["nth"]), cfg.get("when", "before")
    if cfg.get("raise"):
        error_module, _, error_name = cfg["raise"].partition(":")

        def die(where: str) -> None:
            raise getattr(importlib.import_module(error_module), error_name)(f"KILLPOINT {where}: raised for the test")
    else:
        die = _die
    where = f"{cfg['target']} call {nth}" + (f" matching {cfg['match']!r}" if pattern else "") + f" ({when})"
    lock = threading.Lock()
    seen = [0]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()), "")
        if pattern is not None and not pattern.search(str(first)):
            return original(*args, **kwargs)
        with lock:
            seen[0] += 1
            fatal = seen[0] == nth
        if not fatal:
            return original(*args, **kwargs)
        if when == "before":
            die(where)
        result = original(*args, **kwargs)
        if when == "mid-write":
            return _HalfWriter(result, where)
        die(where)
        return result

    setattr(owner, attr, wrapper)


if os.environ.get("TJ_KILL_AT"):
    _install(json.loads(os.environ["TJ_KILL_AT"]))
