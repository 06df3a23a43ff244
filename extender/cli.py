"""Command line: ``serve``, ``explain``, ``policy check``, ``policy schema``.

Every ``serve`` flag can also be set from an environment variable (``PRIORITY_EXTENDER_<FLAG>``),
which is how the Deployment in ``deploy/`` configures it; a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extender import __version__

if TYPE_CHECKING:
    import asyncio

    from extender.policy import LoadedPolicy, PolicyError
    from extender.server.app import ServerSettings
    from extender.server.tls import TLSFiles

# Each command imports what it needs when it runs, so that ``--version`` and ``policy check``
# never load the server (aiohttp), the cluster client (kubernetes) or the simulator: those cost
# about a second and a half of start-up between them. The parser is built the same way (see
# build_parser): only the chosen command's full flags, the others as one-line stubs.

#: The subcommands and their one-line help, as ``priority-extender --help`` lists them. The
#: stubs that stand in for the commands not being run carry the same line
#: (tests/test_cli_imports.py checks the listing is the same either way).
COMMANDS: dict[str, str] = {
    "serve": "run the extender (scheduler port and admin port)",
    "explain": "why a pod gets the nodes it gets: from a running extender or offline",
    "policy": "policy tools",
    "simulate": "replay a workload against a cluster model and compare policies",
}


def policy_schema() -> dict[str, object]:
    """The JSON schema of the policy document, as written to ``config/policy.schema.json``."""
    from extender.policy import PolicyDocument

    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "PriorityPolicy"
    return schema


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` runs: its first word that is not an option (the top level has
    only ``--help`` and ``--version``, which take no value). None when there is none."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line, for main() and for tests of its flags.

    ``only`` None: every subcommand in full. Otherwise only that one in full (``""``: none) and
    the others as stubs with the same help line, so that building it imports only what that
    command needs (``serve``'s flags come from the server's settings, ``simulate``'s parser from
    the simulator)."""
    p = argparse.ArgumentParser(
        prog="priority-extender",
        description="A kube-scheduler extender that places pods by priority tier and live load.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, helpline in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=helpline)
        elif name == "serve":
            _serve_parser(sub.add_parser(name, help=helpline, description=SERVE_DESCRIPTION))
        elif name == "explain":
            _explain_parser(sub.add_parser(name, help=helpline, description=EXPLAIN_DESCRIPTION))
        elif name == "policy":
            pol = sub.add_parser(name, help=helpline)
            psub = pol.add_subparsers(dest="policy_command", required=True)
            check = psub.add_parser("check", help="validate policy files; exit 1 on any error")
            check.add_argument("files", nargs="+")
            psub.add_parser("schema", help="print the policy JSON schema")
        else:
            from extender.simulate import cli as simulate_cli

            simulate_cli.add_parser(sub.add_parser)
    return p


SERVE_DESCRIPTION = (
    "Every option can also be set by the environment variable named in its help; an option on "
    "the command line wins."
)
EXPLAIN_DESCRIPTION = (
    "Against a running extender (--admin) for a recent pod (--pod) or a dry run of a manifest "
    "(--pod-file); or offline from a snapshot file (GET /snapshot on the admin port) and a "
    "policy file."
)


def _serve_parser(s: argparse.ArgumentParser) -> None:
    from extender.flags import add_flags, serve_flags

    add_flags(s, serve_flags())
    s.add_argument("--tls-cert-file", help="serve HTTPS (env PRIORITY_EXTENDER_TLS_CERT_FILE)")
    s.add_argument("--tls-key-file", help="its key (env PRIORITY_EXTENDER_TLS_KEY_FILE)")
    s.add_argument(
        "--tls-client-ca-file",
        help="require client certificates signed by this CA, as kube-scheduler's tlsConfig "
        "sends (env PRIORITY_EXTENDER_TLS_CLIENT_CA_FILE)",
    )


def _explain_parser(e: argparse.ArgumentParser) -> None:
    e.add_argument("--admin", help="admin URL of a running extender, e.g. http://127.0.0.1:8889")
    e.add_argument("--pod", help="namespace/name or UID of a recently scheduled pod")
    e.add_argument("--pod-file", help="a Pod manifest (YAML or JSON) to decide for")
    e.add_argument("--snapshot", help="snapshot file (offline)")
    e.add_argument("--policy", help="policy file (offline; default: the embedded policy)")
    e.add_argument("--nodes", help="comma-separated candidate nodes (default: all known)")
    e.add_argument("--top", default="5", help="nodes whose inputs are shown, or 'all'")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument(
        "--token-file",
        help="send the bearer token in this file to --admin (an extender serving with "
        "--admin-auth kubernetes), e.g. from kubectl create token NAME",
    )


def _check(files: Sequence[str]) -> int:
    from extender.policy import PolicyError, load_file
    from extender.policy.loader import missing_files

    failed = 0
    for name in files:
        try:
            loaded = load_file(name)
            issues = missing_files(loaded)  # what `serve` would refuse to start on
        except PolicyError as exc:
            issues = exc.issues
        if issues:
            failed += 1
            for line in issues:
                print(line, file=sys.stderr)
            print(f"{name}: {len(issues)} error(s)", file=sys.stderr)
            continue
        tiers = ", ".join(t.name for t in loaded.rules.tiers)
        print(f"{name}: ok (tiers: {tiers}; default: {loaded.rules.default_tier.name})")
    return 1 if failed else 0


def _tls(ns: argparse.Namespace) -> TLSFiles | None:
    from extender.flags import ENV_PREFIX
    from extender.server.tls import TLSFiles

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
    import asyncio

    from extender import logs
    from extender.cluster import ClusterConfigError
    from extender.cluster.settings import ClusterSettings
    from extender.flags import ServeOptions, resolve, serve_flags
    from extender.policy import PolicyError, embedded_default, load_file
    from extender.policy.loader import missing_files
    from extender.server.app import ServerSettings, SettingsError
    from extender.server.run import serve
    from extender.server.tls import TLSConfigError

    values = resolve(ns, serve_flags())
    options = ServeOptions(**values["serve"])
    logs.setup(options.log_level, options.log_format)
    try:
        settings = ServerSettings(**values["server"], tls=_tls(ns))
    except SettingsError as exc:
        raise SystemExit(f"error: {exc}") from None
    cluster = ClusterSettings(**values["cluster"])
    state_dir = Path(options.state_dir) if options.state_dir else None
    policy: LoadedPolicy
    try:
        policy = load_file(options.policy) if options.policy else embedded_default()
    except PolicyError as exc:
        fallback = _last_good(state_dir, options.policy, exc) if options.policy else None
        if fallback is None:
            _policy_problems(options.policy or "", exc)
            return 1
        policy = fallback
    missing = missing_files(policy)  # policy check reports the same
    if missing:
        for line in missing:
            print(line, file=sys.stderr)
        print("error: cannot start: a file the policy names is missing", file=sys.stderr)
        return 1
    policy_path = Path(options.policy) if options.policy else None
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(options.event_loop)) as runner:
            runner.run(serve(policy, settings, policy_path, state_dir, cluster))
    except (OSError, TLSConfigError, ClusterConfigError, SettingsError) as exc:
        print(f"error: cannot start: {_start_problem(exc, settings)}", file=sys.stderr)
        return 1
    return 0


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``serve`` runs on: uvloop (``auto`` where it imports), or asyncio's own
    (None: the default). ``uvloop`` asked for and not installed is one ``error:`` line."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                "error: --event-loop uvloop: uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _start_problem(exc: BaseException, settings: ServerSettings) -> str:
    """What stopped start-up, in words; for a port in use, which flag and variable move it."""
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        text = str(exc)
        ports = [("port", settings.host, settings.port)]
        ports.append(("admin-port", settings.admin_host, settings.admin_port))
        for flag, host, port in ports:
            if f"'{host}', {port})" in text:
                variable = "PRIORITY_EXTENDER_" + flag.replace("-", "_").upper()
                return (
                    f"{host}:{port} is already in use: choose another with --{flag} "
                    f"(or {variable}), or stop what listens there"
                )
    return str(exc)


def _policy_problems(path: str, exc: PolicyError) -> None:
    """Why ``serve`` cannot start on the policy file ``path``, on stderr: one ``error:`` line
    for a file that cannot be read at all; otherwise every problem with its place
    (``file:line:col``), then one ``error:`` line."""
    marker = f"{path}:0:0: (file): "
    if len(exc.issues) == 1 and exc.issues[0].startswith(marker):
        print(f"error: {path}: {exc.issues[0].removeprefix(marker)}", file=sys.stderr)
        return
    for line in exc.issues:
        print(line, file=sys.stderr)
    print(f"error: cannot start: {path}: {len(exc.issues)} error(s)", file=sys.stderr)


def _last_good(state_dir: Path | None, path: str, invalid: PolicyError) -> LoadedPolicy | None:
    """The last good copy of ``path`` kept in ``state_dir``, when the file itself is invalid at
    start-up, with every problem of the file logged as an error. None when there is nothing
    usable (said on stderr): the caller prints the file's problems and exits 1."""
    import logging

    from extender.policy import PolicyError
    from extender.policy.loader import load_last_good

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


def _http(url: str, data: bytes | None = None, token: str | None = None) -> Any:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
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


def _manifest(path: str) -> tuple[bytes, dict[str, Any]]:
    """The Pod manifest at ``path`` as JSON bytes and as data; SystemExit with the file's own
    ``file:line:col`` problems, or one ``error:`` line when it is no Pod (``kind`` given and not
    ``Pod``, or no mapping at all): a Deployment's spec would otherwise be judged as a pod's."""
    from extender.policy.yamlpos import ManifestError, manifest_json

    try:
        body = manifest_json(_read(path), path)
    except ManifestError as exc:
        raise SystemExit("\n".join(exc.issues)) from None
    data = json.loads(body)
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path}: not a Pod manifest: expected a mapping (kind: Pod)")
    kind = data.get("kind", "Pod")
    if kind != "Pod":
        hint = " (give the pod template as a Pod)" if isinstance(kind, str) else ""
        raise SystemExit(f"error: {path}: not a Pod manifest: kind is {kind!r}{hint}")
    return body, data


def _unresolved_priority(manifest: dict[str, Any]) -> str | None:
    """The PriorityClass name a manifest leaves to admission to resolve: it names one (or none,
    for the cluster's globalDefault) and has no ``spec.priority``. None when it sets
    ``spec.priority`` itself, as a pod read back from the API always does."""
    spec = manifest.get("spec")
    if not isinstance(spec, dict) or spec.get("priority") is not None:
        return None
    name = spec.get("priorityClassName")
    return name if isinstance(name, str) else ""


def _priority_warning(class_name: str, judged: int) -> str:
    if class_name:
        return (
            f"spec.priority is not set and PriorityClass {class_name!r} was not resolved here: "
            f"judged as priority {judged}; set spec.priority to its value "
            f"(kubectl get priorityclass {class_name}) for a true answer"
        )
    return (
        f"spec.priority is not set: judged as priority {judged}; in the cluster the "
        "globalDefault PriorityClass, if there is one, would set it"
    )


def _explain(ns: argparse.Namespace) -> int:
    import urllib.parse

    from extender import report

    if ns.top != "all" and not ns.top.isdigit():
        raise SystemExit(f"error: --top {ns.top!r}: give a whole number or 'all'")
    top = None if ns.top == "all" else int(ns.top)
    query = {"top": ns.top}
    if ns.nodes:
        query["nodes"] = ns.nodes
    results: list[dict[str, Any]]
    if ns.admin:
        base = ns.admin.rstrip("/")
        token = _read(ns.token_file).decode(errors="replace").strip() if ns.token_file else None
        if ns.pod_file:
            body, manifest = _manifest(ns.pod_file)
            result = _http(f"{base}/dry-run?{urllib.parse.urlencode(query)}", body, token)
            unresolved = _unresolved_priority(manifest)
            if unresolved is not None and isinstance(result, dict):
                # The extender judged the manifest's spec as it came; it says nothing of a
                # PriorityClass it did not resolve, so say it here.
                judged = result.get("priority")
                if judged == 0 and not result.get("warnings"):
                    result["warnings"] = [_priority_warning(unresolved, 0)]
            results = [result]
        elif ns.pod:
            query["pod"] = ns.pod
            results = _http(f"{base}/decisions?{urllib.parse.urlencode(query)}", token=token)
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
    import dataclasses

    from extender.core import Candidates, evaluate, snapshot_from_dict, summarize
    from extender.policy import PolicyError, embedded_default, load_file
    from extender.wire import WireError, decode_pod

    try:
        policy = load_file(ns.policy) if ns.policy else embedded_default()
    except PolicyError as exc:
        raise SystemExit("\n".join(exc.issues)) from None
    try:
        snap_doc = json.loads(Path(ns.snapshot).read_bytes())
        snap = snapshot_from_dict(snap_doc)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {ns.snapshot}: {exc}") from None
    body, manifest = _manifest(ns.pod_file)
    try:
        pod = decode_pod(body)
    except WireError as exc:
        raise SystemExit(f"error: {ns.pod_file}: not a Pod manifest: {exc}") from None
    warnings: list[str] = []
    unresolved = _unresolved_priority(manifest)
    if unresolved is not None:
        resolved = _priority_class(snap_doc, unresolved, ns.snapshot)
        if resolved is None:
            warnings.append(_priority_warning(unresolved, pod.priority))
        else:
            name, value = resolved
            pod = dataclasses.replace(pod, priority=value, priority_class_name=name)
    names = [n for n in ns.nodes.split(",") if n] if ns.nodes else list(snap.names)
    at = snap_doc.get("takenAt") or snap.built_at
    evaluation = evaluate(pod, Candidates(names), snap, policy.rules, float(at))
    summary = summarize(evaluation, top)
    if warnings:
        summary["warnings"] = warnings
    return summary


def _priority_class(snap_doc: Any, name: str, where: str) -> tuple[str, int] | None:
    """(name, value) of the PriorityClass ``name`` in the snapshot's ``priorityClasses``
    (name to ``{"value": int, "globalDefault": bool}``, as the API's PriorityClass has them),
    or of its globalDefault one when ``name`` is "" (priority 0 when there is none, as admission
    does); None when the snapshot has no such class, or carries no PriorityClasses at all."""
    classes = snap_doc.get("priorityClasses") if isinstance(snap_doc, dict) else None
    if not isinstance(classes, dict):
        return None
    for cls_name, cls in classes.items():
        if not isinstance(cls, dict):
            raise SystemExit(f"error: {where}: priorityClasses.{cls_name}: expected a mapping")
        wanted = cls_name == name if name else cls.get("globalDefault") is True
        if not wanted:
            continue
        value = cls.get("value")
        if isinstance(value, bool) or not isinstance(value, int):
            raise SystemExit(
                f"error: {where}: priorityClasses.{cls_name}.value: expected a whole number"
            )
        return str(cls_name), value
    if not name:
        return "", 0  # no globalDefault among the cluster's classes: admission sets 0 too
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    ns = build_parser(command_of(args) or "").parse_args(args)
    if ns.command == "serve":
        return _serve(ns)
    if ns.command == "explain":
        return _explain(ns)
    if ns.command == "simulate":
        from extender.simulate import cli as simulate_cli

        return simulate_cli.run(ns)
    if ns.policy_command == "check":
        return _check(ns.files)
    print(json.dumps(policy_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
