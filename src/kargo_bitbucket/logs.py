"""Logging set-up: one JSON object per line when not on a terminal, readable lines otherwise."""

from __future__ import annotations

import itertools
import logging
import sys
import time
from datetime import datetime
from typing import Any, TextIO

import orjson

from kargo_bitbucket.bounds import LOG_FIELD_LIMIT, clip

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "color_message",
}


# LogRecord.__init__ sets these first; ``extra`` fields are added after them, in order.
_FIRST_EXTRA = len(vars(logging.makeLogRecord({})))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields a call attached to a record, long text cut (``LOG_FIELD_LIMIT``)."""
    attributes = itertools.islice(vars(record).items(), _FIRST_EXTRA, None)
    return {
        k: clip(v, LOG_FIELD_LIMIT) if isinstance(v, str) and len(v) > LOG_FIELD_LIMIT else v
        for k, v in attributes
        if k not in _STANDARD and not k.startswith("_")
    }


def _message(record: logging.LogRecord) -> str:
    """The formatted message, cut to ``LOG_FIELD_LIMIT``."""
    return clip(record.getMessage(), LOG_FIELD_LIMIT)


class Throttle:
    """At most ``rate`` lines a second per key; the lines held back are counted.

    For what anyone can cause (unsigned requests): the log says how much happened
    without growing with it.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._windows: dict[str, list[int]] = {}  # key: [second, lines let through, held back]

    def admit(self, key: str) -> int | None:
        """None to hold a line back; else how many were held back before this one."""
        second = int(time.monotonic())
        window = self._windows.get(key)
        if window is None or window[0] != second:
            held = window[2] if window is not None else 0
            self._windows[key] = [second, 1, 0]
            return held
        if window[1] < self.rate:
            window[1] += 1
            return 0
        window[2] += 1
        return None


class JsonFormatter(logging.Formatter):
    """``{"time","level","logger","msg",...extra}`` on one line."""

    _second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        """``2026-11-27T08:36:40.264+00:00``, the seconds part formatted once per second."""
        seconds = int(created)
        cached, stamp = self._second
        if cached != seconds:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._second = (seconds, stamp)
        return f"{stamp}.{int((created - seconds) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level message key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _fields(record).items() if v not in ("", None))
        text = f"{stamp} {record.levelname.lower():7} {_message(record)}"
        if extras:
            text += f"  {extras}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Route every logger (ours and uvicorn's) to ``stream`` in the chosen format."""
    stream = stream or sys.stderr
    # No line shows the caller's file, thread or process: skip gathering them (the
    # logging HOWTO's "Optimization" section; it was a third of each delivery's log cost).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    use_json = not stream.isatty() if json is None else json
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in ("httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)
