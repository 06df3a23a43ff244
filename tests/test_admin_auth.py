"""``--admin-auth kubernetes`` without a working API server, and the authorizer's caches.

What the real kube-apiserver answers (200, 403, 401 for real tokens) is tested against it in
tests/e2e/test_admin_auth_real.py. Here: the verdict caches are bounded and expire; a request
without a token is refused before any API call; an API server that refuses connections or never
answers gives a 503 JSON body, not a hang or a traceback, and that failure is not cached; the
probes and metrics stay open; the setting needs the cluster connection. Every API call goes
through the real ``kubernetes.aio`` client to loopback sockets (a closed port, a listener that
accepts and never answers).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from kubernetes.aio import client as k8s

from extender.server.admin import AdminCluster
from extender.server.app import ServerSettings, SettingsError
from extender.server.authz import (
    OPEN_PATHS,
    Authorizer,
    TTLCache,
    bearer_token,
    review_verb,
)
from tests.support import cli, make_extender

TOKEN = {"Authorization": "Bearer not-checked-before-the-api"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the cache ----------------------------------------------------------------------------------


def test_entries_expire_after_their_ttl():
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(8, clock)
    cache.put("allow", 1, 10.0)
    cache.put("deny", 0, 2.0)
    clock.now += 1.9
    assert (cache.get("allow"), cache.get("deny")) == (1, 0)
    clock.now += 0.1
    assert cache.get("deny") is None  # expired at exactly its ttl, and dropped
    assert len(cache) == 1
    clock.now += 8.0
    assert cache.get("allow") is None
    assert len(cache) == 0


def test_the_cache_is_bounded_and_drops_the_least_recently_used():
    cache: TTLCache[int, int] = TTLCache(3, Clock())
    for key in range(3):
        cache.put(key, key, 60.0)
    assert cache.get(0) == 0  # used: now the most recent
    cache.put(3, 3, 60.0)
    assert len(cache) == 3
    assert cache.get(1) is None  # the least recently used went
    assert [cache.get(k) for k in (0, 2, 3)] == [0, 2, 3]
    for key in range(100, 1100):
        cache.put(key, key, 60.0)
    assert len(cache) == 3


def test_a_cache_needs_room_for_one_entry():
    with pytest.raises(ValueError, match="at least 1"):
        TTLCache(0)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer  abc ", "abc"),
        (None, None),
        ("", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer a b", None),
        ("Bearer " + "x" * 20_000, None),
        ("Bearer caf\u00e9", None),
    ],
)
def test_bearer_tokens(header, token):
    assert bearer_token(header) == token


def test_the_review_verb_is_the_lower_cased_method():
    assert [review_verb(m) for m in ("GET", "HEAD", "POST", "PUT")] == [
        "get",
        "get",
        "post",
        "put",
    ]


# --- against an API server that does not answer -------------------------------------------------


def _api(port: int) -> k8s.ApiClient:
    conf = k8s.Configuration(host=f"http://127.0.0.1:{port}")
    conf.api_key = {"BearerToken": "extender-token"}
    conf.api_key_prefix = {"BearerToken": "Bearer"}
    return k8s.ApiClient(conf)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback listener that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.fixture
async def unreachable_admin(aiohttp_client, closed_port) -> AsyncIterator[object]:
    api = _api(closed_port)
    ext = await make_extender(
        kubernetes="auto", admin_auth="kubernetes", admin_cluster=AdminCluster(api)
    )
    ext.ready = True
    client = await aiohttp_client(ext.admin_app())
    yield client
    await api.close()


async def test_an_unreachable_api_server_is_a_503_for_the_explain_endpoints(unreachable_admin):
    client = unreachable_admin
    for method, path in (("GET", "/snapshot"), ("GET", "/decisions?pod=a/b"), ("POST", "/dry-run")):
        resp = await client.request(method, path, headers=TOKEN, data=b"kind: Pod")
        assert resp.status == 503, await resp.text()
        body = await resp.json()
        assert body["error"].startswith("cannot check access with the Kubernetes API: ")
        assert "TokenReview failed" in body["error"]
        assert resp.headers["Retry-After"] == "1"


async def test_no_token_is_a_401_and_the_probes_and_metrics_stay_open(unreachable_admin):
    client = unreachable_admin
    for path in ("/snapshot", "/decisions?pod=a/b", "/nope"):
        resp = await client.get(path)
        assert resp.status == 401
        assert (await resp.json())["error"].startswith("authentication required: ")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    resp = await client.get("/snapshot", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status == 401
    for path in sorted(OPEN_PATHS):
        resp = await client.get(path)
        assert resp.status == 200, (path, await resp.text())


async def _guarded(aiohttp_client, authorizer: Authorizer) -> object:
    async def secret(request: web.Request) -> web.Response:
        return web.json_response({"secret": True})

    app = web.Application(middlewares=[authorizer.middleware()])
    app.router.add_get("/snapshot", secret)
    return await aiohttp_client(app)


async def test_an_api_server_that_never_answers_is_a_503_within_the_timeout(
    aiohttp_client, black_hole
):
    api = _api(black_hole)
    try:
        authorizer = Authorizer(api, timeout_s=0.3)
        client = await _guarded(aiohttp_client, authorizer)
        async with asyncio.timeout(30):  # only keeps a broken test from hanging
            resp = await client.get("/snapshot", headers=TOKEN)
        assert resp.status == 503
        assert "TokenReview got no answer within 0.3 s" in (await resp.json())["error"]
        # A failed review is not cached: the next request asks again.
        async with asyncio.timeout(30):
            resp = await client.get("/snapshot", headers=TOKEN)
        assert resp.status == 503
        assert authorizer.reviews == 2
        assert len(authorizer.tokens) == 0
    finally:
        await api.close()


async def test_reviews_in_flight_are_bounded(aiohttp_client, black_hole):
    api = _api(black_hole)
    try:
        authorizer = Authorizer(api, timeout_s=0.5, max_concurrent=2)
        client = await _guarded(aiohttp_client, authorizer)
        async with asyncio.timeout(30):
            answers = await asyncio.gather(
                *(
                    client.get("/snapshot", headers={"Authorization": f"Bearer t{i}"})
                    for i in range(6)
                )
            )
        assert [r.status for r in answers] == [503] * 6
        assert authorizer.reviews <= 4  # two slots; the others waited and timed out
    finally:
        await api.close()


# --- the setting ------------------------------------------------------------------------------


def test_kubernetes_auth_needs_the_cluster_connection():
    with pytest.raises(SettingsError, match="--kubernetes is off"):
        ServerSettings(admin_auth="kubernetes", kubernetes="off")


async def test_without_a_cluster_the_admin_port_refuses_to_start_unprotected():
    ext = await make_extender(kubernetes="auto", admin_auth="kubernetes")
    with pytest.raises(SettingsError, match="needs the Kubernetes API"):
        ext.admin_app()


def test_serve_says_so_in_one_error_line(tmp_path):
    res = cli("serve", "--admin-auth", "kubernetes", "--kubernetes", "off")
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "error: --admin-auth kubernetes checks tokens with the Kubernetes API, and --kubernetes "
        "is off: use --kubernetes auto (in a pod, or with a kubeconfig)"
    ]
    res = cli("serve", "--admin-auth", "kubernetes", "--port", "0", "--admin-port", "0",
              env={"KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)})  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1].startswith(
        "error: cannot start: --admin-auth kubernetes needs the Kubernetes API"
    ), res.stderr
    assert "Traceback" not in res.stderr
    res = cli("serve", "--admin-auth", "maybe")
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "error: --admin-auth='maybe' is not one of: none, kubernetes"
    ]


# --- dry runs and /snapshot with the cluster's PriorityClasses ----------------------------------
# (Here because they share the admin port's wiring, AdminCluster; the reflector that fills
# PriorityClasses is tested against the API in tests/test_cluster_priority_classes.py.)

MANIFEST = (
    "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n"
    "spec:\n  priorityClassName: production-high\n  containers: [{name: c, image: i}]\n"
)


def _classes(synced: bool = True, **values: tuple[int, bool]):
    from extender.cluster.cache import PriorityClasses
    from extender.cluster.decode import PriorityClassRecord

    classes = PriorityClasses()
    for name, (value, default) in values.items():
        classes.put(name.replace("_", "-"), PriorityClassRecord(value, default))
    if synced:
        classes.listed()
    return classes


async def _admin(aiohttp_client, classes):
    ext = await make_extender(admin_cluster=AdminCluster(None, classes))
    return await aiohttp_client(ext.admin_app())


async def test_a_dry_run_resolves_the_class_through_the_cluster(aiohttp_client):
    client = await _admin(
        aiohttp_client, _classes(production_high=(1000000, False), low=(10, True))
    )
    resp = await client.post("/dry-run?top=0", data=MANIFEST)
    body = await resp.json()
    assert resp.status == 200, body
    assert (body["priority"], body["tier"]) == (1000000, "production")
    assert "warnings" not in body
    unnamed = MANIFEST.replace("  priorityClassName: production-high\n", "")
    body = await (await client.post("/dry-run?top=0", data=unnamed)).json()
    assert (body["priority"], body["priorityClassName"]) == (10, "low")  # the globalDefault
    given = MANIFEST.replace("spec:\n", "spec:\n  priority: 5\n")
    body = await (await client.post("/dry-run?top=0", data=given)).json()
    assert body["priority"] == 5
    snap = await (await client.get("/snapshot")).json()
    assert snap["priorityClasses"] == {
        "low": {"value": 10, "globalDefault": True},
        "production-high": {"value": 1000000, "globalDefault": False},
    }


@pytest.mark.parametrize(
    ("classes", "why"),
    [
        (None, "(the extender does not watch PriorityClasses: --cluster-priority-classes)"),
        (_classes(synced=False), "(the cluster's PriorityClasses are not listed yet)"),
        (_classes(low=(10, True)),
         "(the cluster has no such PriorityClass: admission would refuse the pod)"),
    ],
)  # fmt: skip
async def test_a_dry_run_says_when_it_cannot_resolve_the_class(aiohttp_client, classes, why):
    client = await _admin(aiohttp_client, classes)
    body = await (await client.post("/dry-run?top=0", data=MANIFEST)).json()
    assert body["priority"] == 0
    assert body["warnings"] == [
        f"spec.priority is not set and PriorityClass 'production-high' was not resolved here "
        f"{why}: judged as priority 0; set spec.priority to its value "
        "(kubectl get priorityclass production-high) for a true answer"
    ]
    snap = await (await client.get("/snapshot")).json()
    assert ("priorityClasses" in snap) == (classes is not None and classes.synced)
