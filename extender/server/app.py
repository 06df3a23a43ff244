"""The extender's two ports: the scheduler port (filter, prioritize, preempt) and the admin port.

This layer owns HTTP only. The scheduler port is :mod:`extender.server.scheduler_port` (a small
HTTP/1.1 server of its own, on the hot path of every pod): admission (the in-flight limit and the
in-flight body bytes, shed with a fast 503), the body deadline, size limit, Content-Type and
Content-Encoding, abandoned callers, status codes and the request metrics. The admin port
(probes, metrics, explain) is aiohttp. What a verb means (decode, decide, encode, fail open, the
decision log) is :class:`extender.verbs.Verbs`; the port reads the body and hands it over. The
request path performs no network call and never waits for anything but the request body (and,
for a large body, the worker thread that decides it, so the event loop keeps answering):

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
from aiohttp.typedefs import Middleware
from prometheus_client.aiohttp import make_aiohttp_handler

from extender.errors import ConfigError
from extender.server.admin import AdminCluster, AdminViews
from extender.server.authz import Authorizer
from extender.server.metrics import WAITING_WINDOW_S, Metrics
from extender.server.scheduler_port import SchedulerPort
from extender.server.tls import TLSFiles
from extender.store import SnapshotStore
from extender.verbs import Verbs
from extender.wire import VictimLookup, encode_error

log = logging.getLogger(__name__)

JSON = "application/json"


#: Default request size limit: a full Node list of about 8,000 nodes (15 KB each). aiohttp's own
#: default of 1 MiB would turn a 100-node full-node request into a 413 that fails the pod.
DEFAULT_MAX_REQUEST_BYTES = 128 << 20

#: Deadline on receiving a whole request body, from the moment its headers are in. The shipped
#: kube-scheduler configuration gives an extender call ``httpTimeout: 1s`` for everything
#: (sending the body, deciding, answering); a body still arriving after half of that belongs to
#: a caller that will have given up before it could be answered, or to one that stalls on
#: purpose (16 of those used to hold every slot for as long as they liked). Half leaves the
#: other half for the decision. Loopback and in-cluster links move the 77 MB full-node body of
#: 5,000 nodes in well under this; a slower network wants ``nodeCacheCapable: true`` anyway.
DEFAULT_BODY_TIMEOUT_S = 0.5
#: The slowest rate a large body may arrive at: its deadline is ``body_timeout`` plus its size
#: over this rate. A names-only call (82 KB at 5,000 nodes) gets the bare 0.5 s; a full-node
#: list of 5,000 nodes (77 MB) gets 0.5 + 1.2 s, which a loaded loopback link (the benchmark's
#: Python client sent it at 30-40 MB/s) or a busy in-cluster network still meets. A caller that
#: stalls gains nothing: the deadline grows with bytes declared or received, not with time.
DEFAULT_BODY_MIN_RATE = 64 << 20
#: How long a scheduler-port connection may sit without a complete request: aiohttp's one timer
#: for both an idle keep-alive connection and one still sending its headers (aiohttp 3.14 has no
#: separate header deadline). Longer than Go's ``http.Transport`` ``IdleConnTimeout`` (90 s,
#: what kube-scheduler's extender client uses), so the client always closes an idle connection
#: first and never races a server-side close with a POST it cannot retry. A connection stuck in
#: its headers holds no slot and no body bytes meanwhile: it costs a socket, not service.
DEFAULT_IDLE_TIMEOUT_S = 100.0
#: Bodies of at least this many bytes are decided in a worker thread, one at a time, so the
#: event loop keeps answering other callers and probes. Measured on this 2-core machine while
#: a test suite ran (docs/reliability.md, "Large bodies"): a verb handles 3.3 KB/ms of the
#: slowest body shape (pods of many containers), 5-15 KB/ms of preemption candidates, ~10 KB/ms
#: of node names and 85-230 KB/ms of full Nodes; 128 KiB is then at most ~40 ms on the loop,
#: and every real names-only call (5,000 nodes is ~82 KB) stays there, without a thread hop.
DEFAULT_OFFLOAD_BYTES = 128 << 10
#: Sum of request bodies held at once (being read or decided) on the scheduler port. From the
#: Deployment's 1 GiB memory limit (deploy/base/deployment.yaml), measured: a full-node body
#: costs about 2.2 times its size in RSS while it is decided (the chunks read, the joined body,
#: the reply carrying the kept Nodes back, its write buffer; sixteen 100 MB bodies at once
#: against this default admitted two and peaked at 586 MB RSS, from 80 MB idle):
#:   1024 MiB limit
#:   - 256 MiB working set (the memory request: process, cluster cache, metrics)
#:   -  64 MiB decision log (extender.verbs.decisions.MAX_BYTES)
#:   - 2.2 x 256 MiB = 563 MiB for the bodies in flight and what deciding them costs
#:   = 141 MiB margin (allocator fragmentation, a scrape, a policy reload).
#: Over it, a request whose Content-Length would cross it gets a fast 503 before its body is
#: read, and a streamed body that crosses it is cut with the same 503. Bytes are counted as
#: they arrive (a caller that declares 100 MB and sends nothing holds nothing), and large or
#: chunked bodies may fill it only up to :attr:`ServerSettings.small_headroom` short of the
#: top, so that kube-scheduler's small names-only calls always fit while large bodies stream in.
DEFAULT_MAX_BODY_BYTES_IN_FLIGHT = 256 << 20


class SettingsError(ConfigError, ValueError):
    """Server settings that cannot work together; the message names them."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "0.0.0.0"
    """Scheduler port address. 0.0.0.0 so a Service can reach it; bind 127.0.0.1 in a sidecar."""
    port: int = 8888
    """Scheduler port: the ``urlPrefix`` kube-scheduler is configured with."""
    admin_host: str = "127.0.0.1"
    """Admin port address. 127.0.0.1 by default: /snapshot and /dry-run reveal the cluster; the
    Deployment sets 0.0.0.0 for the kubelet's probes and Prometheus."""
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
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S
    """Seconds a request body may take to arrive once its headers are in, plus its size over
    ``body_min_rate``; then 408 and the connection closed, counted as ``outcome="timeout"``."""
    body_min_rate: float = DEFAULT_BODY_MIN_RATE
    """Bytes per second a large body must at least arrive at (its deadline grows with its
    declared or received size at this rate)."""
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    """Seconds a scheduler-port connection may go without a complete request (keep-alive idle
    time, and the deadline on headers)."""
    offload_bytes: int = DEFAULT_OFFLOAD_BYTES
    """Bodies at least this large are decided in a worker thread, off the event loop."""
    max_body_bytes_in_flight: int = DEFAULT_MAX_BODY_BYTES_IN_FLIGHT
    """Request body bytes held at once on the scheduler port; more get a fast 503."""
    tls: TLSFiles | None = None
    """Serve the scheduler port over HTTPS (and require client certificates if a CA is set)."""
    kubernetes: Literal["auto", "off"] = "off"
    """``auto``: keep nodes and bound pods from the Kubernetes API when a configuration is found
    (``kubeconfig``, in-cluster, ``$KUBECONFIG`` or ``~/.kube/config``). Off here so that embedding
    and tests never reach a cluster by accident; ``serve`` defaults to ``auto``."""
    kubeconfig: str | None = None
    """An explicit kubeconfig file for ``auto`` (one that does not load stops start-up)."""
    admin_auth: Literal["none", "kubernetes"] = "none"
    """Who may use the admin port's explain endpoints (/snapshot, /dry-run, /decisions). none:
    whoever reaches the port (it binds 127.0.0.1 unless --admin-host says otherwise).
    kubernetes: a bearer token the Kubernetes API accepts (TokenReview), of a user allowed to
    get or post that path (SubjectAccessReview), as kube-rbac-proxy checks; needs the Kubernetes
    API cache. /livez, /readyz and /metrics stay open. The deploy manifests set kubernetes."""
    admin_cluster: AdminCluster | None = None
    """What the admin port takes from the cluster source (its API client, the PriorityClasses);
    set at start-up when the extender has one, not a flag."""

    @property
    def small_headroom(self) -> int:
        """Budget bytes only small requests (a declared length under ``offload_bytes``) may
        use: one small body for every slot."""
        return self.max_inflight * self.offload_bytes

    def __post_init__(self) -> None:
        if self.max_body_bytes_in_flight < self.max_request_bytes + self.small_headroom:
            raise SettingsError(
                f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) is below "
                f"max_request_bytes ({self.max_request_bytes}) plus the headroom kept for small "
                f"requests (max_inflight x offload_bytes = {self.small_headroom}): a request "
                "of the largest accepted size could never be admitted"
            )
        if not self.body_timeout > 0 or not self.idle_timeout > 0 or not self.body_min_rate > 0:
            raise SettingsError("body_timeout, body_min_rate and idle_timeout must be positive")
        if self.admin_auth == "kubernetes" and self.kubernetes == "off":
            raise SettingsError(
                "--admin-auth kubernetes checks tokens with the Kubernetes API, and "
                "--kubernetes is off: use --kubernetes auto (in a pod, or with a kubeconfig)"
            )


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
        self.port = SchedulerPort(self)
        """The scheduler port's server and its admission state (in-flight slots and bytes)."""
        self.readiness_checks.append(self._port_not_ready)

    @property
    def victim_lookup(self) -> VictimLookup:
        """Estimated usage of a pod by UID, for preemption victims (the cluster cache's)."""
        return self.verbs.victim_lookup

    @victim_lookup.setter
    def victim_lookup(self, lookup: VictimLookup) -> None:
        self.verbs.victim_lookup = lookup

    @property
    def body_bytes_in_flight(self) -> int:
        """Request body bytes held right now (being read or decided)."""
        return self.port.body_bytes

    def _port_not_ready(self) -> str | None:
        """A readiness check: the scheduler port cannot answer when every slot has been taken
        for longer than the body deadline (slow decisions, or callers that keep every slot)."""
        since = self.port.full_since
        if since is None:
            return None
        busy = time.monotonic() - since
        if busy <= self.settings.body_timeout:
            return None
        return (
            f"scheduler port saturated: all {self.settings.max_inflight} request slots busy "
            f"for {busy:.1f} s (longer than the {self.settings.body_timeout} s body deadline)"
        )

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

    def admin_app(self) -> web.Application:
        """Probes, metrics and the explain endpoints; with ``admin_auth: kubernetes`` the latter
        behind :class:`extender.server.authz.Authorizer` (SettingsError without the cluster)."""
        cluster = self.settings.admin_cluster
        middlewares: list[Middleware] = [json_errors]
        if self.settings.admin_auth == "kubernetes":
            if cluster is None or cluster.api_client is None:
                raise SettingsError(
                    "--admin-auth kubernetes needs the Kubernetes API, and none was found: run "
                    "in a pod, or give --kubeconfig (or $KUBECONFIG, ~/.kube/config)"
                )
            middlewares.append(Authorizer(cluster.api_client).middleware())
        app = web.Application(middlewares=middlewares, handler_args={"auto_decompress": False})
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", make_aiohttp_handler(self.metrics.registry))
        classes = cluster.priority_classes if cluster is not None else None
        AdminViews(self.store, self.decisions, self.clock, classes).add_routes(app)
        return app


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
