"""``--admin-auth kubernetes`` against the real kube-apiserver: TokenReview, then
SubjectAccessReview for the admin port's non-resource URLs, as kube-rbac-proxy does.

The extender runs as its own process with the credentials of a ServiceAccount that holds only
what the deploy manifests give it for this: ``system:auth-delegator`` (create tokenreviews and
subjectaccessreviews) and read access to nodes and pods. Callers are ServiceAccounts with
TokenRequest tokens (``kubectl create token``): one bound to a ClusterRole granting the admin
URLs (the rules deploy/ ships as ``priority-extender-admin-reader``), one bound to nothing. The
probes and metrics answer without a token. What an unreachable or silent API server gives (a 503
within the review timeout) is tested in tests/test_admin_auth.py against loopback sockets.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.e2e import assets, kube
from tests.e2e.extender_proc import READY_S, e2e_policy
from tests.e2e.harness import Session
from tests.e2e.procs import Proc, free_port, http_get

NAMESPACE = "e2e-admin-auth"
PREFIX = "e2e-admin-auth"
TOKEN_SECONDS = 3600
"""Longer than the module's tests; the API server's minimum is 10 minutes."""
ADMIN_RULES = [
    # The same rules as the ClusterRole priority-extender-admin-reader of the deploy manifests.
    {"nonResourceURLs": ["/snapshot", "/decisions"], "verbs": ["get"]},
    {"nonResourceURLs": ["/dry-run"], "verbs": ["post"]},
]
EXTENDER_READ = [
    {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]},
    # --cluster-priority-classes: dry runs resolve a manifest's priorityClassName
    {"apiGroups": ["scheduling.k8s.io"], "resources": ["priorityclasses"],
     "verbs": ["get", "list", "watch"]},
]  # fmt: skip
POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec:\n  priority: 100\n  containers: [{name: c, image: i}]\n"


def _create(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except ApiException as exc:
        if exc.status != 409:  # already there from an earlier run of this module
            raise


def _binding(name: str, role: str, account: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}],
    }


def _token(session: Session, account: str) -> str:
    review = session.core.create_namespaced_service_account_token(
        account,
        NAMESPACE,
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"expirationSeconds": TOKEN_SECONDS}},
    )  # fmt: skip
    token: str = review.status.token
    return token


def _kubeconfig(session: Session, token: str, path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "e2e", "cluster": {
                    "server": session.cp.url,
                    "certificate-authority": str(session.cp.pki.ca_crt)}}],
                "users": [{"name": "extender", "user": {"token": token}}],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "extender"}}],
                "current-context": "e2e",
            }
        )
    )  # fmt: skip
    return path


_NO_PROXY = urllib.request.ProxyHandler({})


def request(
    url: str, token: str | None = None, data: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    opener = urllib.request.build_opener(_NO_PROXY)
    try:
        with opener.open(req, timeout=30) as resp:
            status, body = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    parsed = json.loads(body) if body.strip().startswith((b"{", b"[")) else {"raw": body[:200]}
    return status, parsed if isinstance(parsed, dict) else {"list": parsed}


@dataclass
class Guarded:
    admin: str
    reader: str
    outsider: str
    proc: Proc


@pytest.fixture(scope="module")
def guarded(e2e: Session, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    folder = tmp_path_factory.mktemp("admin-auth")
    rbac = client.RbacAuthorizationV1Api(e2e.api)
    _create(e2e.core.create_namespace, {"metadata": {"name": NAMESPACE}})
    for account in ("extender", "reader", "outsider"):
        _create(
            e2e.core.create_namespaced_service_account, NAMESPACE, {"metadata": {"name": account}}
        )
    _create(
        rbac.create_cluster_role,
        {"metadata": {"name": f"{PREFIX}-admin-reader"}, "rules": ADMIN_RULES},
    )
    _create(
        rbac.create_cluster_role, {"metadata": {"name": f"{PREFIX}-read"}, "rules": EXTENDER_READ}
    )
    for name, role, account in (
        (f"{PREFIX}-extender-delegator", "system:auth-delegator", "extender"),
        (f"{PREFIX}-extender-read", f"{PREFIX}-read", "extender"),
        (f"{PREFIX}-reader", f"{PREFIX}-admin-reader", "reader"),
    ):
        _create(rbac.create_cluster_role_binding, _binding(name, role, account))
    kubeconfig = _kubeconfig(e2e, _token(e2e, "extender"), folder / "extender.kubeconfig")
    policy = folder / "policy.yaml"
    policy.write_text(yaml.safe_dump(e2e_policy(e2e.prometheus.url)))
    admin_port = free_port()
    command, extra_env = assets.extender_command()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORITY_EXTENDER_")}
    env.update(extra_env)
    proc = Proc(
        "priority-extender (admin auth)",
        [
            *command, "serve", f"--kubeconfig={kubeconfig}", f"--policy={policy}",
            "--host=127.0.0.1", f"--port={free_port()}", "--admin-host=127.0.0.1",
            f"--admin-port={admin_port}", "--log-format=json", "--drain-seconds=0",
            "--admin-auth=kubernetes",
            "--cluster-priority-classes=true",
        ],
        folder / "extender.log",
        env=env,
        cwd=assets.extender_tree() or folder,
    ).start()  # fmt: skip
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        proc.wait_ready("ready", lambda: request(admin + "/readyz")[0] == 200, READY_S)
        yield Guarded(admin, _token(e2e, "reader"), _token(e2e, "outsider"), proc)
    finally:
        proc.stop()


def test_a_token_granted_the_admin_urls_gets_200(guarded):
    status, body = request(guarded.admin + "/snapshot", guarded.reader)
    assert status == 200, body
    assert "nodes" in body
    status, body = request(guarded.admin + "/dry-run", guarded.reader, POD.encode())
    assert status == 200, body
    assert body["priority"] == 100
    status, body = request(guarded.admin + "/decisions?pod=nobody/none", guarded.reader)
    assert status == 404, body  # let in; no such decision
    # Asked again within the cache's lifetime: the same answer.
    assert request(guarded.admin + "/snapshot", guarded.reader)[0] == 200


def test_a_valid_token_without_the_grant_gets_403(guarded):
    status, body = request(guarded.admin + "/snapshot", guarded.outsider)
    assert status == 403, body
    assert body["error"].startswith(
        f"user 'system:serviceaccount:{NAMESPACE}:outsider' may not get /snapshot"
    )
    # The reader may get /snapshot, but not post to it, nor get /dry-run.
    status, body = request(guarded.admin + "/snapshot", guarded.reader, b"{}")
    assert status == 403, body
    status, body = request(guarded.admin + "/dry-run", guarded.reader)
    assert status == 403, body


def test_garbage_or_no_token_gets_401(guarded):
    for token in ("garbage", guarded.reader[:-8] + "AAAAAAAA"):
        status, body = request(guarded.admin + "/snapshot", token)
        assert status == 401, body
        assert body["error"].startswith("token not accepted by the Kubernetes API: ")
    status, body = request(guarded.admin + "/snapshot")
    assert status == 401, body
    assert body["error"].startswith("authentication required: ")


def test_probes_and_metrics_stay_open(guarded):
    for path in ("/livez", "/readyz"):
        status, body = request(guarded.admin + path)
        assert status == 200, (path, body)
    status, text = http_get(guarded.admin + "/metrics")  # no token, as Prometheus scrapes
    assert status == 200
    assert b"priority_extender_build_info" in text
    log = guarded.proc.tail(100_000)
    assert "Traceback" not in log, log[-3000:]


def test_explain_sends_the_token_of_its_token_file(guarded, tmp_path):
    import subprocess
    import sys

    pod = tmp_path / "pod.yaml"
    pod.write_text(POD)
    args = [sys.executable, "-m", "extender", "explain", "--admin", guarded.admin,
            "--pod-file", str(pod), "--json"]  # fmt: skip
    for token, code in ((guarded.reader, 0), (guarded.outsider, 1)):
        (tmp_path / "token").write_text(token + "\n")
        res = subprocess.run(
            [*args, "--token-file", str(tmp_path / "token")],
            capture_output=True, text=True, timeout=60, check=False, cwd=assets.ROOT,
        )  # fmt: skip
        assert res.returncode == code, res.stderr
    assert res.stderr.startswith(f"error: {guarded.admin}/dry-run?top=5: HTTP 403: user "), (
        res.stderr
    )
    res = subprocess.run(
        args, capture_output=True, text=True, timeout=60, check=False, cwd=assets.ROOT
    )
    assert res.returncode == 1
    assert "HTTP 401: authentication required" in res.stderr


def test_a_dry_run_resolves_the_class_through_the_cluster(guarded, e2e):
    """The extender watches the session's PriorityClasses (--cluster-priority-classes): a
    manifest that names one and has no spec.priority is judged at its value."""
    name, (value, tier) = next(iter(kube.PRIORITY_CLASSES.items()))
    kube.wait_for(  # the classes' reflector lists them after start-up; readiness does not wait
        "the extender to list the PriorityClasses",
        lambda: "priorityClasses" in request(guarded.admin + "/snapshot", guarded.reader)[1],
        lambda: guarded.proc.tail(20),
        60,
    )
    status, snap = request(guarded.admin + "/snapshot", guarded.reader)
    assert snap["priorityClasses"][name] == {"value": value, "globalDefault": False}
    manifest = POD.replace("  priority: 100\n", f"  priorityClassName: {name}\n").encode()
    status, body = request(guarded.admin + "/dry-run", guarded.reader, manifest)
    assert status == 200, body
    assert (body["priority"], body["tier"], "warnings" in body) == (value, tier, False), body
