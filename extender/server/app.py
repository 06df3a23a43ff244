"""The aiohttp service: the scheduler port (filter, prioritize) and the admin port.

The request path reads the current state once, runs the pure decision and encodes; it performs no
network call and never awaits anything but the request body. Errors are contained per request:

* a malformed, oversized or wrongly typed request gets a 4xx whose JSON body names the problem
  (filter-shaped, with the message in ``Error``);
* a failure inside the decision fails open (every node kept, neutral scores), is logged with its
  traceback server-side and counted as ``outcome="fail_open"``; the caller never sees a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from extender.core import Evaluation, evaluate
from extender.server.metrics import Metrics
from extender.store import SnapshotStore
from extender.wire import (
    FilterArgs,
    WireError,
    decode_args,
    encode_error,
    encode_filter,
    encode_filter_pass_all,
    encode_priorities,
)

log = logging.getLogger(__name__)

JSON = "application/json"

#: Default request size limit: a full Node list of about 8,000 nodes (15 KB each). aiohttp's own
#: default of 1 MiB would turn a 100-node full-node request into a 413 that fails the pod.
DEFAULT_MAX_REQUEST_BYTES = 128 << 20


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "0.0.0.0"
    """Scheduler port address. 0.0.0.0 so a Service can reach it; bind 127.0.0.1 in a sidecar."""
    port: int = 8888
    """Scheduler port: the ``urlPrefix`` kube-scheduler is configured with."""
    admin_host: str = "0.0.0.0"
    admin_port: int = 8889
    """Admin port: probes and metrics, kept apart from the scheduler port."""
    url_prefix: str = ""
    """Path prefix before the verbs, e.g. ``/scheduler`` for ``POST /scheduler/filter``."""
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    shutdown_timeout: float = 10.0
    """Seconds in-flight requests get on SIGTERM; below Kubernetes' 30 s grace period."""


class BadRequest(Exception):
    def __init__(self, status: int, message: str, outcome: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome


class Extender:
    """The request handlers, bound to a store, metrics and a clock (injectable for tests)."""

    def __init__(
        self,
        store: SnapshotStore,
        metrics: Metrics,
        settings: ServerSettings = ServerSettings(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.ready = False

    async def _read(self, request: web.Request, verb: str) -> FilterArgs:
        ctype = request.headers.get("Content-Type", JSON).split(";")[0].strip().lower()
        if ctype not in (JSON, "", "text/json"):
            raise BadRequest(415, f"unsupported Content-Type {ctype!r}: send {JSON}")
        limit = self.settings.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(413, _too_large(request.content_length, limit), "too_large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(413, _too_large(None, limit), "too_large") from None
        self.metrics.request_bytes.labels(verb).observe(len(body))
        try:
            return decode_args(body)
        except WireError as exc:
            raise BadRequest(400, str(exc)) from None

    def _decide(self, args: FilterArgs) -> Evaluation:
        state = self.store.current
        evaluation = evaluate(
            args.pod, args.candidates, state.snapshot, state.policy.rules, self.clock()
        )
        self.metrics.fallback.set(1 if evaluation.fallback else 0)
        return evaluation

    async def _handle(
        self,
        request: web.Request,
        verb: str,
        answer: Callable[[FilterArgs], bytes],
        fail_open: Callable[[FilterArgs], bytes],
    ) -> web.Response:
        start = time.perf_counter()
        outcome = "ok"
        try:
            args = await self._read(request, verb)
        except BadRequest as exc:
            self.metrics.requests.labels(verb, exc.outcome).inc()
            log.warning("%s: rejected request: %s", verb, exc.message)
            return web.Response(
                status=exc.status, body=encode_error(exc.message), content_type=JSON
            )
        try:
            body = answer(args)
        except Exception:
            outcome = "fail_open"
            log.exception(
                "%s: internal error deciding for pod %s/%s; failing open",
                verb,
                args.pod.namespace,
                args.pod.name,
            )
            body = fail_open(args)
        self.metrics.requests.labels(verb, outcome).inc()
        self.metrics.latency.labels(verb).observe(time.perf_counter() - start)
        return web.Response(body=body, content_type=JSON)

    def _filter_answer(self, args: FilterArgs) -> bytes:
        evaluation = self._decide(args)
        if evaluation.tier is not None and not evaluation.keep.all():
            codes = evaluation.reason_codes
            tier = evaluation.tier.name
            stale = int(np.count_nonzero(codes == -1))
            live = int(np.count_nonzero(codes > 0))
            if live:
                self.metrics.rejections.labels("live_load", tier).inc(live)
            if stale:
                self.metrics.rejections.labels("stale", tier).inc(stale)
        return encode_filter(args, evaluation)

    def _prioritize_answer(self, args: FilterArgs) -> bytes:
        evaluation = self._decide(args)
        return encode_priorities(list(args.candidates.names), evaluation.scores.tolist())

    def _prioritize_neutral(self, args: FilterArgs) -> bytes:
        neutral = self.store.current.policy.rules.neutral_score
        names = list(args.candidates.names)
        return encode_priorities(names, [neutral] * len(names))

    async def filter(self, request: web.Request) -> web.Response:
        return await self._handle(request, "filter", self._filter_answer, encode_filter_pass_all)

    async def prioritize(self, request: web.Request) -> web.Response:
        return await self._handle(
            request, "prioritize", self._prioritize_answer, self._prioritize_neutral
        )

    # --- admin -----------------------------------------------------------------------------------

    async def livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.json_response({"status": "not ready"}, status=503)
        state = self.store.current
        return web.json_response(
            {
                "status": "ready",
                "policy": state.policy.source,
                "policySha256": state.policy.sha256,
                "nodes": len(state.snapshot.names),
            }
        )

    def scheduler_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_request_bytes, middlewares=[json_errors]
        )
        prefix = self.settings.url_prefix.rstrip("/")
        app.router.add_post(f"{prefix}/filter", self.filter)
        app.router.add_post(f"{prefix}/prioritize", self.prioritize)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors])
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", make_aiohttp_handler(self.metrics.registry))
        return app


def _too_large(size: int | None, limit: int) -> str:
    got = f" ({size} bytes)" if size is not None else ""
    return (
        f"request body too large{got}: the limit is {limit} bytes; raise --max-request-bytes, "
        "or set nodeCacheCapable: true so kube-scheduler sends node names only"
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths, wrong methods and stray errors answer JSON naming the problem."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason}: {request.method} {request.path}"
        if exc.status == 405:
            message += " (the extender verbs take POST)"
        return web.Response(
            status=exc.status, body=encode_error(message), content_type=JSON, headers=_allow(exc)
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.Response(status=500, body=encode_error("internal error"), content_type=JSON)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
