"""Command line: ``serve``, ``explain``, ``policy check``, ``policy schema``.

Every ``serve`` flag can also be set from an environment variable (``PRIORITY_EXTENDER_<FLAG>``),
which is how the Deployment in ``deploy/`` configures it; a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extender import __version__, logs, report
from extender.cluster import ClusterConfigError
from extender.cluster.settings import ClusterSettings
from extender.core import Candidates, evaluate, snapshot_from_dict, summarize
from extender.flags import ENV_PREFIX, ServeOptions, add_flags, resolve, serve_flags
from extender.policy import LoadedPolicy, PolicyDocument, PolicyError, embedded_default, load_file
from extender.policy.loader import load_last_good
from extender.policy.yamlpos import ManifestError, manifest_json
from extender.server.app import ServerSettings
from extender.server.run import serve
from extender.server.tls import TLSConfigError, TLSFiles
from extender.simulate import cli as simulate_cli
from extender.wire import WireError, decode_pod


def policy_schema() -> dict[str, object]:
    """The JSON schema of the policy document, as written to ``config/policy.schema.json``."""
    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "PriorityPolicy"
    return schema


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (every subcommand), for main() and for tests of its flags."""
    p = argparse.ArgumentParser(
        prog="priority-extender",
        description="A kube-scheduler extender that places pods by priority tier and live load.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "serve",
        help="run the extender (scheduler port and admin port)",
        description="Every option can also be set by the environment variable named in its "
        "help; an option on the command line wins.",
    )
    add_flags(s, serve_flags())
    s.add_argument("--tls-cert-file", help="serve HTTPS (env PRIORITY_EXTENDER_TLS_CERT_FILE)")
    s.add_argument("--tls-key-file", help="its key (env PRIORITY_EXTENDER_TLS_KEY_FILE)")
    s.add_argument(
        "--tls-client-ca-file",
        help="require client certificates signed by this CA, as kube-scheduler's tlsConfig "
        "sends (env PRIORITY_EXTENDER_TLS_CLIENT_CA_FILE)",
    )

    e = sub.add_parser(
        "explain",
        help="why a pod gets the nodes it gets: from a running extender or offline",
        description="Against a running extender (--admin) for a recent pod (--pod) or a dry run "
        "of a manifest (--pod-file); or offline from a snapshot file (GET /snapshot on the admin "
        "port) and a policy file.",
    )
    e.add_argument("--admin", help="admin URL of a running extender, e.g. http://127.0.0.1:8889")
    e.add_argument("--pod", help="namespace/name or UID of a recently scheduled pod")
    e.add_argument("--pod-file", help="a Pod manifest (YAML or JSON) to decide for")
    e.add_argument("--snapshot", help="snapshot file (offline)")
    e.add_argument("--policy", help="policy file (offline; default: the embedded policy)")
    e.add_argument("--nodes", help="comma-separated candidate nodes (default: all known)")
    e.add_argument("--top", default="5", help="nodes whose inputs are shown, or 'all'")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")

    pol = sub.add_parser("policy", help="policy tools")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser("check", help="validate policy files; exit 1 on any error")
    check.add_argument("files", nargs="+")
    psub.add_parser("schema", help="print the policy JSON schema")
    simulate_cli.add_parser(sub.add_parser)
    return p


def _check(files: Sequence[str]) -> int:
    failed = 0
    for name in files:
        try:
            loaded = load_file(name)
        except PolicyError as exc:
            failed += 1
            for line in exc.issues:
                print(line, file=sys.stderr)
            print(f"{name}: {len(exc.issues)} error(s)", file=sys.stderr)
            continue
        tiers = ", ".join(t.name for t in loaded.rules.tiers)
        print(f"{name}: ok (tiers: {tiers}; default: {loaded.rules.default_tier.name})")
    return 1 if failed else 0


def _tls(ns: argparse.Namespace) -> TLSFiles | None:
    def pick(flag: str) -> str | None:
        value: str | None = getattr(ns, flag) or os.environ.get(ENV_PREFIX + flag.upper())
        return value

    cert, key, ca = pick("tls_cert_file"), pick("tls_key_file"), pick("tls_client_ca_file")
    if not (cert or key or ca):
        return None
    if not (cert and key):
        raise SystemExit("error: --tls-cert-file and --tls-key-file go together")
    return TLSFiles(Path(cert), Path(key), Path(ca) if ca else None)


def _serve(ns: argparse.Namespace) -> int:
    values = resolve(ns, serve_flags())
    options = ServeOptions(**values["serve"])
    logs.setup(options.log_level, options.log_format)
    settings = ServerSettings(**values["server"], tls=_tls(ns))
    cluster = ClusterSettings(**values["cluster"])
    state_dir = Path(options.state_dir) if options.state_dir else None
    policy: LoadedPolicy
    try:
        policy = load_file(options.policy) if options.policy else embedded_default()
    except PolicyError as exc:
        fallback = _last_good(state_dir, options.policy, exc) if options.policy else None
        if fallback is None:
            for line in exc.issues:
                print(line, file=sys.stderr)
            return 1
        policy = fallback
    policy_path = Path(options.policy) if options.policy else None
    try:
        asyncio.run(serve(policy, settings, policy_path, state_dir, cluster))
    except (OSError, TLSConfigError, ClusterConfigError) as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _last_good(state_dir: Path | None, path: str, invalid: PolicyError) -> LoadedPolicy | None:
    """The last good copy of ``path`` kept in ``state_dir``, when the file itself is invalid at
    start-up, with every problem of the file logged as an error. None when there is nothing
    usable (said on stderr): the caller prints the file's problems and exits 1."""
    if state_dir is None:
        return None
    log = logging.getLogger("extender.cli")
    try:
        kept = load_last_good(state_dir, path)
    except PolicyError as exc:
        for line in exc.issues:
            print(line, file=sys.stderr)
        print(f"error: the last good policy in {state_dir} cannot be used either", file=sys.stderr)
        return None
    if kept is None:
        print(f"error: no last good copy of {path} in {state_dir}", file=sys.stderr)
        return None
    log.error(
        "policy file %s is invalid (%d problem(s)): starting from the last good policy kept in "
        "%s (sha256 %s); fix the file and it is picked up",
        path,
        len(invalid.issues),
        state_dir,
        kept.sha256[:12],
        extra={"issues": invalid.issues},
    )
    for issue in invalid.issues:
        log.error("policy: %s", issue)
    return kept


def _http(url: str, data: bytes | None = None) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise SystemExit(f"error: {url}: HTTP {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SystemExit(f"error: {url}: {exc}") from None


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: {path}: {exc.strerror or exc}") from None


def _explain(ns: argparse.Namespace) -> int:
    if ns.top != "all" and not ns.top.isdigit():
        raise SystemExit(f"error: --top {ns.top!r}: give a whole number or 'all'")
    top = None if ns.top == "all" else int(ns.top)
    query = {"top": ns.top}
    if ns.nodes:
        query["nodes"] = ns.nodes
    results: list[dict[str, Any]]
    if ns.admin:
        base = ns.admin.rstrip("/")
        if ns.pod_file:
            body = _read(ns.pod_file)
            results = [_http(f"{base}/dry-run?{urllib.parse.urlencode(query)}", body)]
        elif ns.pod:
            query["pod"] = ns.pod
            results = _http(f"{base}/decisions?{urllib.parse.urlencode(query)}")
        else:
            raise SystemExit("error: give --pod or --pod-file with --admin")
    elif ns.snapshot:
        if not ns.pod_file:
            raise SystemExit("error: offline explain needs --pod-file")
        results = [_offline(ns, top)]
    else:
        raise SystemExit("error: give --admin URL, or --snapshot FILE with --pod-file")
    if ns.json:
        print(json.dumps(results, indent=1))
    else:
        print("\n\n".join(report.render(r, r.get("verb")) for r in results))
    return 0


def _offline(ns: argparse.Namespace, top: int | None) -> dict[str, Any]:
    try:
        policy = load_file(ns.policy) if ns.policy else embedded_default()
    except PolicyError as exc:
        raise SystemExit("\n".join(exc.issues)) from None
    try:
        snap_doc = json.loads(Path(ns.snapshot).read_bytes())
        snap = snapshot_from_dict(snap_doc)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {ns.snapshot}: {exc}") from None
    try:
        pod = decode_pod(manifest_json(_read(ns.pod_file), ns.pod_file))
    except ManifestError as exc:
        raise SystemExit("\n".join(exc.issues)) from None
    except WireError as exc:
        raise SystemExit(f"error: {ns.pod_file}: not a Pod manifest: {exc}") from None
    names = [n for n in ns.nodes.split(",") if n] if ns.nodes else list(snap.names)
    at = snap_doc.get("takenAt") or snap.built_at
    evaluation = evaluate(pod, Candidates(names), snap, policy.rules, float(at))
    return summarize(evaluation, top)


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "serve":
        return _serve(ns)
    if ns.command == "explain":
        return _explain(ns)
    if ns.command == "simulate":
        return simulate_cli.run(ns)
    if ns.policy_command == "check":
        return _check(ns.files)
    print(json.dumps(policy_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
