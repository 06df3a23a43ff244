"""priority-extender: a kube-scheduler extender that places pods by priority tier and live load."""

__version__ = "0.1.0"
