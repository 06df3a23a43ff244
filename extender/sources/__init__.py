"""Adapters that produce snapshot parts: static file now; Prometheus and metrics-server next."""
