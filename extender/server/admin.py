"""Admin-port endpoints that explain decisions: the decision log, dry runs and the snapshot.

* ``GET /decisions?pod=NS/NAME|UID[&top=N]`` — recent decisions for a pod, newest first: the
  ranking, rejected nodes grouped by reason, and the inputs behind the top ``N`` nodes.
* ``POST /dry-run[?nodes=a,b][&top=N]`` — a Pod manifest (JSON or YAML) in, the decision it would
  get against the current snapshot out (over every known node unless ``nodes`` is given).
  Nothing is recorded, nothing changes.
* ``GET /snapshot`` — everything decisions read, as a file that ``priority-extender explain
  --snapshot`` replays offline with a policy file.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from extender.core import Candidates, evaluate, snapshot_to_dict, summarize
from extender.policy.yamlpos import ManifestError, manifest_json
from extender.store import SnapshotStore
from extender.verbs import DecisionLog
from extender.wire import WireError, decode_pod

#: Largest Pod manifest accepted by the dry run; real pods are a few KB.
MAX_MANIFEST_BYTES = 1 << 20
#: Nodes whose full inputs are listed unless ``top`` says otherwise.
DEFAULT_TOP = 5


def content_encoding_problem(headers: CIMultiDictProxy[str]) -> str | None:
    """Why a request's ``Content-Encoding`` is refused, or None for none or ``identity``.

    Both ports serve with aiohttp's ``auto_decompress`` off and refuse any other encoding with
    415 before a byte of the body is read: kube-scheduler never compresses, and a 1 MB gzip body
    inflates to 1 GiB before any size limit could see it.
    """
    values = headers.getall("Content-Encoding", [])
    codings = [c.strip().lower() for value in values for c in value.split(",")]
    refused = [c for c in codings if c and c != "identity"]
    if not refused:
        return None
    shown = ", ".join(refused)[:100]
    return (
        f"unsupported Content-Encoding {shown!r}: send the body uncompressed (identity); "
        "kube-scheduler never compresses its requests"
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _top(request: web.Request) -> int | None:
    raw = request.query.get("top")
    if raw is None:
        return DEFAULT_TOP
    if raw == "all":
        return None
    if not raw.isdigit():
        raise web.HTTPBadRequest(reason="top must be a whole number or 'all'")
    return int(raw)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=1, allow_nan=False)


class AdminViews:
    """The explain endpoints over a store and the verbs' decision log."""

    def __init__(
        self,
        store: SnapshotStore,
        decisions: DecisionLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.log = decisions
        self.clock = clock

    async def decisions(self, request: web.Request) -> web.Response:
        pod = request.query.get("pod", "").strip()
        if not pod:
            return _error(400, "give the pod as ?pod=namespace/name or ?pod=UID")
        top = _top(request)
        found = self.log.find(pod)
        if not found:
            return _error(404, f"no recent decision for pod {pod!r} (the log keeps the latest)")
        out = [
            {
                "at": d.at,
                "verb": d.verb,
                **summarize(d.evaluation, top),
                **({"note": d.note} if d.note else {}),
            }
            for d in found
        ]
        return web.json_response(out, dumps=_dumps)

    async def dry_run(self, request: web.Request) -> web.Response:
        refused = content_encoding_problem(request.headers)
        if refused is not None:
            return _error(415, refused)
        if request.content_length is not None and request.content_length > MAX_MANIFEST_BYTES:
            return _error(413, f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        body = await request.content.read(MAX_MANIFEST_BYTES + 1)
        if len(body) > MAX_MANIFEST_BYTES:
            return _error(413, f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        if not body.strip():
            return _error(400, "post a Pod manifest (JSON or YAML)")
        try:
            # In a worker thread: a large YAML manifest takes a second or more to parse, and
            # this event loop also answers kube-scheduler.
            pod = decode_pod(await asyncio.to_thread(manifest_json, body))
        except ManifestError as exc:
            return _error(400, "not a Pod manifest: " + "; ".join(exc.issues))
        except WireError as exc:
            return _error(400, f"not a Pod manifest: {exc}")
        top = _top(request)
        state = self.store.current
        nodes = request.query.get("nodes")
        names = [n for n in nodes.split(",") if n] if nodes else list(state.snapshot.names)
        now = self.clock()
        evaluation = evaluate(pod, Candidates(names), state.snapshot, state.policy.rules, now)
        return web.json_response({"at": now, **summarize(evaluation, top)}, dumps=_dumps)

    async def snapshot(self, request: web.Request) -> web.Response:
        snap = self.store.current.snapshot
        return web.json_response(snapshot_to_dict(snap, self.clock()), dumps=_dumps)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/decisions", self.decisions)
        app.router.add_post("/dry-run", self.dry_run)
        app.router.add_get("/snapshot", self.snapshot)
