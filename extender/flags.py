"""``serve``'s flags and ``PRIORITY_EXTENDER_*`` variables, generated from the settings tree.

The settings are typed dataclasses whose fields carry their defaults and, in the docstring below
each field, why (:class:`ServeOptions` here, :class:`~extender.server.app.ServerSettings`,
:class:`~extender.cluster.settings.ClusterSettings`). Each field becomes one flag and one
environment variable, with the default and the variable in its help, so the three can never
disagree:

* ``server`` fields: ``--port`` and ``PRIORITY_EXTENDER_PORT``;
* ``cluster`` fields: ``--cluster-page-size`` and ``PRIORITY_EXTENDER_CLUSTER_PAGE_SIZE``;
* the options of the command itself (policy, logging, state): ``--policy`` and so on.

A flag on the command line wins over the variable, the variable over the default. Variables are
read only when ``serve`` runs, so a bad one never breaks another command; a value that does not
parse is one ``error:`` line naming the variable or flag.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import os
import textwrap
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from extender.cluster.settings import ClusterSettings
from extender.server.app import ServerSettings

ENV_PREFIX = "PRIORITY_EXTENDER_"

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "text"]
EventLoop = Literal["auto", "uvloop", "asyncio"]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``serve`` itself needs besides the server and cluster settings."""

    policy: str | None = None
    """Policy YAML file. None: the embedded policy, which reads the static demo metrics shipped
    with the package (no cluster, no Prometheus)."""
    log_level: LogLevel = "info"
    """Least severe log level written."""
    log_format: LogFormat = "auto"
    """auto: text on a terminal, JSON lines otherwise (a Deployment's logs)."""
    event_loop: EventLoop = "auto"
    """auto: uvloop where it is installed (it is a dependency on Linux and macOS), asyncio's
    own loop otherwise. uvloop takes about a fifth off the CPU of each scheduling call; asyncio
    is the fallback if a problem is ever traced to it."""
    state_dir: str | None = None
    """Keep the last policy that loaded here, and start from it when the policy file is invalid
    at start-up. The Deployment mounts an emptyDir at /var/lib/priority-extender, which survives
    container restarts. None: an invalid policy file at start-up exits 1."""


#: Fields left out of the generated flags, with why: ``tls`` is three files with their own flags
#: (``--tls-cert-file`` ...); ``reload_interval`` is a test seam (the safety-net check period);
#: ``admin_cluster`` is what start-up hands the admin port from the cluster source.
SKIPPED = frozenset({"server.tls", "server.reload_interval", "server.admin_cluster"})

#: Defaults of ``serve`` that differ from the dataclass's. ``ServerSettings.kubernetes`` is
#: ``off`` so that embedding and tests never reach a cluster by accident; the command defaults
#: to ``auto``: in a pod or with a kubeconfig, the cache is what the extender is for.
SERVE_DEFAULTS: Mapping[str, Any] = {"server.kubernetes": "auto"}

#: Whole-number fields that are ports: the OS takes 0 (pick one) to 65535.
PORT_FIELDS = frozenset({"server.port", "server.admin_port"})


@dataclass(frozen=True, slots=True)
class Flag:
    """One setting on the command line."""

    dest: str
    """``group.field``: where the value goes."""
    option: str
    env: str
    kind: type
    """int, float, str or bool (the annotation without None)."""
    optional: bool
    """None is a valid value (the field's default, usually)."""
    choices: tuple[str, ...] | None
    default: Any
    help: str

    def parse(self, text: str, where: str) -> Any:
        """``text`` as this flag's type; SystemExit with one ``error:`` line if it is not."""
        try:
            if self.kind is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            value = self.kind(text)
        except ValueError:
            noun = {int: "a whole number", float: "a number", bool: "true or false"}.get(
                self.kind, "text"
            )
            raise SystemExit(f"error: {where}={text!r} is not {noun}") from None
        if self.choices is not None and value not in self.choices:
            raise SystemExit(f"error: {where}={text!r} is not one of: {', '.join(self.choices)}")
        if self.dest in PORT_FIELDS and not 0 <= value <= 65535:
            raise SystemExit(f"error: {where}={text!r} is not a port (0 to 65535)")
        if self.kind in (int, float) and self.dest not in PORT_FIELDS and value < 0:
            raise SystemExit(f"error: {where}={text!r} must not be negative")
        return value


def _docstrings(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (the project's convention), from source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            out[node.target.id] = " ".join(after.value.value.split())
    return out


def _kind(annotation: Any) -> tuple[type, bool, tuple[str, ...] | None]:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str, False, tuple(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        kind, _, choices = _kind(args[0])
        return kind, True, choices
    if annotation in (int, float, str, bool):
        return annotation, False, None
    raise TypeError(f"no flag for a field of type {annotation!r}")


def _flags(cls: type, group: str, prefix: str, env_prefix: str) -> list[Flag]:
    hints = typing.get_type_hints(cls)
    docs = _docstrings(cls)
    out = []
    for f in dataclasses.fields(cls):
        dest = f"{group}.{f.name}"
        if dest in SKIPPED:
            continue
        kind, optional, choices = _kind(hints[f.name])
        default = SERVE_DEFAULTS.get(dest, f.default)
        name = f.name.replace("_", "-")
        out.append(
            Flag(
                dest=dest,
                option=f"--{prefix}{name}",
                env=f"{ENV_PREFIX}{env_prefix}{f.name.upper()}",
                kind=kind,
                optional=optional,
                choices=choices,
                default=default,
                help=docs.get(f.name, ""),
            )
        )
    return out


def serve_flags() -> list[Flag]:
    """Every flag of ``serve``, in help order: the command's own, the server's, the cache's."""
    return [
        *_flags(ServeOptions, "serve", "", ""),
        *_flags(ServerSettings, "server", "", ""),
        *_flags(ClusterSettings, "cluster", "cluster-", "CLUSTER_"),
    ]


_UNSET = object()
_METAVARS: Mapping[type, str] = {int: "N", float: "SECONDS", str: "TEXT", bool: "BOOL"}


def add_flags(parser: argparse.ArgumentParser, flags: list[Flag]) -> None:
    """One option per flag; its value stays unset unless given (resolved by :func:`resolve`)."""
    groups: dict[str, Any] = {}  # argparse's argument groups
    titles = {
        "serve": "the command",
        "server": "scheduler and admin ports",
        "cluster": "Kubernetes API cache",
    }
    for flag in flags:
        group = flag.dest.split(".")[0]
        if group not in groups:
            groups[group] = parser.add_argument_group(titles[group])
        shown = "none" if flag.default is None else flag.default
        text = f"{flag.help} (default: {shown}; env {flag.env})".lstrip()
        groups[group].add_argument(
            flag.option,
            dest=flag.dest,
            default=_UNSET,
            metavar=_METAVARS[flag.kind]
            if flag.choices is None
            else "{" + ",".join(flag.choices) + "}",
            choices=None,  # checked by Flag.parse, so the environment gets the same check
            help=text.replace("%", "%%"),
        )


def resolve(
    ns: argparse.Namespace, flags: list[Flag], environ: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per group, field to value: the flag if given, else its variable, else the default."""
    env = os.environ if environ is None else environ
    out: dict[str, dict[str, Any]] = {"serve": {}, "server": {}, "cluster": {}}
    for flag in flags:
        given = getattr(ns, flag.dest, _UNSET)
        if isinstance(given, str):
            value = flag.parse(given, flag.option)
        elif flag.env in env:
            value = flag.parse(env[flag.env], flag.env)
        else:
            value = flag.default
        group, name = flag.dest.split(".")
        out[group][name] = value
    return out


__all__ = [
    "ENV_PREFIX",
    "Flag",
    "ServeOptions",
    "add_flags",
    "resolve",
    "serve_flags",
]
