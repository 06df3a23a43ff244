"""Adapters that produce snapshot parts: the static file, Prometheus and metrics-server.

:mod:`extender.sources.base` defines what a source is (its context and lifecycle);
:mod:`extender.sources.registry` maps ``metrics.source`` names to the modules that build them.
"""
