"""The aiohttp service: the scheduler port (filter, prioritize, preempt) and the admin port.

This layer owns HTTP only: admission (the in-flight limit, shed with a fast 503), the body size
limit and Content-Type, abandoned callers, status codes, the request metrics and the routes.
What a verb means (decode, decide, encode, fail open, the decision log) is
:class:`extender.verbs.Verbs`; a handler reads the body and hands it over. The request path
performs no network call and never awaits anything but the request body:

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
from typing import Literal

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from extender.errors import PriorityExtenderError
from extender.server.admin import AdminViews
from extender.server.metrics import WAITING_WINDOW_S, Metrics
from extender.server.tls import TLSFiles
from extender.store import SnapshotStore
from extender.verbs import Reply, Verbs
from extender.wire import VictimLookup, encode_error

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
    """Seconds in-flight requests get after the drain; drain + this stay below Kubernetes'
    default 30 s termination grace period."""
    max_inflight: int = 16
    """Requests handled at once on the scheduler port; more get a fast 503. kube-scheduler
    calls one at a time per profile, so 16 leaves room for several schedulers and retries while
    bounding memory to 16 request bodies."""
    drain_seconds: float = 3.0
    """After SIGTERM: seconds of answering with readiness already 503, while endpoint removal
    reaches kube-proxy. 0 for a localhost sidecar, where nothing routes through a Service."""
    reload_interval: float = 10.0
    """Safety-net period of the policy file content check (the directory is also watched)."""
    tls: TLSFiles | None = None
    """Serve the scheduler port over HTTPS (and require client certificates if a CA is set)."""
    kubernetes: Literal["auto", "off"] = "off"
    """``auto``: keep nodes and bound pods from the Kubernetes API when a configuration is found
    (``kubeconfig``, in-cluster, ``$KUBECONFIG`` or ``~/.kube/config``). Off here so that embedding
    and tests never reach a cluster by accident; ``serve`` defaults to ``auto``."""
    kubeconfig: str | None = None
    """An explicit kubeconfig file for ``auto`` (one that does not load stops start-up)."""


class BadRequest(PriorityExtenderError):
    """A request refused before deciding: its HTTP status, message and outcome label."""

    def __init__(self, status: int, message: str, outcome: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome


class Extender:
    """The HTTP handlers, bound to a store, metrics and a clock (injectable for tests)."""

    def __init__(
        self,
        store: SnapshotStore,
        metrics: Metrics,
        settings: ServerSettings = ServerSettings(),
        clock: Callable[[], float] = time.time,
        victim_lookup: VictimLookup = lambda uid: None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.verbs = Verbs(store, metrics, clock, victim_lookup)
        self.decisions = self.verbs.decisions
        self.ready = False
        self.readiness_checks: list[Callable[[], str | None]] = []
        """Each returns why the extender is not ready yet, or None (e.g. the first node list)."""
        self.size_providers: list[Callable[[], dict[str, int]]] = [self._sizes]
        """Cache sizes for ``priority_extender_cache_entries``; sources add theirs."""
        metrics.observe_state(
            store,
            self._all_sizes,
            clock,
            lambda now: self.decisions.waiting(now, WAITING_WINDOW_S),
        )
        self._inflight = 0

    @property
    def victim_lookup(self) -> VictimLookup:
        """Estimated usage of a pod by UID, for preemption victims (the cluster cache's)."""
        return self.verbs.victim_lookup

    @victim_lookup.setter
    def victim_lookup(self, lookup: VictimLookup) -> None:
        self.verbs.victim_lookup = lookup

    async def _read(self, request: web.Request, verb: str) -> bytes:
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
        except ConnectionResetError:
            # The caller went away mid-body (its timeout, or a crash): nobody to answer.
            raise BadRequest(
                499, "caller disconnected while sending the body", "abandoned"
            ) from None
        self.metrics.request_bytes.labels(verb).observe(len(body))
        return body

    async def _handle(self, request: web.Request, verb: str) -> web.Response:
        if self._inflight >= self.settings.max_inflight:
            # Shed load before reading the body: memory stays bounded by max_inflight bodies.
            self.metrics.requests.labels(verb, "overloaded").inc()
            return web.Response(
                status=503,
                body=encode_error(
                    f"overloaded: {self._inflight} requests in flight "
                    f"(limit {self.settings.max_inflight}); retry"
                ),
                content_type=JSON,
                headers={"Retry-After": "1"},
            )
        self._inflight += 1
        try:
            return await self._handle_admitted(request, verb)
        finally:
            self._inflight -= 1

    async def _handle_admitted(self, request: web.Request, verb: str) -> web.Response:
        start = time.perf_counter()
        try:
            body = await self._read(request, verb)
        except BadRequest as exc:
            self.metrics.requests.labels(verb, exc.outcome).inc()
            if exc.outcome == "abandoned":
                log.info("%s: %s", verb, exc.message)
                return web.Response(status=499, body=b"")
            log.warning("%s: rejected request: %s", verb, exc.message)
            return web.Response(
                status=exc.status, body=encode_error(exc.message), content_type=JSON
            )
        transport = request.transport
        if transport is None or transport.is_closing():
            # The caller gave up (kube-scheduler's httpTimeout) while the body was read: the
            # answer would go nowhere, and computing it would delay the next pod.
            self.metrics.requests.labels(verb, "abandoned").inc()
            log.info("%s: caller disconnected before the decision; dropped", verb)
            return web.Response(status=499, body=b"")
        reply: Reply = self.verbs.call(verb, body)
        self.metrics.requests.labels(verb, reply.outcome).inc()
        if reply.status == 200:
            self.metrics.latency.labels(verb).observe(time.perf_counter() - start)
        return web.Response(status=reply.status, body=reply.body, content_type=JSON)

    async def filter(self, request: web.Request) -> web.Response:
        return await self._handle(request, "filter")

    async def prioritize(self, request: web.Request) -> web.Response:
        return await self._handle(request, "prioritize")

    async def preempt(self, request: web.Request) -> web.Response:
        """Drop candidates where the preemptor would still be rejected after the evictions."""
        return await self._handle(request, "preempt")

    # --- admin -----------------------------------------------------------------------------------

    async def livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def _sizes(self) -> dict[str, int]:
        return {
            "snapshot_nodes": len(self.store.current.snapshot.names),
            "decision_log": len(self.decisions),
            "decision_log_candidates": self.decisions.candidates,
        }

    def _all_sizes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for provider in self.size_providers:
            out.update(provider())
        return out

    async def readyz(self, request: web.Request) -> web.Response:
        if not self.ready:
            return web.json_response(
                {"status": "not ready", "reason": "starting or stopping"}, status=503
            )
        for check in self.readiness_checks:
            reason = check()
            if reason is not None:
                return web.json_response({"status": "not ready", "reason": reason}, status=503)
        state = self.store.current
        return web.json_response(
            {
                "status": "ready",
                "policy": state.policy.source,
                "policySha256": state.policy.sha256,
                "policyFrom": state.policy.origin,
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
        app.router.add_post(f"{prefix}/preempt", self.preempt)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors])
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", make_aiohttp_handler(self.metrics.registry))
        AdminViews(self.store, self.decisions, self.clock).add_routes(app)
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
