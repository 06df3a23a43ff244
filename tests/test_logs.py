"""Log lines cannot be forged: names from requests (a pod's name, a message built from a request)
stay on one line, escaped, in text and in JSON format (issue 17, low item)."""

from __future__ import annotations

import json
import logging

import pytest

from extender import logs
from extender.logs import JsonFormatter, TextFormatter, bind_pod

FORGED = "web\n2026-12-02 00:00:00,000 ERROR   extender: forged\r\x1b[2J\x00\x85\u2028end"
#: How the text format shows it: every control character as an escape, on one line.
SHOWN = r"web\n2026-12-02 00:00:00,000 ERROR   extender: forged\r\x1b[2J\x00\x85\u2028end"


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad name {FORGED}")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("extender.test", logging.WARNING, __file__, 1, msg, args, exc_info)


@pytest.mark.parametrize("fmt", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_newline_in_a_pod_name_does_not_forge_a_line(fmt):
    with bind_pod("prod", FORGED, "uid-1"):
        line = fmt.format(record("filter: rejected pod %s", FORGED))
    for char in ("\n", "\r", "\x1b", "\x00", "\x85", "\u2028"):
        assert char not in line
    if isinstance(fmt, JsonFormatter):
        doc = json.loads(line)
        assert doc["msg"] == f"filter: rejected pod {FORGED}"  # escaped, not lost
        assert doc["pod"] == f"prod/{FORGED}"
    else:
        assert f"filter: rejected pod {SHOWN} [pod=" in line
        assert line.endswith(f"[pod=prod/{SHOWN}]")


def test_a_traceback_keeps_every_continuation_line_indented():
    lines = TextFormatter().format(record("failed", exc=True)).split("\n")
    assert lines[0].endswith("failed")
    assert all(line.startswith(" ") for line in lines[1:]), lines


def test_escape_leaves_ordinary_text_alone():
    text = "default/web-7d9f-xk2p2 naïve ☃ tab-free"
    assert logs.escape(text) == text
    assert logs.escape("a\tb") == "a\\tb"
