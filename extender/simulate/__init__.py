"""The simulator: replay a workload against a cluster model and compare policies side by side.

kube-scheduler's placement model (:mod:`.scheduler`) drives a discrete-event simulation
(:mod:`.engine`) of a scenario (:mod:`.scenario`, drawn once per seed in :mod:`.workload`); in a
policy run the extender's real decision code answers every call (:mod:`.inprocess`). Results,
tables and plots: :mod:`.results`, :mod:`.report`; a scenario from a live cluster: :mod:`.capture`;
the command: :mod:`.cli`.
"""

from extender.simulate.engine import RunResult, Simulation
from extender.simulate.results import RunSummary, TierRow, summarize
from extender.simulate.scenario import Scenario, ScenarioDocument, ScenarioError, load_scenario
from extender.simulate.workload import Workload, build_workload

__all__ = [
    "RunResult",
    "RunSummary",
    "Scenario",
    "ScenarioDocument",
    "ScenarioError",
    "Simulation",
    "TierRow",
    "Workload",
    "build_workload",
    "load_scenario",
    "summarize",
]
