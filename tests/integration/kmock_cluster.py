"""kmock (pinned 0.8) as an in-process Kubernetes API over real HTTP, with the few behaviours the
operator relies on that kmock leaves out (see shared KMOCK notes): creates answer 201 and get
a uid, resourceVersion, creationTimestamp and generation; a spec change bumps the generation;
a status-subresource patch changes only status; `refused` answers chosen requests 403, as RBAC
would. Everything runs in one background thread with its own event loop, so tests stay
synchronous, like the operator's own handlers.
"""
from __future__ import annotations

import asyncio
import datetime
import threading
import uuid
from pathlib import Path

import aiohttp.web
import kmock
from kmock._internal import enums, rendering  # private, hence kmock==0.8 pinned


class Emulator(kmock.KubernetesEmulator):
    """KubernetesEmulator plus server-side metadata; `created` records every object created
    (Events aside) in order; a create refused with 409 (it exists) is not one. Requests whose
    (plural, action) is in `refused`, e.g. ("workloads", "LIST"), are answered 403."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.created: list[tuple[str, str]] = []
        self.refused: set[tuple[str, str]] = set()
        self._rv = 0

    async def _handle(self, request):
        action = getattr(request.action, "value", None)
        if request.resource is not None and (request.resource.plural, action) in self.refused:
            return aiohttp.web.json_response(status=403, data={
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": f"{request.resource.plural} is forbidden: {action} refused by the test"})
        self._rv += 1
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("namespace", request.namespace)
            if not meta.get("name") and meta.get("generateName"):  # how kopf names its Events
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.update(uid=str(uuid.uuid4()), resourceVersion=str(self._rv), generation=1,
                        creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            key = (request.resource, meta["namespace"], meta.get("name"))
            exists = key in self.objects and not self.objects[key].deleted  # kmock answers 409
            if request.resource.plural != "events" and not exists:
                self.created.append((request.data.get("kind", ""), meta.get("name", "")))
        elif request.action == enums.action.UPDATE and isinstance(request.data, dict) and request.name:
            key = (request.resource, request.namespace, request.name)
            if request.subresource == "status":  # the request is frozen; its data is not
                for key in [k for k in request.data if k != "status"]:
                    del request.data[key]
            elif key in self.objects and "spec" in request.data:
                generation = self.objects[key].get("metadata", {}).get("generation", 1)
                request.data.setdefault("metadata", {})["generation"] = generation + 1
            request.data.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        return await super()._handle(request)

    async def _serve_create(self, request):
        return rendering.Response(status=201, payload=await super()._serve_create(request))


class Cluster:
    """Starts the emulator on a free loopback port and writes a kubeconfig for it."""

    def __init__(self, tmp: Path, resources: dict[str, dict]):
        self._resources = resources
        self.kubeconfig = tmp / "kubeconfig"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            for key, info in self._resources.items():
                emulator.resources[key] = info
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> "Cluster":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("kmock did not start")
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
            f"clusters: [{{name: kmock, cluster: {{server: '{self.url}'}}}}]\n"
            "users: [{name: kmock, user: {token: test}}]\n"
            "contexts: [{name: kmock, context: {cluster: kmock, user: kmock, namespace: default}}]\n")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def objects(self, resource: str) -> list[dict]:
        """Live objects of one resource ('batch/v1/jobs', 'v1/configmaps', ...)."""
        return [obj.raw for (res, _, _), obj in list(self.emulator.objects.items())
                if f"{res.group}/{res.version}/{res.plural}".lstrip("/") == resource and not obj.deleted]
