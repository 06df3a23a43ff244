"""One root for the package's errors: every public exception class derives from it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import extender
from extender.errors import (
    ClusterError,
    ConfigError,
    InputError,
    PriorityExtenderError,
    SimulationError,
    SourceError,
)


def _public_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(extender.__path__, "extender."):
        if info.name.endswith(".__main__"):
            continue  # importing it runs the CLI
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("extender.")
                and not name.startswith("_")
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_public_exception_has_the_package_root() -> None:
    found = _public_exceptions()
    assert len(found) >= 15  # the tree in extender/errors.py; a walk that finds none is broken
    strays = sorted(
        name for name, cls in found.items() if not issubclass(cls, PriorityExtenderError)
    )
    assert strays == []


@pytest.mark.parametrize(
    ("name", "branch"),
    [
        ("extender.policy.loader.PolicyError", ConfigError),
        ("extender.simulate.scenario.ScenarioError", ConfigError),
        ("extender.sources.static.StaticFileError", ConfigError),
        ("extender.server.tls.TLSConfigError", ConfigError),
        ("extender.cluster.connect.ClusterConfigError", ConfigError),
        ("extender.wire.codec.WireError", InputError),
        ("extender.core.quantity.QuantityError", InputError),
        ("extender.cluster.decode.DecodeError", InputError),
        ("extender.sources.prometheus.PrometheusError", SourceError),
        ("extender.sources.metrics_server.MetricsServerError", SourceError),
        ("extender.cluster.reflector.Gone", ClusterError),
        ("extender.simulate.capture.CaptureError", SimulationError),
    ],
)
def test_each_error_sits_on_its_branch(name: str, branch: type[Exception]) -> None:
    assert issubclass(_public_exceptions()[name], branch)


def test_value_errors_stay_value_errors() -> None:
    """Callers that caught ValueError before the tree existed still catch these."""
    from extender.core.quantity import QuantityError
    from extender.sources.static import StaticFileError
    from extender.wire.codec import WireError

    for cls in (QuantityError, StaticFileError, WireError):
        assert issubclass(cls, ValueError)
