"""Logging: one JSON object per line in production, readable lines on a terminal.

The pod a request is about is bound with :func:`bind_pod` for the duration of that request, and
every line logged meanwhile carries it (``pod``, ``podUID``), so a platform team can grep one
pod's story out of the extender's logs.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

_pod: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("pod", default=None)

#: Attributes every LogRecord has; anything else passed with ``extra=`` is emitted as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


@contextlib.contextmanager
def bind_pod(namespace: str, name: str, uid: str = "") -> Iterator[None]:
    token = _pod.set((f"{namespace}/{name}", uid))
    try:
        yield
    finally:
        _pod.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        pod = _pod.get()
        if pod is not None:
            out["pod"], out["podUID"] = pod
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pod = _pod.get()
        return f"{line} [pod={pod[0]}]" if pod is not None else line


def setup(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger. ``auto`` is text on a terminal and JSON otherwise."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is off (one line per scheduling call is noise at hundreds per second).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
