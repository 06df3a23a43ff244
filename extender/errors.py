"""The package's exception tree: one root, a branch per kind of failure.

Every error the extender raises on purpose derives from :class:`PriorityExtenderError`, so a
caller embedding the package (or the CLI's top level) can catch them all at once and print one
``error:`` line. Errors of the libraries underneath (aiohttp, msgspec, pydantic, kubernetes) are
chained as ``__cause__``, never leaked bare. Classes that were ``ValueError`` before keep that
base too, so existing ``except ValueError`` callers are unaffected::

    PriorityExtenderError
    ├── ConfigError               something a user wrote cannot be used (message says where)
    │   ├── DocumentError         a YAML document: every issue as file:line:col: path: message
    │   │   ├── PolicyError       the PriorityPolicy
    │   │   └── ScenarioError     a simulator scenario
    │   ├── StaticFileError       the static metrics file
    │   ├── SnapshotFileError     a /snapshot document given to offline explain
    │   ├── TLSConfigError        certificate, key or CA files
    │   └── ClusterConfigError    an explicit kubeconfig
    ├── InputError                a value in a request or an API object that is malformed
    │   ├── WireError             a request body that breaks the kube-scheduler contract
    │   ├── QuantityError         a string that is not a Kubernetes resource quantity
    │   └── DecodeError           an API response or watch event that is not the API's JSON
    ├── SourceError               a metrics source produced nothing usable this refresh
    │   ├── PrometheusError       one query failed (``result`` is its metric label)
    │   └── MetricsServerError    a metrics.k8s.io refresh failed
    ├── ClusterError              talking to the Kubernetes API failed
    │   ├── ApiError              the API answered with an error status
    │   │   └── Gone              410: the resourceVersion is too old, relist
    │   └── StreamError           a watch stream broke mid-way
    └── SimulationError           the simulator could not run
        ├── CaptureError          the cluster or Prometheus could not be read for a capture
        └── ExtenderReplyError    the extender answered a simulated call with ``Error`` set

This module sits below every layer (it imports nothing), so the pure core may use it too.
"""

from __future__ import annotations


class PriorityExtenderError(Exception):
    """Root of every error the package raises on purpose."""


class ConfigError(PriorityExtenderError):
    """Something a user wrote (a file, a flag, a setting) cannot be used; the message says where."""


class InputError(PriorityExtenderError, ValueError):
    """A value received from a caller or the API is malformed; the message names it."""


class SourceError(PriorityExtenderError):
    """A metrics source produced nothing usable this refresh; the last good data stays."""


class ClusterError(PriorityExtenderError):
    """A failure talking to the Kubernetes API (the cache keeps serving from what it has)."""


class SimulationError(PriorityExtenderError):
    """The simulator could not run a scenario or capture one."""


__all__ = [
    "ClusterError",
    "ConfigError",
    "InputError",
    "PriorityExtenderError",
    "SimulationError",
    "SourceError",
]
