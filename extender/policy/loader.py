"""Load, validate and compile a policy, reporting every problem at once.

Three passes, each collecting rather than stopping: YAML (syntax, duplicate keys, YAML 1.1
booleans), the typed model (types, ranges, unknown fields) and the cross-field rules (declared
signals, unique tier names, the default tier, ordered priority ranges). The cross-field pass reads
the raw data defensively so it reports even when the typed pass failed. Each problem comes out as
``file:line:col: path: message``.

The last policy that loaded can be kept in a state directory (:func:`save_last_good`), so that a
restart while the file on disk is invalid starts from it instead of crash-looping
(:func:`load_last_good`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path as FsPath
from typing import Any, Literal

from pydantic import ValidationError

from extender.core.rules import (
    Bypass,
    EstimateFrom,
    Estimation,
    Headroom,
    LabelSelector,
    OnStale,
    Rules,
    SelectorOp,
    SelectorRequirement,
    Siblings,
    Strategy,
    Tier,
    TierMatch,
)
from extender.policy.model import (
    SUPPORTED_API_VERSIONS,
    PolicyDocument,
    Selector,
    TierSpec,
    parse_duration,
)
from extender.policy.yamlpos import (
    Document,
    DocumentError,
    Issue,
    NotRegularFile,
    Path,
    parse,
    read_regular,
    read_text,
)

#: Largest policy file read. Policies are a few KB; this stops a wrong path (a log file, a
#: binary) from being read into memory whole.
MAX_POLICY_BYTES = 1 << 20

EMBEDDED_NAME = "<embedded default>"

#: The tier used for pods that match no tier when the policy names no default.
BUILTIN_DEFAULT_TIER = "default"


class PolicyError(DocumentError):
    """A policy that cannot be used; ``issues`` lists every problem, already formatted."""


PolicyOrigin = Literal["file", "last-good", "embedded"]


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    document: PolicyDocument
    rules: Rules
    source: str
    """The file it came from, or ``<embedded default>``."""
    base_dir: FsPath | None
    """Where relative paths in the policy (the static source file) are resolved."""
    sha256: str
    text: str = field(default="", repr=False, compare=False)
    """The policy's source text (what :func:`save_last_good` keeps)."""
    origin: PolicyOrigin = "file"
    """``file`` (read from ``source`` as it is now), ``last-good`` (the file was invalid at
    start-up; this is the copy kept from the last time it loaded) or ``embedded``."""


def pydantic_issues(doc: Document, exc: ValidationError) -> list[Issue]:
    """Pydantic's errors as issues at the line and column of the value they are about."""
    issues = []
    for err in exc.errors(include_url=False):
        # Generic parametrisations and validators add loc parts that are not YAML keys.
        path: Path = tuple(
            p for p in err["loc"] if isinstance(p, int) or (isinstance(p, str) and "[" not in p)
        )
        kind = err["type"]
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if kind == "extra_forbidden":
            message = f"unknown field {path[-1]!r}"
        elif kind == "missing":
            message = f"required field {path[-1]!r} is missing"
        elif kind == "string_type" and path in doc.scalar_text:
            text = doc.scalar_text[path]
            message = (
                f"expected text, got the number {text}: quote it ('{text}') if you mean the text"
            )
        issues.append(Issue(doc.mark_of(path, key=kind == "extra_forbidden"), path, message))
    return issues


def _get(data: Any, *keys: str | int) -> Any:
    for key in keys:
        if isinstance(key, int):
            if not isinstance(data, list) or key >= len(data):
                return None
            data = data[key]
        else:
            if not isinstance(data, dict):
                return None
            data = data.get(key)
    return data


def _semantic_issues(doc: Document) -> list[Issue]:
    data = doc.data
    issues: list[Issue] = []

    def add(path: Path, message: str, *, key: bool = False) -> None:
        issues.append(Issue(doc.mark_of(path, key=key), path, message))

    version = _get(data, "apiVersion")
    if isinstance(version, str) and version not in SUPPORTED_API_VERSIONS:
        add(
            ("apiVersion",),
            f"unsupported apiVersion {version!r}; supported: {', '.join(SUPPORTED_API_VERSIONS)}",
        )

    signals = _get(data, "metrics", "signals")
    declared = set(signals) if isinstance(signals, dict) else {"cpu", "memory"}
    source = _get(data, "metrics", "source")
    if source == "prometheus" and isinstance(signals, dict):
        for name, query in signals.items():
            if isinstance(query, str) and not query.strip():
                add(
                    ("metrics", "signals", name),
                    "a prometheus source needs a query for every signal",
                )
    if isinstance(signals, dict) and not signals:
        add(("metrics", "signals"), "declare at least one signal")
    ranges = _get(data, "metrics", "prometheus", "ranges")
    if isinstance(ranges, dict):
        for sig in ranges:
            if sig not in declared:
                add(("metrics", "prometheus", "ranges", sig), _undeclared(sig, declared), key=True)

    tiers = _get(data, "tiers")
    names: dict[str, int] = {}
    if isinstance(tiers, list):
        for i, tier in enumerate(tiers):
            if not isinstance(tier, dict):
                continue
            name = tier.get("name")
            if isinstance(name, str):
                if name in names:
                    add(
                        ("tiers", i, "name"),
                        f"duplicate tier name {name!r} (also tiers[{names[name]}])",
                    )
                else:
                    names[name] = i
            ceilings = tier.get("filter")
            if isinstance(ceilings, dict):
                for sig in ceilings:
                    if sig not in declared:
                        add(("tiers", i, "filter", sig), _undeclared(sig, declared), key=True)
            weights = _get(tier, "score", "weights")
            if isinstance(weights, dict):
                for sig in weights:
                    if sig not in declared:
                        add(
                            ("tiers", i, "score", "weights", sig),
                            _undeclared(sig, declared),
                            key=True,
                        )
                numeric = [w for w in weights.values() if isinstance(w, int | float)]
                if numeric and len(numeric) == len(weights) and not any(w > 0 for w in numeric):
                    add(("tiers", i, "score", "weights"), "at least one weight must be above 0")
            lo, hi = _get(tier, "match", "minPriority"), _get(tier, "match", "maxPriority")
            if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
                add(
                    ("tiers", i, "match", "minPriority"),
                    f"minPriority {lo} is above maxPriority {hi}",
                )
            _selector_issues(
                _get(tier, "match", "podSelector"), ("tiers", i, "match", "podSelector"), add
            )
    _selector_issues(_get(data, "bypass", "podSelector"), ("bypass", "podSelector"), add)

    window, lag = _get(data, "estimation", "window"), _get(data, "estimation", "lag")
    try:
        if lag is not None and parse_duration(lag) >= parse_duration(window or 150.0):
            add(
                ("estimation", "lag"),
                "lag must be shorter than window (the estimate fades in between)",
            )
    except ValueError:
        pass  # the field's own error says what is wrong with it

    default = _get(data, "defaultTier")
    if isinstance(default, str) and names and default not in names:
        add(
            ("defaultTier",), f"defaultTier {default!r} is not one of the tiers: {', '.join(names)}"
        )
    return issues


def _undeclared(signal: str, declared: set[str]) -> str:
    return f"signal {signal!r} is not declared in metrics.signals ({', '.join(sorted(declared))})"


def _selector_issues(sel: Any, path: Path, add: Any) -> None:
    exprs = _get(sel, "matchExpressions")
    if not isinstance(exprs, list):
        return
    for j, expr in enumerate(exprs):
        op, values = _get(expr, "operator"), _get(expr, "values")
        if values is None:
            values = []
        if not isinstance(values, list):
            continue
        if op in ("In", "NotIn") and not values:
            add((*path, "matchExpressions", j, "values"), f"operator {op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and values:
            add((*path, "matchExpressions", j, "values"), f"operator {op} takes no values")


def _selector(spec: Selector | None) -> LabelSelector | None:
    if spec is None:
        return None
    return LabelSelector(
        match_labels=dict(spec.matchLabels),
        expressions=tuple(
            SelectorRequirement(e.key, SelectorOp(e.operator), frozenset(e.values))
            for e in spec.matchExpressions
        ),
    )


def _tier(spec: TierSpec, signals: Sequence[str], mode: str = "enforce") -> Tier:
    m = spec.match
    weights = spec.score.weights if spec.score.weights is not None else dict.fromkeys(signals, 1.0)
    return Tier(
        name=spec.name,
        match=TierMatch(
            priority_class_names=None
            if m.priorityClassNames is None
            else frozenset(m.priorityClassNames),
            min_priority=m.minPriority,
            max_priority=m.maxPriority,
            namespaces=None if m.namespaces is None else frozenset(m.namespaces),
            pod_selector=_selector(m.podSelector),
        ),
        ceilings=dict(spec.filter),
        strategy=Strategy(spec.score.strategy),
        weights=dict(weights),
        target=spec.score.target,
        on_stale=OnStale(spec.onStale),
        floor_keep=spec.floor.keep,
        observe=(spec.mode or mode) == "observe",
        headroom=Headroom(spec.headroom),
    )


def compile_rules(doc: PolicyDocument) -> Rules:
    """Turn a validated document into the core's :class:`Rules`."""
    signals = tuple(doc.metrics.signals)
    tiers = tuple(_tier(t, signals, doc.mode) for t in doc.tiers)
    if doc.defaultTier is not None:
        default = next(t for t in tiers if t.name == doc.defaultTier)
    else:
        default = Tier(
            name=BUILTIN_DEFAULT_TIER,
            match=TierMatch(),
            ceilings={},
            strategy=Strategy.LEAST_LOADED,
            weights=dict.fromkeys(signals, 1.0),
            observe=doc.mode == "observe",
        )
    est = doc.estimation
    siblings = (
        None
        if est.siblings is None
        else Siblings(percentile=est.siblings.percentile, min_pods=est.siblings.minPods)
    )
    return Rules(
        signals=signals,
        tiers=tiers,
        default_tier=default,
        max_age_s=doc.metrics.maxAge,
        estimation=Estimation(
            window_s=est.window,
            lag_s=est.lag,
            prefer=EstimateFrom(est.prefer),
            requests_factor=est.requestsFactor,
            default_cpu=est.defaults.cpu,
            default_memory=est.defaults.memory,
            siblings=siblings,
        ),
        bypass=Bypass(
            daemonsets=doc.bypass.daemonSets,
            namespaces=frozenset(doc.bypass.namespaces),
            pod_selector=_selector(doc.bypass.podSelector),
        ),
        preemption_max_per_node=doc.preemption.maxPerNode,
        preemption_window_s=doc.preemption.window,
        live_source=doc.metrics.source != "none",
    )


def static_file(document: PolicyDocument, base_dir: FsPath | None) -> FsPath:
    """The file the static source reads: ``metrics.static.file``, relative to the policy's
    folder (``base_dir``) unless absolute."""
    path = FsPath(document.metrics.static.file)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def missing_files(policy: LoadedPolicy) -> list[str]:
    """Files a loaded policy names that are not there, as formatted issues: the static source's
    file, when the static source is the one in use (the default). ``policy check`` reports them
    as errors and ``serve`` refuses to start on them, so that the check says what start-up
    rejects. Reloads do not ask: a ConfigMap update may bring the policy a moment before the
    file, and the static source keeps its last good data meanwhile."""
    document = policy.document
    if document.metrics.source != "static" or policy.base_dir is None:
        return []
    path = static_file(document, policy.base_dir)
    if path.is_file():
        return []
    doc = parse(policy.text)  # again, for the line and column of the setting
    at: Path = ("metrics", "static", "file")
    given = at in doc.positions
    default = "" if given else " (the default)"
    message = (
        f"{path} does not exist{default}: the static source (metrics.source, static by default) "
        "reads it, relative to the policy's folder; create it or choose another metrics.source"
    )
    issue = Issue(doc.mark_of(at if given else ("metrics", "source")), at, message)
    return [issue.format(policy.source)]


def load_text(text: str, filename: str, base_dir: FsPath | None = None) -> LoadedPolicy:
    """Validate and compile policy text; raise :class:`PolicyError` listing every problem."""
    doc = parse(text)
    issues = list(doc.issues)
    document: PolicyDocument | None = None
    if doc.data is not None:
        if not isinstance(doc.data, dict):
            issues.append(
                Issue(
                    doc.mark_of(()), (), "a policy must be a mapping (apiVersion, kind, tiers, ...)"
                )
            )
        else:
            try:
                document = PolicyDocument.model_validate(doc.data)
            except ValidationError as exc:
                # A value already reported by the YAML pass is not reported again by type.
                reported = {i.path for i in doc.issues}
                issues.extend(i for i in pydantic_issues(doc, exc) if i.path not in reported)
            issues.extend(_semantic_issues(doc))
    if issues or document is None:
        issues.sort(key=lambda i: (i.mark.line, i.mark.column))
        raise PolicyError(filename, [i.format(filename) for i in issues])
    return LoadedPolicy(
        document=document,
        rules=compile_rules(document),
        source=filename,
        base_dir=base_dir,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        text=text,
    )


def load_file(path: str | FsPath) -> LoadedPolicy:
    """Read and load a policy file; unreadable files are a :class:`PolicyError` too."""
    text = read_text(path, MAX_POLICY_BYTES, PolicyError)
    return load_text(text, str(path), policy_dir(path))


def policy_dir(path: str | FsPath) -> FsPath:
    """The folder of the policy file as given, made absolute without resolving symlinks, where
    its relative paths (the static source's file) are read. A ConfigMap's ``policy.yaml`` is a
    symlink through ``..data`` into a timestamped folder that the next update replaces: the
    resolved folder would keep naming the old one, and every later read would be stale."""
    return FsPath(os.path.abspath(path)).parent


def embedded_default() -> LoadedPolicy:
    """The policy packaged with the extender, used when no ``--policy`` is given."""
    files = resources.files("extender") / "defaults"
    text = (files / "policy.yaml").read_text(encoding="utf-8")
    with resources.as_file(files) as folder:
        return replace(load_text(text, EMBEDDED_NAME, FsPath(folder)), origin="embedded")


# --- the last good policy, kept across restarts ------------------------------------------------

#: The file in the state directory. One JSON document (source path, digest, text) so that a
#: single rename replaces all of it at once.
LAST_GOOD_NAME = "last-good-policy.json"
#: Version of that document's layout; another version is ignored, as if absent.
LAST_GOOD_VERSION = 1
#: Largest last-good file read: the policy's own cap, times 6 for JSON's worst-case escaping
#: (``\u0001`` for one byte), plus room for the other fields.
MAX_LAST_GOOD_BYTES = 6 * MAX_POLICY_BYTES + 4096


def _source_key(path: str | FsPath) -> str:
    """The policy path as given, made absolute without resolving symlinks: a ConfigMap's file is
    a symlink into a directory whose name changes with every update."""
    return os.path.abspath(path)


def save_last_good(state_dir: FsPath, policy: LoadedPolicy) -> FsPath:
    """Keep ``policy`` as the last good one for its source file: a temporary file in
    ``state_dir``, flushed to disk, then renamed over the previous copy (atomic on POSIX), so a
    crash mid-write leaves the previous copy whole. Raises ``OSError``."""
    doc = {
        "version": LAST_GOOD_VERSION,
        "source": _source_key(policy.source),
        "sha256": policy.sha256,
        "savedAt": time.time(),
        "text": policy.text,
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / LAST_GOOD_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{LAST_GOOD_NAME}.", dir=state_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def load_last_good(state_dir: FsPath, policy_path: str | FsPath) -> LoadedPolicy | None:
    """The last good copy of ``policy_path`` kept in ``state_dir``, loaded and validated again,
    with ``origin="last-good"``; None when there is none, or it was kept for another file.

    A copy that is unreadable, damaged (its digest does not match) or no longer valid raises
    :class:`PolicyError` naming the state file.
    """
    target = state_dir / LAST_GOOD_NAME
    name = str(target)
    try:
        raw = read_regular(target, MAX_LAST_GOOD_BYTES)
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        raise PolicyError(name, [f"{name}:0:0: (file): {exc}"]) from exc
    except OSError as exc:
        raise PolicyError(
            name, [f"{name}:0:0: (file): cannot read: {exc.strerror or exc}"]
        ) from exc
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise PolicyError(name, [f"{name}:0:0: (file): damaged: {exc}"]) from exc
    if doc.get("version") != LAST_GOOD_VERSION or doc.get("source") != _source_key(policy_path):
        return None
    text = doc.get("text")
    if not isinstance(text, str) or hashlib.sha256(text.encode()).hexdigest() != doc.get("sha256"):
        raise PolicyError(
            name, [f"{name}:0:0: (file): damaged: its text does not match its digest"]
        )
    # Problems are reported against the copy (its lines), not the file on disk.
    copy = f"{policy_path} (last good copy in {name})"
    loaded = load_text(text, copy, policy_dir(policy_path))
    return replace(loaded, source=str(policy_path), origin="last-good")
