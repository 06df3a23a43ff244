"""Command line: ``serve``, ``policy check``, ``policy schema``.

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
from collections.abc import Sequence

from extender import __version__
from extender.policy import LoadedPolicy, PolicyDocument, PolicyError, embedded_default, load_file
from extender.server.app import DEFAULT_MAX_REQUEST_BYTES, ServerSettings
from extender.server.run import serve

ENV_PREFIX = "PRIORITY_EXTENDER_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"error: {ENV_PREFIX}{name}={raw!r} is not a whole number") from None


def policy_schema() -> dict[str, object]:
    """The JSON schema of the policy document, as written to ``config/policy.schema.json``."""
    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "PriorityPolicy"
    return schema


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="priority-extender",
        description="A kube-scheduler extender that places pods by priority tier and live load.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the extender (scheduler port and admin port)")
    s.add_argument(
        "--policy",
        default=_env("POLICY"),
        help="policy YAML file (env PRIORITY_EXTENDER_POLICY); default: the embedded policy, "
        "which reads the static demo metrics shipped with the package",
    )
    s.add_argument("--host", default=_env("HOST", "0.0.0.0"), help="scheduler port address")
    s.add_argument("--port", type=int, default=_env_int("PORT", 8888), help="scheduler port")
    s.add_argument("--admin-host", default=_env("ADMIN_HOST", "0.0.0.0"))
    s.add_argument(
        "--admin-port",
        type=int,
        default=_env_int("ADMIN_PORT", 8889),
        help="probes and /metrics",
    )
    s.add_argument(
        "--url-prefix",
        default=_env("URL_PREFIX", ""),
        help="path before the verbs, e.g. /scheduler",
    )
    s.add_argument(
        "--max-request-bytes",
        type=int,
        default=_env_int("MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES),
        help="largest request body accepted (full-node requests are ~15 KB per node)",
    )
    s.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )

    pol = sub.add_parser("policy", help="policy tools")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser("check", help="validate policy files; exit 1 on any error")
    check.add_argument("files", nargs="+")
    psub.add_parser("schema", help="print the policy JSON schema")
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


def _serve(ns: argparse.Namespace) -> int:
    logging.basicConfig(
        level=ns.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    policy: LoadedPolicy
    try:
        policy = load_file(ns.policy) if ns.policy else embedded_default()
    except PolicyError as exc:
        for line in exc.issues:
            print(line, file=sys.stderr)
        return 1
    settings = ServerSettings(
        host=ns.host,
        port=ns.port,
        admin_host=ns.admin_host,
        admin_port=ns.admin_port,
        url_prefix=ns.url_prefix,
        max_request_bytes=ns.max_request_bytes,
    )
    try:
        asyncio.run(serve(policy, settings))
    except OSError as exc:
        print(f"error: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    if ns.command == "serve":
        return _serve(ns)
    if ns.policy_command == "check":
        return _check(ns.files)
    print(json.dumps(policy_schema(), indent=2))
    return 0
