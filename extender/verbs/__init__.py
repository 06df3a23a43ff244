"""kube-scheduler's verbs without HTTP: bytes in, bytes out, with the decision log."""

from extender.verbs.decisions import Decision, DecisionLog
from extender.verbs.service import VERBS, NullObserver, Observer, Reply, Verbs

__all__ = ["VERBS", "Decision", "DecisionLog", "NullObserver", "Observer", "Reply", "Verbs"]
