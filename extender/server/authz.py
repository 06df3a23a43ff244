"""Kubernetes authentication and authorization of the admin port, the way kube-rbac-proxy does it.

With ``--admin-auth kubernetes`` every admin path except the probes and the scrape target
(:data:`OPEN_PATHS`: ``/livez``, ``/readyz``, ``/metrics``) needs a bearer token:

1. ``Authorization: Bearer <token>`` → a ``TokenReview`` (authentication.k8s.io/v1): who is it?
   No token, or one the API server does not accept: **401**.
2. that user → a ``SubjectAccessReview`` (authorization.k8s.io/v1) for the non-resource URL
   (``nonResourceAttributes: {path, verb}``, the verb the lower-cased HTTP method, HEAD as
   ``get``): may they? Not allowed: **403**.
3. a review that cannot be made (the API server unreachable, slow past :data:`REVIEW_TIMEOUT_S`,
   or refusing the extender's own ServiceAccount): **503**, so a client retries instead of
   taking an outage for a verdict.

Every refusal is a JSON ``{"error": ...}`` body naming the problem, never a traceback or a hang.
Both reviews go through the ``kubernetes.aio`` ApiClient the cluster source owns (one client per
process), so they need the cluster connection and the ``system:auth-delegator`` ClusterRole
(create ``tokenreviews`` and ``subjectaccessreviews``; deploy/base/rbac.yaml binds it).

Verdicts are cached (:class:`TTLCache`: bounded, least recently used out first, each entry for a
short time), as the API server's own delegated authentication and authorization do: a caller
polling ``/decisions`` then costs no API call per request, while a revoked token or a removed
binding stops working within seconds. Failed reviews are never cached. Tokens are cached by
their SHA-256 only, so the process never keeps a bearer token it was shown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from kubernetes.aio import client as k8s

from extender.errors import ClusterError
from extender.wire.streams import read_at_most

log = logging.getLogger(__name__)

#: Largest TokenReview/SubjectAccessReview answer read: a review status is a few KB (a user's
#: groups and extra fields); anything larger is not an answer to trust.
MAX_REVIEW_BYTES = 1 << 20

#: Paths that stay open without a token: the kubelet's probes and Prometheus' scrape must work
#: without credentials, and neither reveals the cluster.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/metrics"})

#: Bound on one review (TokenReview or SubjectAccessReview), waiting for a free slot included.
#: A healthy API server answers in milliseconds; 5 s is what kube-scheduler's extender
#: ``httpTimeout`` defaults to, and well under the 30 s ``explain --admin`` waits for an answer,
#: so a stuck API server gives a 503 the caller can show, not a hang.
REVIEW_TIMEOUT_S = 5.0
#: How long a TokenReview's verdict (who a token is, or that it is not accepted) is reused: the
#: default of the API server's own delegated authentication (k8s.io/apiserver
#: ``DelegatingAuthenticationOptions.CacheTTL``, 10 s). A deleted ServiceAccount token stops
#: working within this; a client polling every second makes one review per 10 s.
TOKEN_TTL_S = 10.0
#: How long an allowed SubjectAccessReview is reused: the API server's delegated authorization
#: default (``AllowCacheTTL``, 10 s), so a removed RoleBinding takes effect within 10 s.
ALLOW_TTL_S = 10.0
#: How long a denial is reused (``DenyCacheTTL``, 10 s): a client retrying in a loop does not
#: turn into a review per request, and a binding just granted works within 10 s.
DENY_TTL_S = 10.0
#: Entries per cache. An entry is a user's name, groups and extras (a few hundred bytes), so the
#: two caches together stay under a couple of MB whatever the callers send; garbage tokens each
#: take an entry too, and push out the least recently used ones first.
MAX_ENTRIES = 1024
#: Reviews in flight at once. Every distinct token costs a TokenReview until it is cached, so a
#: caller inventing tokens could otherwise turn this port into a load on the API server; beyond
#: this many, requests wait for a slot within :data:`REVIEW_TIMEOUT_S`, then get a 503.
MAX_CONCURRENT_REVIEWS = 4
#: Largest bearer token considered: ServiceAccount tokens are about 1 KB, OIDC ID tokens a few.
MAX_TOKEN_BYTES = 16 << 10

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """At most ``max_entries`` values, each valid for the time it was put with; the least
    recently used entry is dropped when a new one would pass the bound."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value while it is valid, else None (an expired entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self.clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl_s: float) -> None:
        self._entries[key] = (self.clock() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a token is, as the TokenReview said: what the SubjectAccessReview asks about."""

    user: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A review's answer: allowed (authenticated) or not, and the reason to show when not."""

    ok: bool
    reason: str = ""


class ReviewError(ClusterError):
    """A review that could not be made; the message says why (the caller gets a 503)."""


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse(status: int, message: str) -> web.Response:
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="priority-extender admin"'
    elif status == 503:
        headers["Retry-After"] = "1"
    return web.json_response({"error": message}, status=status, headers=headers)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    if len(token) > MAX_TOKEN_BYTES or not token.isascii() or not token.isprintable():
        return None
    return token


def review_verb(method: str) -> str:
    """The verb of a non-resource request, as the API server names it: the lower-cased HTTP
    method; HEAD asks for what GET would show."""
    return "get" if method.upper() == "HEAD" else method.lower()


class Authorizer:
    """TokenReview + SubjectAccessReview for the admin port; :meth:`middleware` applies it."""

    def __init__(
        self,
        api_client: Any,
        *,
        timeout_s: float = REVIEW_TIMEOUT_S,
        token_ttl_s: float = TOKEN_TTL_S,
        allow_ttl_s: float = ALLOW_TTL_S,
        deny_ttl_s: float = DENY_TTL_S,
        max_entries: int = MAX_ENTRIES,
        max_concurrent: int = MAX_CONCURRENT_REVIEWS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authn = k8s.AuthenticationV1Api(api_client)
        self.authz = k8s.AuthorizationV1Api(api_client)
        self.timeout_s = timeout_s
        self.token_ttl_s = token_ttl_s
        self.allow_ttl_s = allow_ttl_s
        self.deny_ttl_s = deny_ttl_s
        self.tokens: TTLCache[bytes, Identity | Verdict] = TTLCache(max_entries, clock)
        """SHA-256 of a token → who it is, or the Verdict that it is not accepted."""
        self.access: TTLCache[tuple[Identity, str, str], Verdict] = TTLCache(max_entries, clock)
        """(who, path, verb) → the SubjectAccessReview's answer."""
        self.reviews = 0
        """Reviews sent to the API server (for tests of the caches)."""
        self._slots = asyncio.Semaphore(max_concurrent)

    def middleware(self) -> Middleware:
        """An aiohttp middleware: the open paths pass, every other one is checked first."""

        @web.middleware
        async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in OPEN_PATHS:
                return await handler(request)
            refused = await self.check(request)
            if refused is not None:
                return refused
            return await handler(request)

        return admin_auth

    async def check(self, request: web.Request) -> web.Response | None:
        """None when the request may go on; otherwise the 401, 403 or 503 to answer."""
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return _refuse(
                401,
                "authentication required: send 'Authorization: Bearer <token>' with a token the "
                "Kubernetes API accepts (kubectl create token NAME)",
            )
        path, verb = request.path, review_verb(request.method)
        try:
            who = await self.identity(token)
            if isinstance(who, Verdict):
                return _refuse(401, f"token not accepted by the Kubernetes API: {who.reason}")
            verdict = await self.allowed(who, path, verb)
        except ReviewError as exc:
            log.warning("admin auth: %s %s: %s", request.method, path, exc)
            return _refuse(503, f"cannot check access with the Kubernetes API: {exc}; retry")
        if not verdict.ok:
            why = f": {verdict.reason}" if verdict.reason else ""
            return _refuse(
                403,
                f"user {who.user!r} may not {verb} {path} on the admin port{why} (grant it the "
                "ClusterRole priority-extender-admin-reader)",
            )
        return None

    async def identity(self, token: str) -> Identity | Verdict:
        """Who ``token`` is, or a Verdict that it is not accepted; cached by its hash."""
        key = hashlib.sha256(token.encode()).digest()
        cached = self.tokens.get(key)
        if cached is not None:
            return cached
        body = k8s.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=k8s.V1TokenReviewSpec(token=token),
        )
        status = await self._review(
            "TokenReview", self.authn.create_token_review_without_preload_content, body
        )
        result: Identity | Verdict
        user = status.get("user") or {}
        if status.get("authenticated") is True and isinstance(user, dict) and user.get("username"):
            extra = user.get("extra") or {}
            result = Identity(
                user=str(user["username"]),
                uid=str(user.get("uid") or ""),
                groups=tuple(str(g) for g in user.get("groups") or ()),
                extra=tuple(
                    sorted((str(k), tuple(str(x) for x in v or ())) for k, v in extra.items())
                )
                if isinstance(extra, dict)
                else (),
            )
        else:
            reason = status.get("error")
            result = Verdict(False, str(reason) if reason else "not authenticated")
        self.tokens.put(key, result, self.token_ttl_s)
        return result

    async def allowed(self, who: Identity, path: str, verb: str) -> Verdict:
        """Whether ``who`` may ``verb`` the non-resource URL ``path``; cached."""
        key = (who, path, verb)
        cached = self.access.get(key)
        if cached is not None:
            return cached
        body = k8s.V1SubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SubjectAccessReview",
            spec=k8s.V1SubjectAccessReviewSpec(
                user=who.user,
                uid=who.uid or None,
                groups=list(who.groups) or None,
                extra={k: list(v) for k, v in who.extra} or None,
                non_resource_attributes=k8s.V1NonResourceAttributes(path=path, verb=verb),
            ),
        )
        status = await self._review(
            "SubjectAccessReview",
            self.authz.create_subject_access_review_without_preload_content,
            body,
        )
        allowed = status.get("allowed") is True and status.get("denied") is not True
        reason = status.get("reason") or status.get("evaluationError") or ""
        verdict = Verdict(allowed, str(reason))
        self.access.put(key, verdict, self.allow_ttl_s if allowed else self.deny_ttl_s)
        return verdict

    async def _review(
        self, kind: str, call: Callable[..., Awaitable[aiohttp.ClientResponse]], body: Any
    ) -> dict[str, Any]:
        """POST one review; its ``status``. ReviewError for anything but an answer."""
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._slots:
                    self.reviews += 1
                    resp = await call(body, _request_timeout=self.timeout_s)
                    try:
                        raw, over = await read_at_most(resp.content, MAX_REVIEW_BYTES)
                    finally:
                        resp.release()
        except TimeoutError:
            raise ReviewError(f"{kind} got no answer within {self.timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError, k8s.ApiException) as exc:
            raise ReviewError(f"{kind} failed: {_short(exc)}") from None
        if over:
            raise ReviewError(f"{kind} answered more than {MAX_REVIEW_BYTES} bytes")
        if resp.status not in (200, 201):
            detail = _short(raw.decode(errors="replace"))
            hint = ""
            if resp.status in (401, 403):
                hint = (
                    " (the extender's own ServiceAccount needs the system:auth-delegator "
                    "ClusterRole: create tokenreviews and subjectaccessreviews)"
                )
            raise ReviewError(f"{kind} answered HTTP {resp.status}{hint}: {detail}")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ReviewError(f"{kind} answered with a body that is not JSON") from None
        status = doc.get("status") if isinstance(doc, dict) else None
        return status if isinstance(status, dict) else {}


def _short(value: object, limit: int = 300) -> str:
    text = " ".join(str(value).split()) or type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
