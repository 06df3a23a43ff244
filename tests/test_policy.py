"""Policy loading: every error at once, each at its exact line and column."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from extender.cli import policy_schema
from extender.core import EstimateFrom, OnStale, Strategy
from extender.policy import PolicyError, embedded_default, load_file, load_text, parse_duration

ROOT = Path(__file__).parent.parent
CONFIG = ROOT / "config"

GOOD = """\
apiVersion: priority-extender.io/v1alpha1
kind: PriorityPolicy
tiers:
- name: batch
  match: {maxPriority: 0}
  filter: {cpu: 0.6}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyError) as err:
        load_text(textwrap.dedent(text), "p.yaml")
    return err.value.issues


@pytest.mark.parametrize("name", ["policy.yaml", "policy-static.yaml"])
def test_shipped_examples_are_valid(name):
    loaded = load_file(CONFIG / name)
    assert [t.name for t in loaded.rules.tiers] == [
        "system-critical",
        "production",
        "batch",
        "standard",
    ]
    assert loaded.rules.default_tier.name == "standard"


def test_embedded_default_is_the_static_example():
    embedded = embedded_default()
    shipped = load_file(CONFIG / "policy-static.yaml")
    assert embedded.sha256 == shipped.sha256
    assert embedded.document.metrics.source == "static"


def test_schema_in_config_is_current():
    on_disk = json.loads((CONFIG / "policy.schema.json").read_text())
    assert on_disk == policy_schema(), (
        "run: priority-extender policy schema > config/policy.schema.json"
    )


def test_minimal_policy_compiles_with_defaults():
    rules = load_text(GOOD, "p.yaml").rules
    (batch,) = rules.tiers
    assert batch.match.max_priority == 0
    assert batch.ceilings == {"cpu": 0.6}
    assert batch.strategy is Strategy.LEAST_LOADED
    assert batch.weights == {"cpu": 1.0, "memory": 1.0}
    assert batch.on_stale is OnStale.ALLOW
    assert rules.default_tier.name == "default"
    assert rules.default_tier.ceilings == {}
    assert rules.max_age_s == 60.0
    assert rules.estimation.prefer is EstimateFrom.REQUESTS
    assert rules.estimation.default_cpu == pytest.approx(0.1)
    assert rules.bypass.daemonsets
    assert rules.bypass.namespaces == frozenset({"kube-system"})


def test_every_error_at_once_at_exact_positions():
    issues = errors(
        """\
        apiVersion: priority-extender.io/v2
        kind: PriorityPolicy
        metrics:
          maxAge: 5q
          signals: {cpu: "q1", cpu: "q2"}
        tiers:
        - name: batch
          match: {minPriority: 10, maxPriority: 1}
          filter: {cpu: 0.6, gpu: 0.5}
          score: {strategy: leastLoaded, target: 1.5}
          onStale: no
        - name: batch
          version: 2
          match: {priorityClassNames: [1.10]}
        defaultTier: nope
        """
    )
    assert issues == [
        "p.yaml:1:13: apiVersion: unsupported apiVersion 'priority-extender.io/v2'; "
        "supported: priority-extender.io/v1alpha1",
        "p.yaml:4:11: metrics.maxAge: invalid duration '5q': use a number with s, m, h or ms "
        "(15s, 1m30s)",
        "p.yaml:5:24: metrics.signals.cpu: duplicate key 'cpu' (first defined at line 5)",
        "p.yaml:8:24: tiers[0].match.minPriority: minPriority 10 is above maxPriority 1",
        "p.yaml:9:22: tiers[0].filter.gpu: signal 'gpu' is not declared in metrics.signals (cpu)",
        "p.yaml:10:42: tiers[0].score.target: Input should be less than 1",
        "p.yaml:11:12: tiers[0].onStale: 'no' is a boolean in YAML 1.1 but a string in YAML 1.2: "
        "write true or false, or quote it ('no') if you mean the text",
        "p.yaml:12:9: tiers[1].name: duplicate tier name 'batch' (also tiers[0])",
        "p.yaml:13:3: tiers[1].version: unknown field 'version'",
        "p.yaml:14:32: tiers[1].match.priorityClassNames[0]: expected text, got the number 1.10: "
        "quote it ('1.10') if you mean the text",
        "p.yaml:15:14: defaultTier: defaultTier 'nope' is not one of the tiers: batch",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["p.yaml:1:1: (document): the document is empty"]),
        ("- a\n- b\n", ["p.yaml:1:1: (document): a policy must be a mapping (apiVersion, kind, tiers, ...)"]),
        ("a: [1,\n", ["p.yaml:2:1: (document): YAML syntax error: expected the node content, but found '<stream end>'"]),
        ("a: 1\n---\nb: 2\n", ["p.yaml:2:1: (document): YAML syntax error: but found another document"]),
        (
            "apiVersion: priority-extender.io/v1alpha1\nkind: PriorityPolicy\n",
            ["p.yaml:1:1: tiers: required field 'tiers' is missing"],
        ),
        (
            GOOD + "on: true\n",
            [
                # one problem per value: the YAML pass's
                "p.yaml:7:1: on: key 'on' is a boolean in YAML 1.1: quote it if you mean the text",
            ],
        ),
        (
            GOOD + "bypass: {daemonSets: yes}\n",
            ["p.yaml:7:22: bypass.daemonSets: 'yes' is a boolean in YAML 1.1 but a string in "
             "YAML 1.2: write true or false, or quote it ('yes') if you mean the text"],
        ),
        (
            GOOD + "estimation: {defaults: {cpu: 12cores}}\n",
            ["p.yaml:7:30: estimation.defaults.cpu: invalid quantity '12cores'"],
        ),
        (
            GOOD + "metrics: {maxAge: .nan}\n",
            ["p.yaml:7:19: metrics.maxAge: a duration must be a finite number of seconds"],
        ),
        (
            GOOD.replace("cpu: 0.6", "cpu: .inf"),
            ["p.yaml:6:17: tiers[0].filter.cpu: Input should be a finite number"],
        ),
        (
            GOOD + "bypass: {podSelector: {matchExpressions: [{key: a, operator: In}]}}\n",
            ["p.yaml:7:43: bypass.podSelector.matchExpressions[0].values: operator In needs at "
             "least one value"],
        ),
        (
            GOOD.replace("tiers:", "xa: &a [1]\nxb: *a\nz: !!python/object:os.system x\ntiers:"),
            [
                "p.yaml:3:1: xa: unknown field 'xa'",
                "p.yaml:4:1: xb: unknown field 'xb'",
                "p.yaml:5:4: z: unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'",
            ],
        ),
    ],
)  # fmt: skip
def test_problem_cases(text, expected):
    assert errors(text) == expected


def test_billion_laughs_is_bounded():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    issues = errors("\n".join(lines) + "\n")
    # Refused at the alias that would cross the bound, before anything is expanded.
    assert issues == ["p.yaml:5:45: a4[7]: alias *a3 expands the document past 100000 values"]


def test_unreadable_and_binary_files(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_file(tmp_path / "missing.yaml")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_file(binary)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), (15, 15), (0.25, 0.25)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1d", "s", "1m 30s", "-5s"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "metrics: {maxAge: 0s}\n",
            "p.yaml:7:19: metrics.maxAge: Input should be greater than 0",
        ),
        (
            "metrics: {prometheus: {timeout: 0}}\n",
            "p.yaml:7:33: metrics.prometheus.timeout: Input should be greater than 0",
        ),
        (
            "metrics: {prometheus: {ranges: {gpu: [0, 1]}}}\n",
            "p.yaml:7:33: metrics.prometheus.ranges.gpu: signal 'gpu' is not declared in "
            "metrics.signals (cpu, memory)",
        ),
    ],
)
def test_intervals_and_ranges(extra, expected):
    assert errors(GOOD + extra) == [expected]
