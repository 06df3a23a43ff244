"""Adapters that produce snapshot parts: the static file and Prometheus (metrics-server next)."""
