"""Logging: one JSON object per line in production, readable lines on a terminal.

The pod a request is about is bound with :func:`bind_pod` for the duration of that request, and
every line logged meanwhile carries it (``pod``, ``podUID``), so a platform team can grep one
pod's story out of the extender's logs.

Text lines escape control characters (``\\n``, ``\\x1b``, ...) in the message and in the bound
pod, since both carry names from requests: a newline in a pod name must not forge a second log
line, nor an escape sequence repaint the terminal. JSON lines are safe by construction
(``json.dumps`` escapes every control character, and with ``ensure_ascii`` every non-ASCII one).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

_pod: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "pod", default=None
)
"""(namespace, name, uid) of the pod being decided; formatted only when a line is logged."""

#: Attributes every LogRecord has; anything else passed with ``extra=`` is emitted as a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class PodBinding:
    """The pod bound to log lines for a ``with`` block (see :func:`bind_pod`). A class, not a
    generator-based context manager: every request enters one, and this costs a third."""

    __slots__ = ("_pod", "_token")

    def __init__(self, namespace: str, name: str, uid: str) -> None:
        self._pod = (namespace, name, uid)
        self._token: contextvars.Token[tuple[str, str, str] | None] | None = None

    def __enter__(self) -> None:
        self._token = _pod.set(self._pod)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _pod.reset(self._token)
            self._token = None


def bind_pod(namespace: str, name: str, uid: str = "") -> PodBinding:
    """Within ``with bind_pod(...)``, every log line names the pod."""
    return PodBinding(namespace, name, uid)


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
            out["pod"], out["podUID"] = f"{pod[0]}/{pod[1]}", pod[2]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


#: C0 controls, DEL, C1 controls (NEL among them) and the Unicode line and paragraph separators:
#: everything a terminal or a log shipper may take as a line break or an escape sequence.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


def escape(text: str) -> str:
    """``text`` with control characters written as escapes, so that it stays on one line."""
    return _CONTROL.sub(_escape_one, text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)  # set from getMessage() by every format()
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        # A traceback is several lines by nature: each is escaped and indented, so that a
        # newline inside an exception's message cannot start something that looks like a line.
        lines = super().formatException(ei).split("\n")
        return "\n".join(f"  {escape(line)}" for line in lines)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pod = _pod.get()
        return f"{line} [pod={escape(f'{pod[0]}/{pod[1]}')}]" if pod is not None else line


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
