"""End-to-end tests against a real control plane: etcd, kube-apiserver, kube-scheduler v1.28.7,
a real Prometheus scraping a node_exporter emulation, and the extender as a subprocess.

The harness modules are importable on their own (``from tests.e2e.controlplane import ...``) so
that benchmarks can start the same control plane without pytest.
"""
