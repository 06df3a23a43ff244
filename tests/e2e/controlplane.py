"""A loopback Kubernetes control plane for tests: etcd, kube-apiserver (RBAC) and kube-scheduler.

:class:`ControlPlane` makes a CA, serving certificates, a service-account key pair and an admin
client certificate (``O=system:masters``) with ``openssl`` in its folder, starts etcd and
kube-apiserver on free loopback ports, writes an admin kubeconfig, and runs kube-scheduler with a
``KubeSchedulerConfiguration`` given as a dict; :meth:`ControlPlane.ensure_scheduler` restarts
only kube-scheduler when a test needs another configuration. :meth:`scheduler_metrics` reads
kube-scheduler's own ``/metrics`` with the admin certificate.

There is no kubelet, controller-manager or container runtime (see ../shared/kube/README.md):
:mod:`tests.e2e.kube` stands in for the kubelet.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e import assets
from tests.e2e.procs import Proc, StartError, free_port, http_get, https_context

ETCD_READY_S = 30.0
"""etcd answers /health in about a second; the bound only catches a broken start."""
APISERVER_READY_S = 90.0
"""kube-apiserver is ready in about 5 s on an idle 2-core machine (../shared/kube/README.md);
other agents share the cores, so the deadline is generous."""
SCHEDULER_READY_S = 60.0
"""kube-scheduler serves /healthz within a couple of seconds of its informers syncing."""
START_ATTEMPTS = 3
"""A free port picked by bind-and-close can be taken by another process before ours binds it;
start-up is retried with fresh ports this many times."""
CERT_DAYS = 2
"""The certificates live one test session; two days cover any clock skew."""
ROOT = assets.ROOT
SHIPPED_SCHEDULER_CONFIG = ROOT / "config" / "scheduler-config.yaml"


@dataclass(frozen=True, slots=True)
class Pki:
    """Files made by :func:`make_pki`."""

    folder: Path
    ca_crt: Path
    ca_key: Path
    apiserver_crt: Path
    apiserver_key: Path
    admin_crt: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run([assets.OPENSSL, *args], cwd=folder, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256: fast to make, accepted by Go and Python alike)."""
    crt, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        folder,
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(crt), "-days", str(CERT_DAYS),
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    return crt, key


def make_cert(
    folder: Path,
    name: str,
    ca: tuple[Path, Path],
    subject: str,
    *,
    server: bool = False,
    client: bool = False,
) -> tuple[Path, Path]:
    """A certificate signed by ``ca``: a serving one for 127.0.0.1/localhost and/or a client one."""
    crt, key, csr, ext = (folder / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
    usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
    lines = [
        "basicConstraints=CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={','.join(usages)}",
    ]
    if server:
        lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        folder,
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", subject,
    )  # fmt: skip
    _openssl(
        folder,
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(crt), "-days", str(CERT_DAYS), "-extfile", str(ext),
    )  # fmt: skip
    return crt, key


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder, "ca")
    apiserver = make_cert(folder, "apiserver", ca, "/CN=kube-apiserver", server=True)
    admin = make_cert(folder, "admin", ca, "/O=system:masters/CN=e2e-admin", client=True)
    sa_key, sa_pub = folder / "sa.key", folder / "sa.pub"
    _openssl(folder, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(sa_key))  # fmt: skip
    _openssl(folder, "pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))
    return Pki(folder, *ca, *apiserver, *admin, sa_key, sa_pub)


def shipped_extender_stanza(url_prefix: str, **overrides: Any) -> dict[str, Any]:
    """The extender entry of config/scheduler-config.yaml (names only, weight 5, preemptVerb,
    httpTimeout) with ``urlPrefix`` pointed at a test port and ``overrides`` applied."""
    shipped = yaml.safe_load(SHIPPED_SCHEDULER_CONFIG.read_text())
    stanza: dict[str, Any] = dict(shipped["extenders"][0])
    stanza["urlPrefix"] = url_prefix
    stanza.update(overrides)
    return stanza


def scheduler_config(kubeconfig: Path, extenders: list[dict[str, Any]]) -> dict[str, Any]:
    """A KubeSchedulerConfiguration for the test cluster: the default profile, no leader election,
    the admin kubeconfig, and ``extenders`` (empty for the stock scheduler)."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        # qps/burst above the defaults (50/100) so a burst of pods is bound, not throttled.
        "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 500, "burst": 1000},
        "leaderElection": {"leaderElect": False},
        "profiles": [{"schedulerName": "default-scheduler"}],
        "extenders": extenders,
    }


@dataclass
class SchedulerMetrics:
    """What kube-scheduler's /metrics says about its attempts."""

    attempts: dict[str, float]
    """``scheduler_schedule_attempts_total`` by ``result`` (scheduled, unschedulable, error)."""
    duration_count: float
    duration_sum: float
    duration_buckets: list[tuple[float, float]]
    """``scheduler_scheduling_attempt_duration_seconds`` summed over labels: (le, cumulative)."""


def parse_scheduler_metrics(text: str) -> SchedulerMetrics:
    attempts: dict[str, float] = {}
    count = total = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "scheduler_schedule_attempts":
            for s in family.samples:
                if s.name.endswith("_total"):
                    result = s.labels.get("result", "")
                    attempts[result] = attempts.get(result, 0.0) + s.value
        elif family.name == "scheduler_scheduling_attempt_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_count"):
                    count += s.value
                elif s.name.endswith("_sum"):
                    total += s.value
                elif s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
    return SchedulerMetrics(attempts, count, total, sorted(buckets.items()))


class ControlPlane:
    """etcd + kube-apiserver (+ kube-scheduler on demand) in ``folder``; see the module doc."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(folder / "pki")
        self.etcd: Proc | None = None
        self.apiserver: Proc | None = None
        self.scheduler: Proc | None = None
        self.scheduler_cfg: dict[str, Any] | None = None
        self.scheduler_port = 0
        self.etcd_url = ""
        self.url = ""
        self.kubeconfig = folder / "admin.kubeconfig"
        self._scheduler_starts = 0

    # --- start and stop ---------------------------------------------------------------------

    def start(self) -> ControlPlane:
        try:
            self._start_etcd()
            self._start_apiserver()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_etcd(self) -> None:
        for attempt in range(START_ATTEMPTS):
            client, peer = free_port(), free_port()
            self.etcd_url = f"http://127.0.0.1:{client}"
            data = self.folder / f"etcd-data-{attempt}"
            self.etcd = Proc(
                "etcd",
                [
                    str(assets.binary("etcd")),
                    "--name=e2e",
                    f"--data-dir={data}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-cluster=e2e=http://127.0.0.1:{peer}",
                    "--unsafe-no-fsync",  # test data: durability buys nothing, fsyncs cost
                    "--log-level=warn",
                ],
                self.folder / "etcd.log",
            ).start()
            try:
                self.etcd.wait_ready(
                    "healthy",
                    lambda: b'"true"' in http_get(self.etcd_url + "/health", timeout=2)[1],
                    ETCD_READY_S,
                )
                return
            except StartError:
                self.etcd.stop()
                if attempt == START_ATTEMPTS - 1:
                    raise

    def _start_apiserver(self) -> None:
        p = self.pki
        for attempt in range(START_ATTEMPTS):
            port = free_port()
            self.url = f"https://127.0.0.1:{port}"
            self.apiserver = Proc(
                "kube-apiserver",
                [
                    str(assets.binary("kube-apiserver")),
                    f"--etcd-servers={self.etcd_url}",
                    f"--secure-port={port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    "--authorization-mode=RBAC",
                    f"--client-ca-file={p.ca_crt}",
                    f"--tls-cert-file={p.apiserver_crt}",
                    f"--tls-private-key-file={p.apiserver_key}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    f"--service-account-key-file={p.sa_pub}",
                    f"--service-account-signing-key-file={p.sa_key}",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--disable-admission-plugins=ServiceAccount",
                    "--feature-gates=SidecarContainers=true",
                    f"--cert-dir={self.folder / 'apiserver-certs'}",
                    "--v=1",
                ],
                self.folder / "kube-apiserver.log",
            ).start()
            try:
                self.apiserver.wait_ready(
                    "ready",
                    self._apiserver_ready,
                    APISERVER_READY_S,
                )
                break
            except StartError:
                self.apiserver.stop()
                if attempt == START_ATTEMPTS - 1:
                    raise
        self.kubeconfig.write_text(yaml.safe_dump(self.kubeconfig_dict()))

    def _apiserver_ready(self) -> bool:
        p = self.pki
        ctx = https_context(p.ca_crt, p.admin_crt, p.admin_key)
        return http_get(self.url + "/readyz", context=ctx, timeout=3)[0] == 200

    def kubeconfig_dict(self, user: str = "admin") -> dict[str, Any]:
        p = self.pki
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {"server": self.url, "certificate-authority": str(p.ca_crt)},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(p.admin_crt),
                        "client-key": str(p.admin_key),
                    },
                }
            ],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
            "current-context": "e2e",
        }

    def stop(self) -> None:
        for proc in (self.scheduler, self.apiserver, self.etcd):
            if proc is not None:
                proc.stop()

    # --- kube-scheduler ---------------------------------------------------------------------

    def start_scheduler(self, cfg: dict[str, Any]) -> Proc:
        """(Re)start kube-scheduler with ``cfg``; returns once it serves /healthz."""
        self.stop_scheduler()
        for attempt in range(START_ATTEMPTS):
            self._scheduler_starts += 1
            n = self._scheduler_starts
            path = self.folder / f"scheduler-config-{n}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            self.scheduler_port = free_port()
            self.scheduler = Proc(
                "kube-scheduler",
                [
                    str(assets.binary("kube-scheduler")),
                    f"--config={path}",
                    f"--secure-port={self.scheduler_port}",
                    "--bind-address=127.0.0.1",
                    # Delegated authn/authz for /metrics: the admin certificate is authorised.
                    f"--authentication-kubeconfig={self.kubeconfig}",
                    f"--authorization-kubeconfig={self.kubeconfig}",
                    f"--client-ca-file={self.pki.ca_crt}",
                    f"--cert-dir={self.folder / 'scheduler-certs'}",
                    "--v=2",
                ],
                self.folder / "kube-scheduler.log",
            ).start()
            try:
                self.scheduler.wait_ready(
                    "healthy",
                    lambda: (
                        http_get(
                            f"https://127.0.0.1:{self.scheduler_port}/healthz",
                            context=https_context(),
                            timeout=3,
                        )[0]
                        == 200
                    ),
                    SCHEDULER_READY_S,
                )
                break
            except StartError:
                self.scheduler.stop()
                if attempt == START_ATTEMPTS - 1:
                    raise
        self.scheduler_cfg = cfg
        return self.scheduler

    def stop_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self.scheduler = None
        self.scheduler_cfg = None

    def ensure_scheduler(self, cfg: dict[str, Any]) -> Proc:
        """kube-scheduler running with ``cfg``: restarted only if it runs another one (or died)."""
        if self.scheduler is not None and self.scheduler.alive() and self.scheduler_cfg == cfg:
            return self.scheduler
        return self.start_scheduler(cfg)

    def scheduler_metrics(self) -> SchedulerMetrics:
        status, body = http_get(
            f"https://127.0.0.1:{self.scheduler_port}/metrics",
            context=https_context(None, self.pki.admin_crt, self.pki.admin_key),
        )
        if status != 200:
            raise AssertionError(f"kube-scheduler /metrics: HTTP {status}: {body[:300]!r}")
        return parse_scheduler_metrics(body.decode())

    # --- etcd -------------------------------------------------------------------------------

    def etcd_post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A call to etcd's v3 JSON gateway (e.g. ``/v3/kv/compaction``), no etcdctl needed."""
        req = urllib.request.Request(
            self.etcd_url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result


@contextlib.contextmanager
def running_control_plane(folder: Path) -> Iterator[ControlPlane]:
    """etcd and kube-apiserver started, everything stopped on exit (errors included)."""
    plane = ControlPlane(folder)
    try:
        yield plane.start()
    finally:
        plane.stop()
