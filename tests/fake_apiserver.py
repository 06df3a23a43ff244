"""A fake kube-apiserver on loopback: the list and watch protocol of Nodes and Pods, nothing more.

A stand-in, kept only for faults a real kube-apiserver cannot be made to produce on demand:
streams cut mid-way or stalled while open, injected HTTP errors, a 410 or a bookmark at a chosen
moment, and the exact requests a client made. Everything a real apiserver can serve is tested against one
(tests/e2e/, with the v1.28.7 binaries of ../shared/kube): see tests/e2e/test_cluster_watch_real.py.

What it stands in for: kube-apiserver at the network boundary, so that the real ``kubernetes``
asyncio client (``kubernetes.aio``) and our cluster cache talk HTTP to something that behaves like
it.

What it implements, as the API does:

* ``GET /api/v1/nodes`` and ``GET /api/v1/pods``: lists in pages (``limit`` and ``continue``)
  with the list's ``resourceVersion``, filtered by ``fieldSelector`` (``=``/``!=`` terms over
  ``spec.nodeName``, ``status.phase``, ``metadata.name``, ``metadata.namespace``).
* ``?watch=1``: a chunked stream of ``{"type": ..., "object": ...}`` lines, one per event after
  the given ``resourceVersion``; ``BOOKMARK`` events for watchers that asked
  (``allowWatchBookmarks``); field-selector transitions as the API reports them (an object that
  stops matching arrives as ``DELETED``, one that starts matching as ``ADDED``); the stream ends
  after ``timeoutSeconds``.
* "Gone": a watch from a compacted ``resourceVersion`` gets an ``ERROR`` event whose object is a
  ``Status`` with code 410 (what the watch cache sends), or an HTTP 410 when
  :attr:`FakeApiServer.gone_as_http` is set; an expired ``continue`` token gets HTTP 410.

Failure knobs: :meth:`drop_watches` (connections cut mid-stream), :attr:`stalled` (streams open
but silent), :meth:`expire_watches` (410 on open streams), :attr:`fail_next` (HTTP errors for the
next requests), :attr:`expire_continue`.

What it does not do: authentication, other resources or verbs, label selectors, protobuf, a
consistent snapshot across list pages (a continue page reads current state), resourceVersion
semantics on list requests.

Run as a program (``python -m tests.fake_apiserver --nodes 5000 --pods 150000``) it serves a
synthetic cluster for the benchmark, and takes ``POST /fake/<action>`` control requests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import json
import sys
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

GiB = 2**30
_encode = msgspec.json.Encoder().encode

#: Watch streams without ``timeoutSeconds`` end after this, as the API server's own default.
DEFAULT_WATCH_TIMEOUT_S = 1800.0

SELECTABLE = {
    "spec.nodeName": ("spec", "nodeName"),
    "status.phase": ("status", "phase"),
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
}


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- realistic objects --------------------------------------------------------------------------


def make_node(
    name: str,
    *,
    cpu: str = "16",
    memory: str = "64Gi",
    labels: dict[str, str] | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """A Node as the API returns it, with the bulk of a real one (images, conditions)."""
    n = zlib.crc32(name.encode())
    ip = address or f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": f"uid-node-{name}",
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m5.4xlarge",
                "topology.kubernetes.io/zone": "eu-west-1a",
                **(labels or {}),
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": "10.244.1.0/24", "providerID": f"aws:///eu-west-1a/i-{name}"},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {
                    "type": t,
                    "status": "True" if t == "Ready" else "False",
                    "lastHeartbeatTime": "2024-01-01T00:00:00Z",
                    "lastTransitionTime": "2024-01-01T00:00:00Z",
                    "reason": f"Kubelet{t}",
                    "message": f"kubelet reports {t}",
                }
                for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
            ],
            "images": [
                {"names": [f"registry.example/team/image-{i}@sha256:{'0' * 64}"], "sizeBytes": 1}
                for i in range(20)
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.31.0",
                "containerRuntimeVersion": "containerd://1.7",
            },
        },
    }


def _container(name: str, cpu: str | None, memory: str | None, limits: bool) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    resources: dict[str, Any] = {"requests": requests} if requests else {}
    if limits and memory is not None:
        resources["limits"] = {"memory": memory}
    return {
        "name": name,
        "image": f"registry.example/team/{name}:v1.2.3",
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": f"SETTING_{i}", "value": f"value-{i}"} for i in range(6)],
        "resources": resources,
        "volumeMounts": [
            {
                "name": "kube-api-access",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
            "timeoutSeconds": 1,
            "periodSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
            "timeoutSeconds": 1,
            "periodSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def make_pod(
    name: str,
    *,
    namespace: str = "default",
    node: str | None = None,
    cpu: str | None = "500m",
    memory: str | None = "1Gi",
    priority: int = 0,
    phase: str = "Running",
    scheduled_at: float | None = None,
    created_at: float = 1_700_000_000.0,
    uid: str | None = None,
    owner_kind: str = "ReplicaSet",
    init_cpu: str | None = None,
    sidecar_cpu: str | None = None,
) -> dict[str, Any]:
    """A Pod as the API returns it (about 4 KB, managedFields included).

    ``node`` set means bound; ``scheduled_at`` sets the ``PodScheduled`` condition's time (else
    the pod has no such condition and its creation time stands for the bind time).
    """
    owner = f"{name.rsplit('-', 1)[0]}-abc123"
    meta: dict[str, Any] = {
        "name": name,
        "generateName": f"{owner}-",
        "namespace": namespace,
        "uid": uid or f"uid-{namespace}-{name}",
        "creationTimestamp": rfc3339(created_at),
        "labels": {"app": name.rsplit("-", 1)[0], "pod-template-hash": "abc123"},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": owner_kind,
                "name": owner,
                "uid": "uid-owner",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "managedFields": [
            {
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": rfc3339(created_at),
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:generateName": {},
                        "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                        "f:ownerReferences": {".": {}, 'k:{"uid":"uid-owner"}': {}},
                    },
                    "f:spec": {
                        "f:containers": {
                            'k:{"name":"app"}': {
                                ".": {},
                                "f:env": {},
                                "f:image": {},
                                "f:name": {},
                                "f:ports": {},
                                "f:resources": {},
                            }
                        },
                        "f:dnsPolicy": {},
                        "f:enableServiceLinks": {},
                        "f:restartPolicy": {},
                        "f:schedulerName": {},
                        "f:securityContext": {},
                        "f:terminationGracePeriodSeconds": {},
                    },
                },
            },
            {
                "manager": "kubelet",
                "operation": "Update",
                "apiVersion": "v1",
                "time": rfc3339(created_at + 5),
                "fieldsType": "FieldsV1",
                "subresource": "status",
                "fieldsV1": {
                    "f:status": {
                        "f:conditions": {'k:{"type":"Ready"}': {".": {}, "f:status": {}}},
                        "f:containerStatuses": {},
                        "f:hostIP": {},
                        "f:phase": {},
                        "f:podIP": {},
                        "f:startTime": {},
                    }
                },
            },
        ],
    }
    init: list[dict[str, Any]] = []
    if init_cpu is not None:
        init.append(_container("init", init_cpu, None, False))
    if sidecar_cpu is not None:
        init.append({**_container("sidecar", sidecar_cpu, None, False), "restartPolicy": "Always"})
    spec: dict[str, Any] = {
        "containers": [_container("app", cpu, memory, True)],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
        "priority": priority,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "tolerations": [
            {
                "key": f"node.kubernetes.io/{t}",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
            for t in ("not-ready", "unreachable")
        ],
        "volumes": [
            {
                "name": "kube-api-access",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                    ],
                    "defaultMode": 420,
                },
            }
        ],
    }
    if init:
        spec["initContainers"] = init
    if node is not None:
        spec["nodeName"] = node
    conditions = []
    if scheduled_at is not None:
        conditions.append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(scheduled_at)}
        )
    conditions += [
        {"type": t, "status": "True", "lastTransitionTime": rfc3339(created_at + 5)}
        for t in ("Initialized", "ContainersReady", "Ready")
    ]
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": "10.0.0.1",
        "podIP": "10.244.1.10",
        "podIPs": [{"ip": "10.244.1.10"}],
        "startTime": rfc3339(created_at + 1),
        "qosClass": "Burstable",
        "containerStatuses": [
            {
                "name": "app",
                "ready": True,
                "restartCount": 0,
                "image": "registry.example/team/app:v1.2.3",
                "imageID": f"registry.example/team/app@sha256:{'1' * 64}",
                "containerID": f"containerd://{'2' * 64}",
                "started": True,
                "state": {"running": {"startedAt": rfc3339(created_at + 3)}},
            }
        ],
    }
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": status}


# --- the server ---------------------------------------------------------------------------------


def parse_selector(text: str) -> list[tuple[tuple[str, str], bool, str]]:
    """``a!=x,b=y`` → [(path, equal?, value)]; unknown fields are an error, as in the API."""
    terms = []
    for term in filter(None, text.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            equal = False
        else:
            key, value = term.split("==" if "==" in term else "=", 1)
            equal = True
        if key not in SELECTABLE:
            raise ValueError(f'field label not supported: "{key}"')
        terms.append((SELECTABLE[key], equal, value))
    return terms


def fields_of(obj: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {path: str(obj.get(path[0], {}).get(path[1], "")) for path in SELECTABLE.values()}


def _matches(terms: list[tuple[tuple[str, str], bool, str]], fields: dict[Any, str]) -> bool:
    return all((fields.get(path, "") == value) == equal for path, equal, value in terms)


@dataclass
class _Stored:
    body: bytes
    fields: dict[tuple[str, str], str]


@dataclass
class _Change:
    rv: int
    type: str
    body: bytes
    old: dict[tuple[str, str], str] | None
    new: dict[tuple[str, str], str] | None


_END = object()
_DROP = object()


@dataclass(eq=False)
class _Watcher:
    terms: list[tuple[tuple[str, str], bool, str]]
    bookmarks: bool
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def render(self, ch: _Change) -> bytes | None:
        was = ch.old is not None and _matches(self.terms, ch.old)
        now = ch.new is not None and _matches(self.terms, ch.new)
        if was and now:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif was:
            kind = "DELETED"
        else:
            return None
        return b'{"type":"%s","object":%s}\n' % (kind.encode(), ch.body)


@dataclass
class _Collection:
    kind: str
    objects: dict[str, _Stored] = field(default_factory=dict)
    log: list[_Change] = field(default_factory=list)
    watchers: set[_Watcher] = field(default_factory=set)
    compacted_rv: int = 0
    _sorted: list[str] | None = None

    def keys(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.objects)
        return self._sorted


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeApiServer:
    """Nodes and Pods in memory, served over loopback HTTP; mutate them with :meth:`put` and
    :meth:`delete` while clients list and watch."""

    def __init__(self) -> None:
        self.rv = 100
        self.collections = {"nodes": _Collection("Node"), "pods": _Collection("Pod")}
        self.requests: list[tuple[str, dict[str, str]]] = []
        """Every API request: (resource, query parameters)."""
        self.gone_as_http = False
        """Report a too-old resourceVersion on watch as HTTP 410 instead of an ERROR event."""
        self.stalled = False
        """Watch streams stay open but deliver nothing while set."""
        self.fail_next: list[int] = []
        """HTTP statuses for the next requests, one each (e.g. ``[500, 503]``)."""
        self.expire_continue = False
        """The next list request with a continue token gets 410 Expired."""
        self.watch_seconds: float | None = None
        """When set, every watch ends after this long whatever its ``timeoutSeconds`` says
        (0: at once, as a proxy that cuts streams would)."""
        self.hold_lists: asyncio.Event | None = None
        """While set to an unset Event, list requests wait for it (an API server slow to list)."""
        self.url = ""
        self._runner: web.AppRunner | None = None

    # --- state ----------------------------------------------------------------------------------

    @staticmethod
    def key_of(obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]

    def put(self, resource: str, obj: dict[str, Any]) -> int:
        """Create or replace an object; returns its new resourceVersion."""
        coll = self.collections[resource]
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = self.key_of(obj)
        old = coll.objects.get(key)
        stored = _Stored(_encode(obj), fields_of(obj))
        if old is None:
            coll._sorted = None
        coll.objects[key] = stored
        self._emit(
            coll,
            _Change(
                self.rv,
                "MODIFIED" if old else "ADDED",
                stored.body,
                old.fields if old else None,
                stored.fields,
            ),
        )
        return self.rv

    def delete(self, resource: str, key: str) -> int:
        coll = self.collections[resource]
        old = coll.objects.pop(key)
        coll._sorted = None
        self.rv += 1
        obj = json.loads(old.body)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(coll, _Change(self.rv, "DELETED", _encode(obj), old.fields, None))
        return self.rv

    def get(self, resource: str, key: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.collections[resource].objects[key].body)
        return result

    def bulk(self, resource: str, items: Iterable[tuple[str, bytes, dict[Any, str]]]) -> None:
        """Load many pre-encoded objects at once (no events), for the benchmark."""
        coll = self.collections[resource]
        for key, body, fields in items:
            coll.objects[key] = _Stored(body, fields)
        coll._sorted = None

    def _emit(self, coll: _Collection, change: _Change) -> None:
        coll.log.append(change)
        for w in list(coll.watchers):
            line = w.render(change)
            if line is not None:
                w.queue.put_nowait(line)

    def bookmark(self, resource: str) -> None:
        """A BOOKMARK at the current resourceVersion to every watcher that asked for them."""
        line = (
            b'{"type":"BOOKMARK","object":{"kind":"%s","apiVersion":"v1",'
            % (self.collections[resource].kind.encode())
            + b'"metadata":{"resourceVersion":"%d"}}}\n' % self.rv
        )
        for w in self.collections[resource].watchers:
            if w.bookmarks:
                w.queue.put_nowait(line)

    def compact(self) -> None:
        """Forget history: watches from any resourceVersion before now get 410 Gone."""
        for coll in self.collections.values():
            coll.compacted_rv = self.rv
            coll.log.clear()

    def expire_watches(self, resource: str) -> None:
        """Compact, and end every open watch with an ERROR event carrying a 410 Status."""
        self.compact()
        status = _status(410, "Expired", "too old resource version")
        line = b'{"type":"ERROR","object":%s}\n' % _encode(status)
        for w in self.collections[resource].watchers:
            w.queue.put_nowait(line)
            w.queue.put_nowait(_END)

    def drop_watches(self, resource: str) -> None:
        """Cut every open watch connection mid-stream (no final chunk)."""
        for w in self.collections[resource].watchers:
            w.queue.put_nowait(_DROP)

    def watchers(self, resource: str) -> int:
        return len(self.collections[resource].watchers)

    def watch_requests(self, resource: str) -> list[dict[str, str]]:
        return [q for r, q in self.requests if r == resource and q.get("watch") in ("1", "true")]

    def list_requests(self, resource: str) -> list[dict[str, str]]:
        return [
            q for r, q in self.requests if r == resource and q.get("watch") not in ("1", "true")
        ]

    # --- HTTP -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        resource = request.match_info["resource"]
        q = dict(request.query)
        self.requests.append((resource, q))
        if self.fail_next:
            code = self.fail_next.pop(0)
            return web.json_response(
                _status(code, "InternalError", "injected failure"), status=code
            )
        try:
            terms = parse_selector(q.get("fieldSelector", ""))
        except ValueError as exc:
            return web.json_response(_status(400, "BadRequest", str(exc)), status=400)
        coll = self.collections[resource]
        if q.get("watch") in ("1", "true"):
            return await self._watch(request, coll, q, terms)
        if self.hold_lists is not None:
            await self.hold_lists.wait()
        return self._list(coll, q, terms)

    def _list(
        self, coll: _Collection, q: dict[str, str], terms: list[tuple[tuple[str, str], bool, str]]
    ) -> web.Response:
        keys = coll.keys()
        start = 0
        token = q.get("continue")
        list_rv = self.rv
        if token:
            if self.expire_continue:
                self.expire_continue = False
                status = _status(410, "Expired", "The provided continue parameter is too old")
                return web.json_response(status, status=410)
            list_rv, after = json.loads(base64.b64decode(token))
            start = bisect.bisect_right(keys, after)
        limit = int(q.get("limit") or 0) or len(keys) + 1
        bodies: list[bytes] = []
        i = start
        while i < len(keys) and len(bodies) < limit:
            stored = coll.objects[keys[i]]
            if _matches(terms, stored.fields):
                bodies.append(stored.body)
            i += 1
        meta = b'"resourceVersion":"%d"' % list_rv
        if i < len(keys):
            nxt = base64.b64encode(json.dumps([list_rv, keys[i - 1]]).encode())
            meta += b',"continue":"%s"' % nxt
        body = (
            b'{"kind":"%sList","apiVersion":"v1","metadata":{%s},"items":['
            % (coll.kind.encode(), meta)
            + b",".join(bodies)
            + b"]}"
        )
        return web.Response(body=body, content_type="application/json")

    async def _watch(
        self,
        request: web.Request,
        coll: _Collection,
        q: dict[str, str],
        terms: list[tuple[tuple[str, str], bool, str]],
    ) -> web.StreamResponse:
        rv_param = q.get("resourceVersion", "")
        start = int(rv_param) if rv_param not in ("", "0") else self.rv
        gone = start < coll.compacted_rv
        if gone and self.gone_as_http:
            status = _status(410, "Expired", f"too old resource version: {start}")
            return web.json_response(status, status=410)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if gone:
            status = _status(410, "Expired", f"too old resource version: {start}")
            await resp.write(b'{"type":"ERROR","object":%s}\n' % _encode(status))
            await resp.write_eof()
            return resp
        watcher = _Watcher(terms, q.get("allowWatchBookmarks") in ("true", "1"))
        for change in coll.log:
            if change.rv > start:
                line = watcher.render(change)
                if line is not None:
                    watcher.queue.put_nowait(line)
        coll.watchers.add(watcher)
        loop = asyncio.get_running_loop()
        seconds = float(q.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT_S)
        if self.watch_seconds is not None:
            seconds = self.watch_seconds
        deadline = loop.time() + seconds
        transport = request.transport
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is _DROP:
                    if transport is not None:
                        transport.abort()
                    return resp
                if item is _END:
                    break
                while self.stalled:
                    if transport is None or transport.is_closing():
                        return resp
                    await asyncio.sleep(0.01)
                await resp.write(item)
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            coll.watchers.discard(watcher)
        return resp

    # --- lifecycle ------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/{resource:nodes|pods}", self._handle)
        return app

    async def start(self, port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        self.stalled = False
        for coll in self.collections.values():
            for w in coll.watchers:
                w.queue.put_nowait(_END)
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def fake_apiserver() -> Any:
    server = FakeApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# --- the synthetic cluster of the benchmark -----------------------------------------------------


def synthetic(nodes: int, pods: int) -> Iterator[tuple[str, str, bytes, dict[Any, str]]]:
    """(resource, key, body, fields) of a cluster: ``nodes`` nodes, ``pods`` bound pods."""
    enc = msgspec.json.Encoder()
    for i in range(nodes):
        obj = make_node(f"node-{i:05d}")
        obj["metadata"]["resourceVersion"] = "1"
        yield "nodes", obj["metadata"]["name"], enc.encode(obj), fields_of(obj)
    now = time.time()
    for i in range(pods):
        ns = f"team-{i % 40:02d}"
        obj = make_pod(
            f"app-{i % 997}-{i:06d}",
            namespace=ns,
            node=f"node-{i % nodes:05d}",
            cpu=("100m", "250m", "500m", "1")[i % 4],
            memory=("128Mi", "512Mi", "1Gi", "2Gi")[i % 4],
            priority=(0, 1000, 100000)[i % 3],
            scheduled_at=now - 3600,
            created_at=now - 3600,
        )
        obj["metadata"]["resourceVersion"] = "1"
        yield "pods", FakeApiServer.key_of(obj), enc.encode(obj), fields_of(obj)


async def _serve(nodes: int, pods: int, port: int) -> None:
    server = FakeApiServer()
    for resource in ("nodes", "pods"):
        server.bulk(resource, ((k, b, f) for r, k, b, f in synthetic(nodes, pods) if r == resource))

    async def control(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        resource = request.query.get("resource", "pods")
        if action == "expire":
            server.expire_watches(resource)
        elif action == "touch":  # one MODIFIED event, to move resourceVersion on
            key = next(iter(server.collections[resource].objects))
            server.put(resource, server.get(resource, key))
        else:
            raise web.HTTPNotFound()
        return web.json_response({"ok": True, "rv": server.rv})

    app = server.app()
    app.router.add_post("/fake/{action}", control)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--pods", type=int, default=150000)
    p.add_argument("--port", type=int, default=0)
    ns = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(ns.nodes, ns.pods, ns.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
