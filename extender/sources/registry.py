"""The registry of metrics sources: each ``metrics.source`` value to the function that builds it.

The server asks :func:`build_source` for the source the policy names and knows nothing else of
it. ``none`` (request-based scoring only) builds nothing. Adding a source is a module with a
``build(context)`` and a line here; the policy model's ``metrics.source`` lists the same names
(a test checks that both agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from extender.sources import metrics_server, prometheus, static
from extender.sources.base import Source, SourceContext, SourceFactory

NO_SOURCE = "none"
"""The ``metrics.source`` value that means no live source at all."""

SOURCES: Mapping[str, SourceFactory] = MappingProxyType(
    {
        "static": static.build,
        "prometheus": prometheus.build,
        "metrics-server": metrics_server.build,
    }
)
"""``metrics.source`` to the function that builds that source (not started)."""


def build_source(context: SourceContext) -> Source | None:
    """The source ``context.settings.source`` names, built but not started; None for ``none``
    or for a source that cannot run with this context (it logs why)."""
    name = context.settings.source
    if name == NO_SOURCE:
        return None
    factory = SOURCES.get(name)
    if factory is None:  # the policy model allows only the names above; a bug if reached
        raise ValueError(f"no metrics source named {name!r}; known: {', '.join(SOURCES)}")
    return factory(context)


__all__ = ["NO_SOURCE", "SOURCES", "build_source"]
