"""The deploy manifests against the real kube-apiserver (issue 18): every overlay of deploy/overlays
applies server-side; the second-scheduler overlay's KubeSchedulerConfiguration, as shipped, runs a
real kube-scheduler with the overlay's ServiceAccount's credentials, and the pods that ask for
that scheduler get scheduled through the extender; the extender's own RBAC is read-only.

Custom resources need their definitions: the Prometheus Operator's PodMonitor and
PrometheusRule (deploy/overlays/monitoring) and cert-manager's Issuer and Certificate
(deploy/overlays/main-scheduler) are kept as minimal, open-schema CRDs in ``tests/e2e/crds/``.

The order is the one a user follows, and it matters for what is checked: ``main-scheduler``
first, where the ServiceAccount ``priority-extender`` carries only the base's read-only
ClusterRole (the extender's own needs): its rights are recorded then, and the extender is started
with a token of it. Then ``monitoring`` and ``second-scheduler``. In that overlay the pod's two
containers share the ServiceAccount, so it also gets kube-scheduler's rights (as
deploy/overlays/second-scheduler/scheduler-rbac.yaml says); that kube-scheduler runs with a token
of it, from the TokenRequest API (``kubectl create token``), as its in-cluster credentials would
be, for its API client and for its secure port's delegated authentication and authorisation.

What differs from a cluster, and why: kube-scheduler binds 127.0.0.1 on a free port (the pod's
10259 on every address is not loopback-only); ``clientConnection.kubeconfig`` points at a
kubeconfig with the token (in a pod it is empty: in-cluster); the extender listens on 8888 if
that port is free (the shipped ``urlPrefix``), else on another port written into ``urlPrefix``;
the policy is the shipped ConfigMap's, with only the Prometheus URL pointed at the session's
Prometheus and its refresh at 1 s. The applied objects stay on the session's apiserver (without a
controller-manager nothing would finish deleting the namespace); they touch no other test's.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e import assets, kube
from tests.e2e.extender_proc import Extender
from tests.e2e.harness import Scenario, Session
from tests.e2e.procs import Proc, free_port, http_get, https_context

ROOT = assets.ROOT
KUBECTL = ROOT / ".venv" / "bin" / "kubectl"
OVERLAYS = ROOT / "deploy" / "overlays"
ORDER = ("main-scheduler", "monitoring", "second-scheduler")
CRDS = Path(__file__).parent / "crds"
NAMESPACE = SERVICE_ACCOUNT = "priority-extender"
SA_USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
SHIPPED_PORT = 8888
"""The extender's port in the shipped ``urlPrefix`` (http://127.0.0.1:8888)."""
KUBECTL_S = 120.0
"""A server-side apply of an overlay takes well under a second; the bound catches a hang."""
CRD_WAIT = "60s"
"""A CRD is Established within a second of its creation; the bound catches a broken apiserver."""
TOKEN_DURATION = "2h"
"""Longer than any test session."""
SCHEDULER_READY_S = 60.0
"""kube-scheduler serves /healthz a couple of seconds after its informers sync."""
READ_VERBS = {"get", "list", "watch"}
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
WRITE_TARGETS = (
    # (group, resource, subresource): what a scheduler or anything with write access would touch
    ("", "pods", ""),
    ("", "pods", "binding"),
    ("", "pods", "eviction"),
    ("", "pods", "status"),
    ("", "bindings", ""),
    ("", "nodes", ""),
    ("", "nodes", "status"),
    ("", "events", ""),
    ("events.k8s.io", "events", ""),
    ("", "configmaps", ""),
    ("", "secrets", ""),
    ("", "serviceaccounts", "token"),
    ("coordination.k8s.io", "leases", ""),
    ("apps", "deployments", ""),
    ("scheduling.k8s.io", "priorityclasses", ""),
    ("rbac.authorization.k8s.io", "clusterrolebindings", ""),
)
DELEGATED_REVIEWS = {
    # system:auth-delegator (deploy/base/rbac.yaml), for --admin-auth kubernetes: create only,
    # and a review reads and changes nothing.
    "tokenreviews.authentication.k8s.io",
    "subjectaccessreviews.authorization.k8s.io",
}
SELF_REVIEWS = {
    # Granted to every authenticated user by the built-in system:basic-user: questions about
    # oneself, which change nothing.
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
    "selfsubjectreviews.authentication.k8s.io",
}


def kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=KUBECTL_S,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{' '.join(done.args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def token_kubeconfig(session: Session, token: str, path: Path) -> Path:
    """A kubeconfig for the session's apiserver with a bearer token, as in-cluster config is."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "e2e",
                        "cluster": {
                            "server": session.cp.url,
                            "certificate-authority": str(session.cp.pki.ca_crt),
                        },
                    }
                ],
                "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
                "contexts": [
                    {"name": "e2e", "context": {"cluster": "e2e", "user": SERVICE_ACCOUNT}}
                ],
                "current-context": "e2e",
            }
        )
    )
    return path


def access(api: client.ApiClient, verb: str, group: str, resource: str, sub: str = "") -> bool:
    """A SelfSubjectAccessReview with ``api``'s credentials (namespaced in NAMESPACE)."""
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": sub,
                    "namespace": NAMESPACE,
                }
            },
        }
    )
    return bool(review.status.allowed)


@dataclass
class Rights:
    """What the ServiceAccount may do, asked with its own token."""

    allowed: dict[tuple[str, str, str, str], bool]
    """(verb, group, resource, subresource) -> allowed, for the reads and WRITE_TARGETS."""
    can_i: str
    """``kubectl auth can-i --list`` for it (in NAMESPACE), as printed."""


def rights(session: Session, kubeconfig: Path) -> Rights:
    api = kube.api_client(kubeconfig)
    try:
        allowed = {}
        for resource in ("nodes", "pods"):
            for verb in READ_VERBS:
                allowed[(verb, "", resource, "")] = access(api, verb, "", resource)
        for group, resource, sub in WRITE_TARGETS:
            for verb in WRITE_VERBS:
                allowed[(verb, group, resource, sub)] = access(api, verb, group, resource, sub)
    finally:
        api.close()
    listing = ok(
        kubectl(
            session.cp.kubeconfig, "auth", "can-i", "--list", f"--as={SA_USER}", "-n", NAMESPACE
        )
    )
    return Rights(allowed, listing)


def can_i_rows(listing: str) -> list[tuple[str, set[str]]]:
    """(resource, verbs) rows of ``kubectl auth can-i --list`` (non-resource URLs skipped)."""
    rows = []
    for line in listing.splitlines()[1:]:
        parts = line.split()
        if not parts or not line.rstrip().endswith("]"):
            continue
        verbs = set(line[line.rindex("[") + 1 : line.rindex("]")].split())
        if parts[0].startswith("[") or parts[0] == "":
            continue  # a non-resource URL row ("[/healthz] [] [get]") starts with its URL list
        rows.append((parts[0], verbs))
    return rows


@dataclass
class Deployed:
    applied: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    read_only: Rights | None = None
    """The ServiceAccount's rights with only main-scheduler (the base RBAC) applied."""
    kubeconfig: Path | None = None
    """A kubeconfig with a TokenRequest token of the ServiceAccount."""
    extender: Extender | None = None
    """Started with that token while the ServiceAccount could only read."""
    extender_ready_read_only: bool = False


@pytest.fixture(scope="module")
def deployed(e2e: Session, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    if not KUBECTL.is_file():  # as the binaries: skipped without, an error under CI
        why = f"{KUBECTL} missing: run scripts/setup.sh --test"
        if assets.in_ci():
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("deploy-real")
    admin = e2e.cp.kubeconfig
    out = Deployed()
    ok(kubectl(admin, "apply", "--server-side", "-f", str(CRDS)))
    for crd in yaml.safe_load_all(
        "\n---\n".join(p.read_text() for p in sorted(CRDS.glob("*.yaml")))
    ):
        name = f"crd/{crd['metadata']['name']}"
        ok(kubectl(admin, "wait", "--for=condition=Established", f"--timeout={CRD_WAIT}", name))
    try:
        for overlay in ORDER:
            out.applied[overlay] = kubectl(
                admin, "apply", "--server-side", "-k", str(OVERLAYS / overlay)
            )
            if overlay == "main-scheduler" and out.applied[overlay].returncode == 0:
                token = ok(
                    kubectl(
                        admin,
                        "create",
                        "token",
                        SERVICE_ACCOUNT,
                        "-n",
                        NAMESPACE,
                        f"--duration={TOKEN_DURATION}",
                    )
                ).strip()
                out.kubeconfig = token_kubeconfig(e2e, token, folder / "sa.kubeconfig")
                out.read_only = rights(e2e, out.kubeconfig)
                out.extender = start_extender(e2e, out.kubeconfig, folder / "extender")
                out.extender_ready_read_only = out.extender.readyz()[0] == 200
        yield out
    finally:
        if out.extender is not None:
            out.extender.stop()


def shipped_policy(session: Session) -> dict[str, Any]:
    """The policy of the applied ConfigMap, with only the Prometheus URL and refresh changed."""
    cm = session.core.read_namespaced_config_map("priority-extender-policy", NAMESPACE)
    doc: dict[str, Any] = yaml.safe_load(cm.data["policy.yaml"])
    doc["metrics"]["prometheus"]["url"] = session.prometheus.url  # loopback, not the cluster's
    doc["metrics"]["prometheus"]["refreshInterval"] = "1s"  # the session's scrape interval
    return doc


def start_extender(session: Session, kubeconfig: Path, folder: Path) -> Extender:
    ext = Extender(folder, kubeconfig)
    if port_free(SHIPPED_PORT):
        ext.port = SHIPPED_PORT
    return ext.start(shipped_policy(session))


def scheduler_config(session: Session, kubeconfig: Path, port: int) -> dict[str, Any]:
    """The applied ConfigMap's KubeSchedulerConfiguration (the overlay's scheduler-config.yaml),
    with only ``clientConnection.kubeconfig`` set and ``urlPrefix`` moved if not on 8888."""
    configmaps = session.core.list_namespaced_config_map(NAMESPACE).items
    (cm,) = [c for c in configmaps if c.metadata.name.startswith("priority-scheduler-config-")]
    cfg: dict[str, Any] = yaml.safe_load(cm.data["config.yaml"])
    assert cfg["clientConnection"]["kubeconfig"] == ""  # in-cluster, as shipped
    cfg["clientConnection"]["kubeconfig"] = str(kubeconfig)
    if port != SHIPPED_PORT:
        assert cfg["extenders"][0]["urlPrefix"] == f"http://127.0.0.1:{SHIPPED_PORT}"
        cfg["extenders"][0]["urlPrefix"] = f"http://127.0.0.1:{port}"
    return cfg


@contextlib.contextmanager
def second_scheduler(
    session: Session, cfg: dict[str, Any], kubeconfig: Path, folder: Path
) -> Iterator[tuple[Proc, int]]:
    """A kube-scheduler with ``cfg`` and the token kubeconfig for its client and for its secure
    port's delegated authentication/authorisation (in a pod: its in-cluster credentials)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = Proc(
        "kube-scheduler (second)",
        [
            str(assets.binary("kube-scheduler")),
            f"--config={path}",
            "--v=2",  # the Deployment's flags
            f"--secure-port={port}",
            "--bind-address=127.0.0.1",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--cert-dir={folder / 'certs'}",
        ],
        folder / "kube-scheduler.log",
    ).start()
    try:
        proc.wait_ready(
            "healthy",
            lambda: (
                http_get(f"https://127.0.0.1:{port}/healthz", context=https_context(), timeout=3)[0]
                == 200
            ),
            SCHEDULER_READY_S,
        )
        yield proc, port
    finally:
        proc.stop()


# --- the tests ---------------------------------------------------------------------------------


def test_every_overlay_applies_server_side(deployed: Deployed, e2e: Session) -> None:
    for overlay in ORDER:
        done = deployed.applied[overlay]
        assert done.returncode == 0, f"{overlay}: {done.stderr}"
        assert "serverside-applied" in done.stdout, done.stdout
        # Every rendered object is on the server now.
        rendered = [
            d
            for d in yaml.safe_load_all(
                ok(kubectl(e2e.cp.kubeconfig, "kustomize", str(OVERLAYS / overlay)))
            )
            if d
        ]
        names = ok(
            kubectl(e2e.cp.kubeconfig, "get", "-k", str(OVERLAYS / overlay), "-o", "name")
        ).split()
        assert len(names) == len(rendered), (overlay, names)
    # The native sidecar survived the apply (the feature gate is on): an init container with
    # restartPolicy Always, its startup probe kept.
    dep = client.AppsV1Api(e2e.api).read_namespaced_deployment("priority-extender", NAMESPACE)
    (init,) = dep.spec.template.spec.init_containers
    assert (init.name, init.restart_policy) == ("extender", "Always")
    assert init.startup_probe is not None
    assert [c.name for c in dep.spec.template.spec.containers] == ["kube-scheduler"]


def test_the_extender_service_account_can_only_read(deployed: Deployed) -> None:
    """With the base RBAC alone (main-scheduler): get/list/watch nodes and pods, and create
    TokenReviews and SubjectAccessReviews (--admin-auth kubernetes), nothing else; and the
    extender runs on it (its first node list needs exactly that)."""
    assert deployed.read_only is not None
    allowed = deployed.read_only.allowed
    for resource in ("nodes", "pods"):
        for verb in READ_VERBS:
            assert allowed[(verb, "", resource, "")], f"cannot {verb} {resource}"
    granted = [k for k, v in allowed.items() if v and k[0] not in READ_VERBS]
    assert granted == [], f"write access granted: {granted}"
    rows = can_i_rows(deployed.read_only.can_i)
    assert ("nodes", READ_VERBS) in rows, deployed.read_only.can_i
    assert ("pods", READ_VERBS) in rows, deployed.read_only.can_i
    beyond = [
        (r, v)
        for r, v in rows
        if r not in SELF_REVIEWS
        and not v <= READ_VERBS
        and not (r in DELEGATED_REVIEWS and v == {"create"})
    ]
    assert beyond == [], f"more than read access:\n{deployed.read_only.can_i}"
    assert {r for r, v in rows if v == {"create"}} >= DELEGATED_REVIEWS, deployed.read_only.can_i
    assert deployed.extender is not None
    assert deployed.extender_ready_read_only, deployed.extender.log()
    denied = [line for line in deployed.extender.log().splitlines() if "forbidden" in line.lower()]
    assert denied == [], "\n".join(denied[:20])


def test_the_second_scheduler_schedules_with_the_shipped_configuration_and_rbac(
    deployed: Deployed, e2e: Session, tmp_path: Path
) -> None:
    assert deployed.kubeconfig is not None
    assert deployed.extender is not None
    ext = deployed.extender
    cfg = scheduler_config(e2e, deployed.kubeconfig, ext.port)
    scheduler_name = cfg["profiles"][0]["schedulerName"]
    sc = Scenario(e2e, "deploy-second-scheduler")
    try:
        hot = sc.node("hot", 0.90, cores=64, memory_gib=256)  # emptiest by requests
        cool = sc.node("cool", 0.10, cores=16)
        kube.wait_for(
            "the extender to see the nodes' samples",
            lambda: all(
                n in (snap := ext.snapshot())["nodes"] and snap["nodes"][n]["samples"].get("cpu")
                for n in (hot, cool)
            ),
            lambda: json.dumps(ext.snapshot().get("nodes", {}).get(hot)),
            60,
        )
        with second_scheduler(e2e, cfg, deployed.kubeconfig, tmp_path / "scheduler") as (
            proc,
            port,
        ):
            names = []
            for klass in ("batch", "standard", "production", "critical"):
                name = f"{klass}-1"
                manifest = kube.pod_manifest(name, sc.id, priority_class=klass, cpu="250m")
                manifest["spec"]["schedulerName"] = scheduler_name
                e2e.core.create_namespaced_pod(sc.namespace, manifest)
                names.append(name)
            placed = sc.wait_bound(names)
            # The extender decided them: batch and standard kept off the node above their
            # ceilings, which request-based scores alone would pick.
            assert placed["batch-1"] == cool, placed
            assert placed["standard-1"] == cool, placed
            for name in names:
                assert ext.decisions(f"{sc.namespace}/{name}"), f"no extender decision for {name}"
            # Leader election as shipped: this scheduler holds the overlay's lease.
            lease = client.CoordinationV1Api(e2e.api).read_namespaced_lease(
                cfg["leaderElection"]["resourceName"], cfg["leaderElection"]["resourceNamespace"]
            )
            assert lease.spec.holder_identity, lease
            # The secure port's delegated authentication (the client CA in kube-system's
            # extension-apiserver-authentication, read with the overlay's RoleBinding) and
            # authorisation (SubjectAccessReviews, in system:kube-scheduler) work on the token:
            # the admin's client certificate is let in to /metrics.
            status, body = http_get(
                f"https://127.0.0.1:{port}/metrics",
                context=https_context(None, e2e.cp.pki.admin_crt, e2e.cp.pki.admin_key),
            )
            assert status == 200, body[:300]
            assert b"scheduler_schedule_attempts_total" in body
            log = proc.tail(100_000)
        forbidden = [line for line in log.splitlines() if "forbidden" in line.lower()]
        assert forbidden == [], "\n".join(forbidden[:20])
    finally:
        sc.cleanup()
    # Which bindings name the ServiceAccount now: the base's read-only ClusterRole and, for the
    # kube-scheduler sharing the pod, what scheduler-rbac.yaml grants. Nothing else.
    rbac = client.RbacAuthorizationV1Api(e2e.api)
    bound = sorted(
        (b.kind, b.metadata.namespace or "", b.role_ref.name)
        for b in [
            *rbac.list_cluster_role_binding().items,
            *rbac.list_role_binding_for_all_namespaces().items,
        ]
        if any(
            s.kind == "ServiceAccount" and s.name == SERVICE_ACCOUNT and s.namespace == NAMESPACE
            for s in b.subjects or []
        )
    )
    assert sorted((ns, role) for _kind, ns, role in bound) == sorted(
        [
            ("", "priority-extender"),
            ("", "system:auth-delegator"),
            ("", "system:kube-scheduler"),
            ("", "system:volume-scheduler"),
            ("kube-system", "extension-apiserver-authentication-reader"),
            ("priority-extender", "priority-scheduler-leader-election"),
        ]
    ), bound
