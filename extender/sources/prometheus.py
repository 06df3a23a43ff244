"""The Prometheus metrics source: live node utilization, one instant query per signal.

Every ``refreshInterval`` (give or take :data:`JITTER`), each query in ``metrics.signals`` runs
once against ``/api/v1/query`` for all nodes, all queries at the same time. The answers are checked
sample by sample and handed to the store in one swap. The request path never waits on any of it.

What an answer goes through:

* the whole query, connect to last byte, gets ``timeout`` seconds; the body is read as a stream
  and abandoned past ``maxResponseBytes``;
* typed msgspec decoding (a 5,000-series vector in a few milliseconds) that accepts Prometheus'
  envelope with an instant vector inside and nothing else;
* per sample: a node name, from the label named by ``nodeLabel`` or else from the ``instance``
  label through the address map of :meth:`PrometheusSource.set_addresses` (no guessing from the
  text of the address); a finite value inside the signal's range; a positive timestamp; and no
  other sample for the same node. A node that appears twice in one vector is dropped with every
  one of its samples: the query does not aggregate by node, and neither value deserves more trust
  than the other (keeping the first would make the answer depend on series order).

Failures stay inside one query. A query that fails, or yields no usable sample, keeps its signal's
previous samples, which age by their own timestamps until decisions count them as stale; the
source counts as refreshed (``ok_at``) when at least one query produced samples, so a Prometheus
that answers nothing useful ends, after ``maxAge``, in the request-based fallback rather than in
every node being judged stale. A signal whose query succeeds is replaced whole: a node missing
from the answer is missing, since Prometheus already applied its own lookback.

Timestamps are the ones Prometheus returns. For an instant query that is the evaluation time, not
the time of the scrape underneath: a series stops being fresh when Prometheus drops it (staleness
markers as soon as a target or a rule's input disappears, else its 5-minute lookback).

With the Kubernetes API cache, :func:`build` subscribes the source to the cache's node addresses
(InternalIP, Hostname, ...), so series that carry only ``instance="10.0.3.7:9100"`` map to node
names; the map is replaced in the background whenever a node's addresses change.

Per-pod usage (``metrics.prometheus.pods``): two more queries, one per resource, whose answers
(tens of megabytes at 150,000 pods) are decoded, checked, matched to the cluster cache and built
into the store's per-pod table in a worker thread, never on the event loop (see
``extender/sources/pods.py``, "Off the event loop"); they never fail the node signals.

Nothing Prometheus (or whatever answers at its URL) sends is trusted in a log line: redirects are
not followed (a 3xx fails the query as ``redirected``), and any text quoted from an answer is cut
to :data:`LOGGED_TEXT_CHARS` with control characters escaped, so it cannot flood or forge lines.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import aiohttp
import msgspec
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from extender.core import Sample
from extender.core.podusage import FloatArray
from extender.errors import SourceError
from extender.policy.model import PrometheusSource as PrometheusSettings
from extender.sources.base import ClusterView, Produces, SourceContext
from extender.sources.pods import (
    Body,
    CheckedPods,
    PodUsageKeeper,
    PodUsageMetrics,
    array_pieces,
    assemble,
    check_pods,
    pod_switch,
    release,
    split_array,
)
from extender.store import SnapshotStore
from extender.wire.streams import read_at_most

log = logging.getLogger(__name__)

QUERY_PATH = "/api/v1/query"

INSTANCE_LABEL = "instance"
"""Prometheus' scrape address label (``host:port``), the fallback node identity."""

DEFAULT_RANGE = (0.0, 1.0)
"""A signal without a declared range is a utilization ratio."""

RANGE_SLACK = 0.02
"""Fraction of a range's span by which a value may fall outside it and still be clamped into it:
``rate()`` over scrapes that arrive with jitter overshoots by a few parts in a thousand (an idle
node reads -0.003), and rejecting those would hide idle nodes. Anything farther out is a wrong
query (a percentage, bytes) and is rejected."""

JITTER = 0.1
"""Each wait is the refresh interval ±10%, so that replicas of the extender started together do
not query Prometheus in lockstep."""

MIN_INTERVAL_S = 1.0
"""Floor of the wait between refreshes: Prometheus evaluates rules at most every second, and a
``refreshInterval`` of 0 must not become a busy loop against it."""

MAX_RETRY_AFTER_S = 300.0
"""A ``Retry-After`` on 429 or 503 is honoured up to five minutes. By then every sample is long
stale (``maxAge`` is 60 s by default) and decisions run on the fallback, so waiting longer only
delays recovery; and a bogus header of hours cannot silence the source."""

PARSE_PAUSE_S = 0.001
"""Pause of the loop after parsing one answer, before the next: requests that queued during the
parse are answered in it (a filter call takes well under a millisecond), at a cost of a
millisecond per signal to a refresh that runs every 15 seconds."""

ERROR_BODY_BYTES = 4 << 10
"""How much of a non-200 body is read for the log: Prometheus' error JSON is a few hundred bytes;
an HTML error page from a proxy is cut here."""

LOGGED_TEXT_CHARS = 200
"""Longest piece of foreign text (a body, an error message, a label value) quoted in a log line:
room for Prometheus' parse errors (``bad_data: 1:27: parse error: unexpected ...``, well under
200), too little for an error page or a payload to flood the log or carry much of anything."""

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""Characters that end, rewrite or reorder a log line: C0 and C1 controls (newlines, ANSI
escapes), DEL, the Unicode line and paragraph separators, and the bidirectional overrides."""

STARTUP_MARGIN_S = 2.0
"""The first refresh at start-up is bounded by the query timeout (queries run in parallel) plus
this margin for decoding and the snapshot swap, so start-up never hangs on a slow Prometheus."""

#: Refreshes take milliseconds on a healthy Prometheus; the top bucket is twice the default query
#: timeout (5 s), which a refresh cannot exceed by much.
REFRESH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The ``result`` label of :attr:`PrometheusSourceMetrics.queries`. ``ok``: at least one usable
#: sample; ``empty``: no series at all (a missing recording rule, a wrong label); then the
#: failures of :class:`PrometheusError`, and ``internal_error`` for a bug here.
RESULTS = (
    "ok",
    "empty",
    "no_valid_samples",
    "timeout",
    "connection_error",
    "rate_limited",
    "unavailable",
    "http_error",
    "query_error",
    "too_large",
    "bad_response",
    "redirected",
    "internal_error",
)

#: The ``reason`` label of :attr:`PrometheusSourceMetrics.rejected`.
REASONS = (
    "missing_label",
    "duplicate",
    "nan",
    "infinite",
    "out_of_range",
    "bad_value",
    "bad_timestamp",
)


class PrometheusError(SourceError):
    """One query failed. ``result`` is its bounded metric label; library errors are chained.

    ::

        PrometheusError.result
          timeout           no complete answer within ``timeout``
          connection_error  refused, reset, name not resolved, body cut short
          rate_limited      HTTP 429
          unavailable       HTTP 502, 503, 504
          http_error        any other status but 200
          query_error       Prometheus' ``"status": "error"`` (bad PromQL, failed evaluation)
          too_large         body above ``maxResponseBytes``
          bad_response      not Prometheus JSON, truncated, or not an instant vector
          redirected        HTTP 3xx: never followed (the URL names the final address)
    """

    def __init__(self, result: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After``), if it did."""


# --- decoding -------------------------------------------------------------------------------------


class _Value(msgspec.Struct, array_like=True, gc=False):
    """``[1700000000.123, "0.42"]``: Prometheus sends the value as text (NaN, +Inf included)."""

    timestamp: float
    text: str


class _Data(msgspec.Struct):
    resultType: str
    result: msgspec.Raw


class _Answer(msgspec.Struct):
    status: str
    data: _Data | None = None
    errorType: str = ""
    error: str = ""


_ANSWER = msgspec.json.Decoder(_Answer)


@functools.lru_cache(maxsize=8)
def _vector_decoder(node_label: str) -> msgspec.json.Decoder[list[Any]]:
    """A decoder of the result list that keeps only the two labels used, per node label.

    Every other label (``__name__``, ``job``, the dozen a raw series carries) is skipped by
    msgspec without building a Python string, and no dict is made per series: this halves the
    decode time of a 5,000-series vector and the garbage it leaves. (The cache holds one entry
    per ``nodeLabel`` the policy has had; 8 is more reloads with a new label than happen.)
    """
    fields: list[tuple[str, type, str]] = [("node", str, "")]
    rename = {"node": node_label}
    if node_label != INSTANCE_LABEL:
        fields.append(("instance", str, ""))
        rename["instance"] = INSTANCE_LABEL
    labels = msgspec.defstruct("Labels", fields, rename=rename, gc=False)
    series = msgspec.defstruct("Series", [("metric", labels), ("value", _Value)], gc=False)
    return msgspec.json.Decoder(list[series])  # type: ignore[valid-type]


@dataclass(slots=True)
class Vector:
    """One checked instant vector."""

    samples: dict[str, Sample]
    """Node name to its sample, for the samples that passed every check."""
    series: int
    """Series in the answer, usable or not."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Reason (one of :data:`REASONS`) to the number of series rejected for it."""
    unmapped: int = 0
    """Series with only an ``instance`` address that the address map does not know."""
    examples: dict[str, str] = field(default_factory=dict)
    """Reason (or ``unmapped``) to the first such series, described for the log."""


def _host(address: str) -> str:
    """``10.0.0.1:9100`` -> ``10.0.0.1``; ``[fd00::1]:9100`` -> ``fd00::1``; else unchanged."""
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    if address.count(":") == 1:
        return address.partition(":")[0]
    return address


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _short(text: object) -> str:
    """Foreign text fit for a log line: at most :data:`LOGGED_TEXT_CHARS` of it (then ``...``),
    control characters escaped (``\\x1b``, ``\\x0a``)."""
    s = str(text)
    cut = s[:LOGGED_TEXT_CHARS]
    return _CONTROL.sub(_escape, cut) + ("..." if len(s) > LOGGED_TEXT_CHARS else "")


def parse_vector(
    body: Body,
    *,
    node_label: str = "node",
    addresses: Mapping[str, str] | None = None,
    value_range: tuple[float, float] = DEFAULT_RANGE,
) -> Vector:
    """Decode one ``/api/v1/query`` answer and check every sample.

    Raises :class:`PrometheusError` (``query_error`` or ``bad_response``) when the answer as a
    whole is unusable; a bad sample is only counted in :attr:`Vector.rejected`.
    """
    result = _vector_result(body, "node")
    try:
        series = _vector_decoder(node_label).decode(result)
    except msgspec.DecodeError as exc:
        raise PrometheusError("bad_response", f"malformed vector: {exc}") from exc
    return _check_vector(series, node_label, addresses, value_range)


def _vector_result(body: Body, per: str) -> msgspec.Raw:
    """The ``result`` of a success answer holding an instant vector, or :class:`PrometheusError`
    (``per`` names what the query must return one series for, in the message)."""
    try:
        answer = _ANSWER.decode(body)
    except msgspec.DecodeError as exc:
        raise PrometheusError(
            "bad_response",
            f"not a Prometheus API answer ({exc}): "
            f"{_short(body[:LOGGED_TEXT_CHARS].decode('utf-8', 'replace'))}",
        ) from exc
    if answer.status != "success":
        raise PrometheusError(
            "query_error",
            f"Prometheus answered status {_short(repr(answer.status))}: "
            f"{_short(answer.errorType or 'error')}: {_short(answer.error or '(no message)')}",
        )
    if answer.data is None:
        raise PrometheusError("bad_response", "a success answer without 'data'")
    if answer.data.resultType != "vector":
        raise PrometheusError(
            "bad_response",
            f"the query returns a {_short(repr(answer.data.resultType))}, not an instant vector: "
            f"it must return one series per {per}",
        )
    return answer.data.result


def _check_vector(
    series: list[Any],
    node_label: str,
    addresses: Mapping[str, str] | None,
    value_range: tuple[float, float],
) -> Vector:
    lo, hi = value_range
    slack = RANGE_SLACK * (hi - lo)
    lo_cut, hi_cut = lo - slack, hi + slack
    addr = addresses or {}
    samples: dict[str, Sample] = {}
    invalid: set[str] = set()  # nodes whose first sample was rejected: repeats still count
    repeats: dict[str, int] = {}
    rejected: dict[str, int] = {}
    examples: dict[str, str] = {}
    unmapped = 0

    def reject(name: str, reason: str, detail: str) -> None:
        invalid.add(name)
        rejected[reason] = rejected.get(reason, 0) + 1
        if reason not in examples:
            examples[reason] = detail

    for s in series:
        name = s.metric.node
        if not name:
            address = getattr(s.metric, "instance", "")
            if not address:
                rejected["missing_label"] = rejected.get("missing_label", 0) + 1
                examples.setdefault("missing_label", f"a series has no {node_label!r} label")
                continue
            name = addr.get(address) or addr.get(_host(address))
            if name is None:
                unmapped += 1
                examples.setdefault(
                    "unmapped", f"instance {_short(repr(address))} is not a known address"
                )
                continue
        if name in samples or name in invalid:
            repeats[name] = repeats.get(name, 0) + 1
            continue
        value = s.value
        ts = value.timestamp
        text = value.text
        try:
            v = float(text)
        except ValueError:
            reject(
                name,
                "bad_value",
                f"node {_short(name)}: value {_short(repr(text))} is not a number",
            )
            continue
        if lo <= v <= hi and ts > 0:  # the common case first; NaN fails every comparison
            samples[name] = Sample(v, ts)
        elif not ts > 0:
            reject(name, "bad_timestamp", f"node {_short(name)}: timestamp {ts}")
        elif math.isnan(v):
            reject(name, "nan", f"node {_short(name)}: value NaN")
        elif math.isinf(v):
            reject(name, "infinite", f"node {_short(name)}: value {_short(text)}")
        elif lo_cut <= v <= hi_cut:
            samples[name] = Sample(min(max(v, lo), hi), ts)
        else:
            reject(
                name, "out_of_range", f"node {_short(name)}: value {v:g} outside [{lo:g}, {hi:g}]"
            )

    for name, extra in repeats.items():
        dropped = extra + (1 if samples.pop(name, None) is not None else 0)
        rejected["duplicate"] = rejected.get("duplicate", 0) + dropped
        examples.setdefault("duplicate", f"node {_short(name)} appears {extra + 1} times")
    return Vector(samples, len(series), rejected, unmapped, examples)


# --- per-pod answers ------------------------------------------------------------------------------


class _PodLabels(msgspec.Struct, gc=False):
    namespace: str = ""
    pod: str = ""


class _NumberValue(msgspec.Struct, array_like=True, gc=False):
    """``[1700000000.123, "0.42"]`` read as two floats (the text converted by msgspec itself
    under ``strict=False``), so that no Python ``float()`` runs per pod."""

    timestamp: float
    value: float


class _FastPodSeries(msgspec.Struct, gc=False):
    metric: _PodLabels = msgspec.field(default_factory=_PodLabels)
    value: _NumberValue = msgspec.field(default_factory=lambda: _NumberValue(0.0, 0.0))


class _PodSeries(msgspec.Struct, gc=False):
    metric: _PodLabels = msgspec.field(default_factory=_PodLabels)
    value: _Value = msgspec.field(default_factory=lambda: _Value(0.0, ""))


_FAST_PODS = msgspec.json.Decoder(list[_FastPodSeries], strict=False)
_PODS = msgspec.json.Decoder(list[_PodSeries])


@dataclass(slots=True)
class PodVector:
    """One decoded per-pod instant vector, as columns (unchecked: see
    :func:`extender.sources.pods.check_pods`)."""

    namespaces: list[str]
    names: list[str]
    values: FloatArray
    timestamps: FloatArray
    bad_value: npt.NDArray[np.bool_] | None = None
    """Where the value text was not a number (its ``values`` entry is NaN); None: nowhere."""

    def __len__(self) -> int:
        return len(self.names)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _result_slot(hollow: bytes) -> bytes | None:
    """What a success answer holding a vector has as its ``result`` (for :func:`split_array`)."""
    try:
        answer = _ANSWER.decode(hollow)
    except msgspec.DecodeError:
        return None
    data = answer.data
    if answer.status != "success" or data is None or data.resultType != "vector":
        return None
    return bytes(data.result)


def parse_pod_vector(body: Body) -> PodVector:
    """Decode a per-pod ``/api/v1/query`` answer (labels ``namespace`` and ``pod``) into columns.

    The result array is decoded in pieces of :data:`~extender.sources.pods.CHUNK_BYTES` (see
    :func:`~extender.sources.pods.split_array`), so that no single call holds the GIL for long
    (this runs in a worker thread, next to the event loop); an answer that cannot be cut so, or
    whose pieces do not decode, is decoded whole, which gives the same columns or the error.
    The common answer, every value a plain number, is decoded with the values as floats in
    one pass; one that msgspec cannot read so (``+Inf``, a value that is not a number) is
    decoded again with the values as text and converted one by one, marking the bad ones.
    Raises :class:`PrometheusError` when the answer as a whole is unusable.
    """
    spans = split_array(body, b'"result":', b'{"metric":', _result_slot)
    if spans is not None:
        try:
            return _pod_columns(lambda: array_pieces(body, spans))
        except msgspec.DecodeError:
            pass  # decoded whole below: the same columns, or the right error
    result = _vector_result(body, "pod")
    try:
        return _pod_columns(lambda: iter((result,)))
    except msgspec.DecodeError as exc:
        raise PrometheusError("bad_response", f"malformed vector: {exc}") from exc


def _pod_columns(pieces: Callable[[], Iterator[Any]]) -> PodVector:
    """The columns of the series in ``pieces()`` (JSON arrays), with the values as numbers, or
    else as text; raises ``msgspec.DecodeError`` when a piece is not a list of series."""
    namespaces: list[str] = []
    names: list[str] = []
    stamps: list[float] = []
    try:
        values: list[float] = []
        for piece in pieces():
            fast = _FAST_PODS.decode(piece)
            namespaces += [s.metric.namespace for s in fast]
            names += [s.metric.pod for s in fast]
            values += [s.value.value for s in fast]
            stamps += [s.value.timestamp for s in fast]
        return PodVector(
            namespaces=namespaces,
            names=names,
            values=np.array(values, dtype=np.float64),
            timestamps=np.array(stamps, dtype=np.float64),
        )
    except msgspec.ValidationError:
        pass
    namespaces, names, stamps = [], [], []
    numbers: list[float | None] = []
    for piece in pieces():
        slow = _PODS.decode(piece)
        namespaces += [s.metric.namespace for s in slow]
        names += [s.metric.pod for s in slow]
        numbers += [_number(s.value.text) for s in slow]
        stamps += [s.value.timestamp for s in slow]
    n = len(numbers)
    return PodVector(
        namespaces=namespaces,
        names=names,
        values=np.fromiter(
            (math.nan if v is None else v for v in numbers), dtype=np.float64, count=n
        ),
        timestamps=np.array(stamps, dtype=np.float64),
        bad_value=np.fromiter((v is None for v in numbers), dtype=bool, count=n),
    )


def check_pod_answer(
    body: Body | Sequence[bytes], cluster: ClusterView, *, resource: str, oldest: float
) -> CheckedPods:
    """Decode, check and match one per-pod answer (whole, or as the chunks it was read in):
    what a refresh runs in its worker thread."""
    vector = parse_pod_vector(body if isinstance(body, Body) else assemble(body))
    checked = check_pods(
        cluster,
        vector.namespaces,
        vector.names,
        vector.values,
        vector.timestamps,
        resource=resource,
        oldest=oldest,
        bad_value=vector.bad_value,
    )
    release(vector.namespaces, vector.names)
    return checked


# --- metrics --------------------------------------------------------------------------------------


class PrometheusSourceMetrics:
    """The source's own metrics. Labels are signal names (declared in the policy), results and
    reasons: bounded sets, never node names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.queries = Counter(
            "priority_extender_prometheus_queries",
            "Prometheus queries by signal and result (see RESULTS in the source).",
            ["signal", "result"],
            registry=registry,
        )
        self.rejected = Counter(
            "priority_extender_prometheus_rejected_samples",
            "Samples dropped by the checks, by signal and reason; the node's signal is missing.",
            ["signal", "reason"],
            registry=registry,
        )
        self.unmapped = Counter(
            "priority_extender_prometheus_unmapped_series",
            "Series identified only by an instance address that maps to no known node.",
            ["signal"],
            registry=registry,
        )
        self.series = Gauge(
            "priority_extender_prometheus_query_series",
            "Series in the last answer to each signal's query; 0 means the query matches "
            "nothing (a recording rule not loaded, or the node label missing).",
            ["signal"],
            registry=registry,
        )
        self.last_success = Gauge(
            "priority_extender_prometheus_last_success_timestamp_seconds",
            "When a refresh last produced samples (at least one query succeeded).",
            registry=registry,
        )
        self.refresh_duration = Histogram(
            "priority_extender_prometheus_refresh_duration_seconds",
            "Time for one refresh: every query, its checks and the snapshot swap.",
            buckets=REFRESH_BUCKETS,
            registry=registry,
        )
        self._known: set[str] = set()

    def signal(self, name: str) -> None:
        """Create every label combination of a signal, so that zeros are visible."""
        if name in self._known:
            return
        self._known.add(name)
        for result in RESULTS:
            self.queries.labels(name, result)
        for reason in REASONS:
            self.rejected.labels(name, reason)
        self.unmapped.labels(name)


# --- the source -----------------------------------------------------------------------------------


def _retry_after(value: str | None) -> float | None:
    """The delta-seconds form of ``Retry-After``; the HTTP-date form is ignored."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error_text(body: bytes) -> tuple[bool, str]:
    """(whether it is Prometheus' error JSON, its message or else the start of the body)."""
    try:
        answer = _ANSWER.decode(body)
    except msgspec.DecodeError:
        return False, _short(body.decode("utf-8", "replace").strip()) or "(empty body)"
    ours = answer.status == "error"
    kind = _short(answer.errorType or answer.status)
    return ours, f"{kind}: {_short(answer.error or '(no message)')}"


async def _read_chunks(resp: aiohttp.ClientResponse, limit: int) -> list[bytes]:
    """Read a big body as its chunks, never joined here (see :func:`~extender.sources.pods.
    assemble`, which joins them in the worker thread); past ``limit`` bytes raise
    ``too_large``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PrometheusError(
                "too_large", f"answer larger than maxResponseBytes ({limit} bytes)"
            )
        chunks.append(chunk)
    return chunks


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, *, cut: bool = False) -> bytes:
    """Read the body chunk by chunk; past ``limit`` bytes raise ``too_large`` (or cut it)."""
    body, over = await read_at_most(resp.content, limit)
    if over and not cut:
        raise PrometheusError("too_large", f"answer larger than maxResponseBytes ({limit} bytes)")
    return body


@dataclass(frozen=True, slots=True)
class _Outcome:
    samples: dict[str, Sample] | None
    """None when the query failed or yielded nothing usable."""
    retry_after: float | None = None


class PrometheusSource:
    """Queries Prometheus into the store now and then every ``refreshInterval``.

    Settings are read from the store's policy at each refresh, so a reloaded policy applies at
    the next one. ``clock`` stamps ``ok_at``; ``sleep`` and ``rand`` pace :meth:`run`; a given
    ``session`` is used and left open, else one is created and closed by :meth:`close`.
    """

    name = "prometheus"
    produces: frozenset[Produces] = frozenset({"nodes"})

    def __init__(
        self,
        store: SnapshotStore,
        metrics: PrometheusSourceMetrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        session: aiohttp.ClientSession | None = None,
        pod_metrics: PodUsageMetrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = (
            metrics if metrics is not None else PrometheusSourceMetrics(CollectorRegistry())
        )
        self.produces = frozenset({"nodes"})
        self.pods = PodUsageKeeper(
            "prometheus",
            pod_metrics if pod_metrics is not None else PodUsageMetrics(CollectorRegistry()),
        )
        """Per-pod usage (``metrics.prometheus.pods``): the last good answers, published after
        every refresh while it is enabled and the source follows a cluster cache."""
        self._cluster: ClusterView | None = None
        self.clock = clock
        self._sleep = sleep
        self._rand = rand
        self._session = session
        self._own_session = session is None
        self._lock = asyncio.Lock()
        self._parse_turn = asyncio.Lock()
        self._pod_turn = asyncio.Lock()
        self._addresses: dict[str, str] = {}
        self._unwatch: Callable[[], None] | None = None
        self._samples: dict[str, dict[str, Sample]] = {}
        """Signal to node to sample: the last usable answer of each signal's query."""
        self._problems: dict[str, str] = {}
        """Signal to the last problem logged for it, so each is logged once, not every refresh."""
        self.retry_after: float | None = None
        """The longest ``Retry-After`` of the last refresh; :meth:`run` waits at least that."""
        self.results: dict[str, str] = {}
        """Signal to the result of its last query (one of :data:`RESULTS`)."""
        self.refreshes_ok = 0

    @property
    def settings(self) -> PrometheusSettings:
        return self.store.policy.document.metrics.prometheus

    def set_addresses(self, addresses: Mapping[str, str] | None) -> None:
        """Scrape addresses (IP, host name, or ``host:port``) to node names, for series that
        carry an ``instance`` label instead of the node label. Used from the next refresh."""
        self._addresses = dict(addresses or {})

    @property
    def addresses(self) -> Mapping[str, str]:
        """The address map the next refresh uses (read-only: replace it with
        :meth:`set_addresses`)."""
        return MappingProxyType(self._addresses)

    def follow(self, cluster: ClusterView) -> None:
        """Take the address map from the cluster cache, now and whenever it changes, until
        :meth:`close`."""
        self._cluster = cluster
        if self._unwatch is None:
            self._unwatch = cluster.watch_addresses(self.set_addresses)

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """The first refresh, bounded by the query timeout plus :data:`STARTUP_MARGIN_S`; past
        that, start-up goes on and :meth:`run` retries in the background."""
        bound = self.settings.timeout + STARTUP_MARGIN_S
        try:
            await asyncio.wait_for(self.refresh(startup=True), bound)
        except TimeoutError:
            log.warning("prometheus: first refresh did not finish in time; retrying in background")

    async def close(self) -> None:
        """Stop following the cluster's addresses; close the session this source created (a
        given session is the giver's to close). Safe to call twice."""
        if self._unwatch is not None:
            unwatch, self._unwatch = self._unwatch, None
            unwatch()
        if self._own_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Each query is bounded by asyncio.timeout in _fetch, from connect to last byte.
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"Accept": "application/json", "User-Agent": "priority-extender"},
                # In-cluster Prometheus is reached directly; a proxy from the environment
                # without a matching NO_PROXY would silently route queries through it.
                trust_env=False,
            )
        return self._session

    # --- one refresh ------------------------------------------------------------------------------

    async def refresh(self, *, startup: bool = False) -> bool:
        """Run every query once; True when at least one produced samples. Never raises.

        Calls never overlap: a second caller waits for the running refresh, then runs its own.
        ``startup`` warns loudly about every query that matches no series.
        """
        async with self._lock:
            started = time.perf_counter()
            try:
                return await self._refresh(startup)
            except Exception:  # a bug here or in the store: keep serving the last snapshot
                log.exception("prometheus: refresh failed unexpectedly; keeping the previous data")
                return False
            finally:
                self.metrics.refresh_duration.observe(time.perf_counter() - started)

    async def _refresh(self, startup: bool) -> bool:
        metrics_settings = self.store.policy.document.metrics
        prom = metrics_settings.prometheus
        queries = dict(metrics_settings.signals)
        session = self._client()
        url = prom.url.rstrip("/") + QUERY_PATH
        pods = pod_switch(metrics_settings, "prometheus")
        pod_queries = pods.queries() if pods.enabled and self._cluster is not None else {}
        if pods.enabled and self._cluster is None and not self._problems.get("pods:"):
            log.warning(
                "prometheus: per-pod usage is enabled but the extender runs without the "
                "Kubernetes API cache, which pods are matched to: per-pod usage is off"
            )
            self._problems["pods:"] = "no_cluster"
        outcomes, pod_waits = await asyncio.gather(
            asyncio.gather(
                *(
                    self._query(session, url, prom, signal, promql, startup)
                    for signal, promql in queries.items()
                )
            ),
            asyncio.gather(
                *(
                    self._pod_query(session, url, prom, resource, promql, pods.max_response_bytes)
                    for resource, promql in pod_queries.items()
                )
            ),
        )
        if pod_queries:
            await self.pods.publish(
                self.store, self._cluster, self.clock(), metrics_settings.maxAge
            )
        else:
            self.pods.clear(self.store)
        waits = [o.retry_after for o in outcomes if o.retry_after is not None]
        waits += [w for w in pod_waits if w is not None]
        self.retry_after = max(waits) if waits else None
        for state in (self._samples, self._problems, self.results):
            for signal in [k for k in state if k not in queries and not k.startswith("pods:")]:
                del state[signal]  # no longer in the (reloaded) policy
        succeeded = False
        for signal, outcome in zip(queries, outcomes, strict=True):
            if outcome.samples is not None:
                self._samples[signal] = outcome.samples
                succeeded = True
        if not succeeded:
            return False
        ok_at = self.clock()
        self.store.set_samples(self._merged(), ok_at)
        self.metrics.last_success.set(ok_at)
        self.refreshes_ok += 1
        return True

    def _merged(self) -> dict[str, dict[str, Sample]]:
        merged: dict[str, dict[str, Sample]] = {}
        for signal, per_node in self._samples.items():
            for node, sample in per_node.items():
                entry = merged.get(node)
                if entry is None:
                    merged[node] = entry = {}
                entry[signal] = sample
        return merged

    async def _query(
        self,
        session: aiohttp.ClientSession,
        url: str,
        prom: PrometheusSettings,
        signal: str,
        promql: str,
        startup: bool,
    ) -> _Outcome:
        self.metrics.signal(signal)
        try:
            body = await self._fetch(session, url, promql, prom.timeout, prom.maxResponseBytes)
            assert isinstance(body, bytes)  # not big=True
            # Answers tend to arrive together; parsed back to back they would hold the loop for
            # the sum of their parse times. One at a time, with a pause after each, a scheduling
            # request waits at most one parse (about 5 ms at 5,000 nodes).
            async with self._parse_turn:
                vector = parse_vector(
                    body,
                    node_label=prom.nodeLabel,
                    addresses=self._addresses,
                    value_range=prom.ranges.get(signal, DEFAULT_RANGE),
                )
                await asyncio.sleep(PARSE_PAUSE_S)
        except PrometheusError as exc:
            self._failed(signal, exc.result, str(exc), promql)
            return _Outcome(None, exc.retry_after)
        except TimeoutError:
            self._failed(signal, "timeout", f"no complete answer within {prom.timeout:g}s", promql)
            return _Outcome(None)
        except aiohttp.ClientError as exc:
            self._failed(signal, "connection_error", f"{type(exc).__name__}: {exc}", promql)
            return _Outcome(None)
        except Exception as exc:
            log.exception("prometheus: unexpected error querying signal %r", signal)
            self._failed(signal, "internal_error", f"{type(exc).__name__}: {exc}", promql)
            return _Outcome(None)
        return _Outcome(self._account(signal, promql, vector, prom.nodeLabel, startup))

    async def _pod_query(
        self,
        session: aiohttp.ClientSession,
        url: str,
        prom: PrometheusSettings,
        resource: str,
        promql: str,
        limit: int,
    ) -> float | None:
        """One per-pod query into :attr:`pods`; returns its Retry-After, if any. A failure here
        is the per-pod table's alone: the node signals never wait on it or fail with it."""
        cluster = self._cluster
        assert cluster is not None  # only queried while following a cluster
        key = "pods:" + resource
        try:
            chunks = await self._fetch(session, url, promql, prom.timeout, limit, big=True)
            oldest = self.clock() - self.store.policy.document.metrics.maxAge
            # In a worker thread, one answer at a time (two at once would only share the GIL
            # and double the memory): see extender/sources/pods.py, "Off the event loop".
            async with self._pod_turn:
                checked = await asyncio.to_thread(
                    check_pod_answer, chunks, cluster, resource=resource, oldest=oldest
                )
        except PrometheusError as exc:
            self._pod_failed(key, resource, exc.result, str(exc), promql)
            return exc.retry_after
        except TimeoutError:
            self._pod_failed(
                key, resource, "timeout", f"no answer within {prom.timeout:g}s", promql
            )
            return None
        except aiohttp.ClientError as exc:
            self._pod_failed(
                key, resource, "connection_error", f"{type(exc).__name__}: {exc}", promql
            )
            return None
        except Exception as exc:
            log.exception("prometheus: unexpected error querying per-pod %s", resource)
            self._pod_failed(
                key, resource, "internal_error", f"{type(exc).__name__}: {exc}", promql
            )
            return None
        self.pods.accept(resource, checked, self.clock())
        if checked.series == 0:
            self._pod_failed(
                key,
                resource,
                "empty",
                "the query matches no series; is the pod-usage recording rule loaded "
                "(config/prometheus-rules.yaml) and are the kubelets' cAdvisor endpoints scraped?",
                promql,
                counted=True,
            )
            return None
        problem = ",".join(sorted(checked.rejected)) + (",unknown" if checked.unknown else "")
        if problem != self._problems.get(key, ""):
            if checked.rejected:
                log.warning(
                    "prometheus: per-pod %s: %d of %d samples unusable (%s); %d of no known pod"
                    " (query: %s)",
                    resource,
                    sum(checked.rejected.values()),
                    checked.series,
                    ", ".join(f"{k}={n}" for k, n in sorted(checked.rejected.items())),
                    checked.unknown,
                    promql,
                )
            else:
                log.info(
                    "prometheus: per-pod %s: %d pods, %d samples of no known pod",
                    resource,
                    len(checked.samples),
                    checked.unknown,
                )
        self._problems[key] = problem
        return None

    def _pod_failed(
        self, key: str, resource: str, result: str, message: str, promql: str, counted: bool = False
    ) -> None:
        """Count a failed per-pod query (as ``failed``, or ``empty``); log a new kind once."""
        if not counted:
            self.pods.failed(resource)
        if self._problems.get(key) != result:
            log.warning(
                "prometheus: per-pod %s query failed (%s), keeping its previous samples until "
                "they go stale: %s (query: %s)",
                resource,
                result,
                message,
                promql,
            )
        self._problems[key] = result

    async def _fetch(
        self,
        session: aiohttp.ClientSession,
        url: str,
        promql: str,
        timeout: float,
        limit: int,
        *,
        big: bool = False,
    ) -> bytes | list[bytes]:
        # Never send ``time``: Prometheus evaluates at its own now, whatever our clock says.
        params = {"query": promql, "timeout": f"{timeout:g}"}
        # Redirects are not followed: the URL is the policy's, and a redirect (from a proxy, a
        # login page, a hostile server) would send the query, and trust, to an address nobody
        # configured. 3xx is a failure that names where it pointed.
        async with (
            asyncio.timeout(timeout),
            session.get(url, params=params, allow_redirects=False) as resp,
        ):
            if 300 <= resp.status < 400:
                where = resp.headers.get("Location")
                raise PrometheusError(
                    "redirected",
                    f"HTTP {resp.status} redirect to {_short(repr(where)) if where else '(none)'}"
                    " not followed: set metrics.prometheus.url to the address that answers",
                )
            if resp.status != 200:
                ours, text = _error_text(await _read_capped(resp, ERROR_BODY_BYTES, cut=True))
                retry = _retry_after(resp.headers.get("Retry-After"))
                message = f"HTTP {resp.status}: {text}"
                if resp.status == 429:
                    raise PrometheusError("rate_limited", message, retry)
                if resp.status in (502, 503, 504):
                    # Prometheus itself answers 503 for a query timeout or an overload.
                    raise PrometheusError("unavailable", message, retry)
                # 400 bad_data (the PromQL), 422 execution: the query is wrong, not the server.
                raise PrometheusError("query_error" if ours else "http_error", message)
            if resp.content_length is not None and resp.content_length > limit:
                raise PrometheusError(
                    "too_large",
                    f"answer of {resp.content_length} bytes is larger than maxResponseBytes "
                    f"({limit} bytes)",
                )
            if big:  # the chunks, joined in the worker thread
                return await _read_chunks(resp, limit)
            return await _read_capped(resp, limit)

    def _account(
        self, signal: str, promql: str, vector: Vector, node_label: str, startup: bool
    ) -> dict[str, Sample] | None:
        m = self.metrics
        m.series.labels(signal).set(vector.series)
        for reason, count in vector.rejected.items():
            m.rejected.labels(signal, reason).inc(count)
        if vector.unmapped:
            m.unmapped.labels(signal).inc(vector.unmapped)
        if vector.series == 0:
            message = (
                f"the query matches no series; is the recording rule loaded "
                f"(config/prometheus-rules.yaml) and does every series keep the {node_label!r} "
                f"label?"
            )
            if startup:
                log.warning(
                    "prometheus: signal %r has NO DATA at start-up: %s query: %s",
                    signal,
                    message,
                    promql,
                )
                self._problems[signal] = "empty"
            self._failed(signal, "empty", message, promql)
            return None
        dropped = sum(vector.rejected.values()) + vector.unmapped
        detail = ""
        if dropped:
            kinds = dict(vector.rejected)
            if vector.unmapped:
                kinds["unmapped"] = vector.unmapped
            detail = (
                f"{dropped} of {vector.series} series unusable ("
                + ", ".join(f"{k}={n}" for k, n in sorted(kinds.items()))
                + "); e.g. "
                + "; ".join(vector.examples[k] for k in sorted(kinds) if k in vector.examples)
            )
        if not vector.samples:
            self._failed(signal, "no_valid_samples", detail, promql)
            return None
        m.queries.labels(signal, "ok").inc()
        self.results[signal] = "ok"
        problem = "partial:" + ",".join(sorted(vector.rejected)) if dropped else ""
        if problem != self._problems.get(signal, ""):
            if problem:
                log.warning("prometheus: signal %r: %s (query: %s)", signal, detail, promql)
            else:
                log.info(
                    "prometheus: signal %r healthy again: %d nodes", signal, len(vector.samples)
                )
        self._problems[signal] = problem
        return vector.samples

    def _failed(self, signal: str, result: str, message: str, promql: str) -> None:
        """Count a failed query; log it when its kind differs from the last one logged."""
        self.metrics.queries.labels(signal, result).inc()
        self.results[signal] = result
        if self._problems.get(signal) != result:
            keeping = "keeping its previous samples until they go stale"
            log.warning(
                "prometheus: signal %r query failed (%s), %s: %s (query: %s)",
                signal,
                result,
                keeping,
                message,
                promql,
            )
        self._problems[signal] = result

    # --- the loop ---------------------------------------------------------------------------------

    def next_delay(self) -> float:
        """Seconds until the next refresh: the interval with jitter, at least any Retry-After."""
        interval = self.settings.refreshInterval
        delay = interval * (1.0 + JITTER * (2.0 * self._rand() - 1.0))
        if self.retry_after is not None:
            delay = max(delay, min(self.retry_after, MAX_RETRY_AFTER_S))
        return max(delay, MIN_INTERVAL_S)

    async def run(self) -> None:
        """Refresh after every :meth:`next_delay`, forever; the first refresh is the caller's.

        Cancelling it is the way to stop it; the session is closed on the way out.
        """
        try:
            while True:
                await self._sleep(self.next_delay())
                await self.refresh()
        finally:
            await self.close()


def build(context: SourceContext) -> PrometheusSource:
    """The ``prometheus`` source: metrics registered once per registry, and the instance
    address map from the cluster cache when there is one."""
    source = PrometheusSource(
        context.store,
        context.collectors.get(PrometheusSourceMetrics),
        pod_metrics=context.collectors.get(PodUsageMetrics),
    )
    if context.cluster is not None:
        source.follow(context.cluster)
        if pod_switch(context.settings, "prometheus").enabled:
            source.produces = frozenset({"nodes", "pods"})
    return source


__all__ = [
    "REASONS",
    "RESULTS",
    "PodVector",
    "PrometheusError",
    "PrometheusSource",
    "PrometheusSourceMetrics",
    "Vector",
    "build",
    "check_pod_answer",
    "parse_pod_vector",
    "parse_vector",
]
