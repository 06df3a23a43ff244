"""A policy edit delivered as a ConfigMap volume delivers it (a new ``..<timestamp>`` folder, then
the ``..data`` symlink swapped to it) changes where the next pod goes (test 7 of issue 18)."""

from __future__ import annotations

import copy

from tests.e2e.harness import Scenario, wait_until

WARM, COOL = 0.45, 0.10
"""The batch tier scores by targetLoad towards 0.5 (a node just over the target scores about half):
the warm node, just under it, is its favourite while the ceiling (0.60) allows it; the edit
lowers the ceiling under it."""
EDITED_CEILING = 0.40


def test_a_configmap_style_policy_swap_changes_the_next_placement(scenario: Scenario) -> None:
    sc = scenario
    warm = sc.node("warm", WARM, cores=16)
    cool = sc.node("cool", COOL, cores=16)
    sc.wait_extender_sees()
    assert sc.wait_bound([sc.pod("first", "batch")]) == {"first": warm}

    assert sc.s.ext.policy is not None
    edited = copy.deepcopy(sc.s.ext.policy)
    (batch,) = [t for t in edited["tiers"] if t["name"] == "batch"]
    batch["filter"]["cpu"] = EDITED_CEILING
    assert sc.s.ext.policy_path.is_symlink()
    sha = sc.s.ext.swap_policy(edited)
    wait_until(
        "the extender to load the edited policy",
        lambda: sc.s.ext.readyz()[1].get("policySha256") == sha,
        lambda: f"readyz: {sc.s.ext.readyz()}",
    )
    assert sc.wait_bound([sc.pod("second", "batch")]) == {"second": cool}
    # By the edited ceilings, only the pod placed under the old policy is over.
    assert sc.above_ceiling(["first", "second"], edited) == [
        f"first (batch) bound on {warm} at cpu {WARM:.3f} > {EDITED_CEILING}"
    ]
