"""A real Prometheus for the end-to-end tests: scrapes the node_exporter emulation every second
and evaluates the project's own ``config/prometheus-rules.yaml`` (its group interval rewritten to
1 s in a temporary copy, as ``tests/prometheus_server.py`` does).

:meth:`LivePrometheus.stop` and :meth:`LivePrometheus.start` again reuse the same port and
storage, so a test can take the source away and bring it back as an outage would.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from tests.e2e import assets
from tests.e2e.procs import Proc, StartError, free_port, http_get

RULES = assets.ROOT / "config" / "prometheus-rules.yaml"
SCRAPE_INTERVAL = "1s"
"""Fast enough that a fresh node has a rate (two scrapes) within about two seconds."""
READY_S = 60.0
"""Prometheus is ready in about a second; storage replay after a restart takes a little more."""
START_ATTEMPTS = 3


class LivePrometheus:
    def __init__(self, folder: Path, exporter_address: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data = folder / "data"
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            group["interval"] = SCRAPE_INTERVAL  # the same expressions, without a 15 s wait
        (folder / "rules.yaml").write_text(yaml.safe_dump(rules))
        (folder / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": SCRAPE_INTERVAL,
                        "scrape_timeout": SCRAPE_INTERVAL,
                        "evaluation_interval": SCRAPE_INTERVAL,
                    },
                    "rule_files": ["rules.yaml"],
                    "scrape_configs": [
                        {
                            "job_name": "node-exporter",
                            # The emulation serves every node, each series with its `node` label.
                            "honor_labels": True,
                            "static_configs": [{"targets": [exporter_address]}],
                        }
                    ],
                }
            )
        )
        self.port = 0
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, fresh: bool = False) -> LivePrometheus:
        """Start (or restart, on the port and storage of the first start). ``fresh`` drops the
        stored samples first: a Prometheus that lost its storage (a pod without a volume)."""
        if fresh:  # a new folder: the old process may still be flushing into the old one
            shutil.rmtree(self.data, ignore_errors=True)
            self.data = self.folder / f"data-{time.monotonic_ns()}"
        for attempt in range(START_ATTEMPTS):
            if not self.port or attempt:
                self.port = free_port()
            self.proc = Proc(
                "prometheus",
                [
                    assets.PROMETHEUS,
                    f"--config.file={self.folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.data}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                self.folder / "prometheus.log",
                cwd=self.folder,
            ).start()
            try:
                self.proc.wait_ready(
                    "ready", lambda: http_get(self.url + "/-/ready", timeout=2)[0] == 200, READY_S
                )
                return self
            except StartError:
                self.proc.stop()
                if attempt == START_ATTEMPTS - 1:
                    raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = http_get(
            self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        )
        if status != 200:
            raise AssertionError(f"query {promql!r}: HTTP {status}: {body[:300]!r}")
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result

    def values(self, record: str = "node:cpu_utilization:ratio") -> dict[str, float]:
        """The rule's current value per node."""
        return {r["metric"].get("node", ""): float(r["value"][1]) for r in self.query(record)}
