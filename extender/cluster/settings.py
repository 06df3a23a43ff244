"""Tunables of the cluster cache, each with the reason for its default."""

from __future__ import annotations

from dataclasses import dataclass

POD_FIELD_SELECTOR = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
"""Bound pods that still hold their node's resources: the only pods decisions count."""


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    page_size: int = 500
    """Objects per list page (``limit``), as client-go's pager. 500 Pods are 2-3 MB of JSON: one
    page in memory at a time keeps a 150,000-pod relist far below the memory budget, where one
    unpaged list would be 600 MB of bytes before a single record is built."""
    list_timeout_s: float = 60.0
    """Bound on one list page request, body included. A page takes well under a second from a
    healthy API server; a minute only fails on one that is stuck."""
    watch_timeout_s: int = 300
    """Server-side ``timeoutSeconds`` of a watch is drawn from [this, twice this), as client-go's
    reflector does (5-10 minutes): reconnections of many clients spread out, and every stream is
    renewed now and then even if nothing else ends it."""
    watch_margin_s: float = 30.0
    """Client-side bound on a whole watch request beyond its ``timeoutSeconds``: an API server
    that does not end the stream when it said it would is cut off this much later."""
    read_timeout_s: float = 120.0
    """A watch that delivers no line (event or bookmark) for this long is presumed stuck (a dead
    connection that TCP has not noticed) and resumed from the last resourceVersion. API servers
    send a bookmark about every minute to watchers that ask for them, so a healthy stream is never
    this quiet; resuming one that merely was is cheap."""
    backoff_initial_s: float = 0.8
    """First delay after a failed list or watch (client-go's reflector starts at 800 ms)."""
    backoff_max_s: float = 30.0
    """Longest delay between attempts while the API server keeps failing (client-go: 30 s)."""
    backoff_factor: float = 2.0
    """Growth of the delay per consecutive failure."""
    publish_interval_s: float = 0.1
    """Shortest time between two publications to the store while events flow. A publication
    rebuilds the snapshot (about 5 ms at 5,000 nodes), so at most 5% of one core goes to it
    under any event rate, and a just-bound pod counts in decisions within ~0.1 s. The first
    event after a quiet spell is published at once."""
    tick_s: float = 5.0
    """When no events come, the cache is still checked this often: recent pods that leave the
    estimation window are dropped from the placements, and a policy whose estimation settings
    changed triggers a pod relist (estimates are computed when a pod is decoded)."""
    slice_items: int = 50
    """Objects decoded and applied between two yields to the event loop: about 0.6 ms of work,
    so a request arriving during a relist or a burst of events waits that long at most."""
    freeze_gc_after_sync: bool = True
    """After the first full sync, move every object alive (imports, the client's validators, the
    cache) out of the cyclic garbage collector's reach with :func:`gc.freeze`. Without it a full
    collection walks some 160,000 long-lived objects, holding the event loop for 30-100 ms, and
    a relist allocates enough to trigger one or two. Records are untracked (``gc=False``) either
    way; frozen objects are still freed by reference counting, only cycles among them are not."""

    priority_classes: bool = False
    """Also list and watch PriorityClasses (scheduling.k8s.io/v1), so that a dry run of a
    manifest that names a class but has no ``spec.priority`` is judged at the class's value.
    Off by default: it needs list and watch on ``priorityclasses`` in the extender's ClusterRole,
    and without them its reflector would retry a 403 forever; decisions never need it."""


DEFAULT_SETTINGS = ClusterSettings()
