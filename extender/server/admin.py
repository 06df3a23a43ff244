"""Admin-port endpoints that explain decisions: the decision log, dry runs and the snapshot.

* ``GET /decisions?pod=NS/NAME|UID[&top=N]`` — recent decisions for a pod, newest first: the
  ranking, rejected nodes grouped by reason, and the inputs behind the top ``N`` nodes.
* ``POST /dry-run[?nodes=a,b][&top=N]`` — a Pod manifest (JSON or YAML) in, the decision it would
  get against the current snapshot out (over every known node unless ``nodes`` is given).
  Nothing is recorded, nothing changes.
* ``GET /snapshot`` — everything decisions read, as a file that ``priority-extender explain
  --snapshot`` replays offline with a policy file; with the cluster's PriorityClasses
  (``priorityClasses``) when the extender watches them (``--cluster-priority-classes``).

A manifest without ``spec.priority`` (admission sets it from ``priorityClassName``, or from the
globalDefault class) is judged at the class's value when the cluster's PriorityClasses are
known; otherwise at priority 0, and the answer says so in ``warnings``.

With ``--admin-auth kubernetes`` these endpoints need a Kubernetes bearer token
(:mod:`extender.server.authz`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from extender.cluster.cache import PriorityClasses
from extender.core import Candidates, PodInfo, evaluate, snapshot_to_dict, summarize
from extender.policy.yamlpos import ManifestError, manifest_json
from extender.store import SnapshotStore
from extender.verbs import DecisionLog
from extender.wire import WireError, decode_pod
from extender.wire.streams import read_at_most

#: Largest Pod manifest accepted by the dry run; real pods are a few KB.
MAX_MANIFEST_BYTES = 1 << 20
#: Nodes whose full inputs are listed unless ``top`` says otherwise.
DEFAULT_TOP = 5


def content_encoding_problem(headers: CIMultiDictProxy[str]) -> str | None:
    """Why a request's ``Content-Encoding`` is refused, or None for none or ``identity``.

    Both ports serve with aiohttp's ``auto_decompress`` off and refuse any other encoding with
    415 before a byte of the body is read: kube-scheduler never compresses, and a 1 MB gzip body
    inflates to 1 GiB before any size limit could see it.
    """
    values = headers.getall("Content-Encoding", [])
    codings = [c.strip().lower() for value in values for c in value.split(",")]
    refused = [c for c in codings if c and c != "identity"]
    if not refused:
        return None
    shown = ", ".join(refused)[:100]
    return (
        f"unsupported Content-Encoding {shown!r}: send the body uncompressed (identity); "
        "kube-scheduler never compresses its requests"
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _top(request: web.Request) -> int | None:
    raw = request.query.get("top")
    if raw is None:
        return DEFAULT_TOP
    if raw == "all":
        return None
    if not raw.isdigit():
        raise web.HTTPBadRequest(reason="top must be a whole number or 'all'")
    return int(raw)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=1, allow_nan=False)


@dataclasses.dataclass(frozen=True, slots=True)
class AdminCluster:
    """What the admin port takes from the cluster source, when the extender has one."""

    api_client: Any
    """The ``kubernetes.aio`` ApiClient the cluster source owns (``--admin-auth kubernetes``
    sends its TokenReviews and SubjectAccessReviews through it)."""
    priority_classes: PriorityClasses | None = None
    """The cluster's PriorityClasses, when they are watched (``--cluster-priority-classes``)."""


def unresolved_priority(manifest: object) -> str | None:
    """The PriorityClass name a manifest leaves to admission to resolve: it names one (or none:
    ``""``, the cluster's globalDefault) and has no ``spec.priority``. None when it sets
    ``spec.priority`` itself, as a pod read back from the API always does."""
    spec = manifest.get("spec") if isinstance(manifest, dict) else None
    if not isinstance(spec, dict) or spec.get("priority") is not None:
        return None
    name = spec.get("priorityClassName")
    return name if isinstance(name, str) else ""


def priority_warning(class_name: str, judged: int, why: str = "") -> str:
    """The ``warnings`` entry of a decision whose manifest's PriorityClass was not resolved."""
    if class_name:
        return (
            f"spec.priority is not set and PriorityClass {class_name!r} was not resolved "
            f"here{why}: judged as priority {judged}; set spec.priority to its value "
            f"(kubectl get priorityclass {class_name}) for a true answer"
        )
    return (
        f"spec.priority is not set{why}: judged as priority {judged}; in the cluster the "
        "globalDefault PriorityClass, if there is one, would set it"
    )


def resolve_priority(
    pod: PodInfo, class_name: str, classes: PriorityClasses | None
) -> tuple[PodInfo, str | None]:
    """``pod`` at the priority admission would give it for ``class_name`` (``""``: the
    globalDefault class, else 0), and None; or ``pod`` as it is and the warning why not."""
    if classes is None:
        why = " (the extender does not watch PriorityClasses: --cluster-priority-classes)"
        return pod, priority_warning(class_name, pod.priority, why)
    if not classes.synced:
        why = " (the cluster's PriorityClasses are not listed yet)"
        return pod, priority_warning(class_name, pod.priority, why)
    if not class_name:
        for name, record in classes.classes.items():
            if record.global_default:
                return dataclasses.replace(
                    pod, priority=record.value, priority_class_name=name
                ), None
        return dataclasses.replace(pod, priority=0), None  # no globalDefault: admission sets 0
    value = classes.resolve(class_name)
    if value is None:
        why = " (the cluster has no such PriorityClass: admission would refuse the pod)"
        return pod, priority_warning(class_name, pod.priority, why)
    return dataclasses.replace(pod, priority=value), None


def priority_classes_doc(classes: PriorityClasses) -> dict[str, dict[str, Any]]:
    """The ``priorityClasses`` of a snapshot file, as offline explain reads them."""
    return {
        name: {"value": record.value, "globalDefault": record.global_default}
        for name, record in sorted(classes.classes.items())
    }


class AdminViews:
    """The explain endpoints over a store and the verbs' decision log."""

    def __init__(
        self,
        store: SnapshotStore,
        decisions: DecisionLog,
        clock: Callable[[], float] = time.time,
        priority_classes: PriorityClasses | None = None,
    ) -> None:
        self.store = store
        self.log = decisions
        self.clock = clock
        self.priority_classes = priority_classes
        """The cluster's PriorityClasses (None: not watched): what a manifest without
        ``spec.priority`` is judged at."""

    async def decisions(self, request: web.Request) -> web.Response:
        pod = request.query.get("pod", "").strip()
        if not pod:
            return _error(400, "give the pod as ?pod=namespace/name or ?pod=UID")
        top = _top(request)
        found = self.log.find(pod)
        if not found:
            return _error(404, f"no recent decision for pod {pod!r} (the log keeps the latest)")
        out = [
            {
                "at": d.at,
                "verb": d.verb,
                **summarize(d.evaluation, top),
                **({"note": d.note} if d.note else {}),
            }
            for d in found
        ]
        return web.json_response(out, dumps=_dumps)

    async def dry_run(self, request: web.Request) -> web.Response:
        refused = content_encoding_problem(request.headers)
        if refused is not None:
            return _error(415, refused)
        if request.content_length is not None and request.content_length > MAX_MANIFEST_BYTES:
            return _error(413, f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        body, over = await read_at_most(request.content, MAX_MANIFEST_BYTES)
        if over:
            return _error(413, f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
        if not body.strip():
            return _error(400, "post a Pod manifest (JSON or YAML)")
        try:
            # In a worker thread: a large YAML manifest takes a second or more to parse, and
            # this event loop also answers kube-scheduler.
            data = await asyncio.to_thread(manifest_json, body)
            pod = decode_pod(data)
        except ManifestError as exc:
            return _error(400, "not a Pod manifest: " + "; ".join(exc.issues))
        except WireError as exc:
            return _error(400, f"not a Pod manifest: {exc}")
        top = _top(request)
        warning = None
        class_name = unresolved_priority(json.loads(data))
        if class_name is not None:
            pod, warning = resolve_priority(pod, class_name, self.priority_classes)
        state = self.store.current
        nodes = request.query.get("nodes")
        names = [n for n in nodes.split(",") if n] if nodes else list(state.snapshot.names)
        now = self.clock()
        evaluation = evaluate(pod, Candidates(names), state.snapshot, state.policy.rules, now)
        # The pods behind each node's load come from the snapshot decided on; a logged
        # decision's snapshot is gone, so only the dry run (decided now) lists them.
        out = {"at": now, **summarize(evaluation, top, state.snapshot, state.policy.rules)}
        if warning is not None:
            out["warnings"] = [*out.get("warnings", []), warning]
        return web.json_response(out, dumps=_dumps)

    async def snapshot(self, request: web.Request) -> web.Response:
        snap = self.store.current.snapshot
        out = snapshot_to_dict(snap, self.clock())
        classes = self.priority_classes
        if classes is not None and classes.synced:
            out["priorityClasses"] = priority_classes_doc(classes)
        return web.json_response(out, dumps=_dumps)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/decisions", self.decisions)
        app.router.add_post("/dry-run", self.dry_run)
        app.router.add_get("/snapshot", self.snapshot)
