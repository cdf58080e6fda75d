"""Logging set-up: one JSON object per line when not on a terminal, readable lines otherwise."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, BinaryIO, Protocol, TextIO

import orjson

from kargo_bitbucket.bounds import LOG_FIELD_LIMIT, clip
from kargo_bitbucket.core.text import json_c1_escaped, printable

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
    return _cut({k: v for k, v in attributes if k not in _STANDARD and not k.startswith("_")})


def _message(record: logging.LogRecord) -> str:
    """The formatted message, cut to ``LOG_FIELD_LIMIT``."""
    return clip(record.getMessage(), LOG_FIELD_LIMIT)


class Throttle:
    """At most ``rate`` lines a second per key; the lines held back are counted.

    For what anyone can cause (unsigned requests): the log says how much happened
    without growing with it.
    """

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._windows: dict[str, list[int]] = {}  # key: [second, lines let through, held back]

    def admit(self, key: str) -> int | None:
        """None to hold a line back; else how many were held back before this one."""
        second = int(self.clock())
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


SENDER_CAUSED_RATE = 5
"""Lines a second of each of uvicorn's warnings about a request it refused itself."""
_SENDER_CAUSED = frozenset({"Invalid HTTP request received.", "Unsupported upgrade request."})
_WEBSOCKET_ADVICE = "No supported WebSocket library detected"


class SenderCaused(logging.Filter):
    """uvicorn's warnings about requests it refuses before any app sees them (malformed
    HTTP, an ``Upgrade`` header): anyone can cause one per request, so at most
    ``SENDER_CAUSED_RATE`` a second of each, the next saying how many were held back.
    Its advice to install a WebSocket library is dropped: no route here takes WebSockets.
    (One client wrote 250 KB a second of them before.)
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._lines = Throttle(SENDER_CAUSED_RATE, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if not isinstance(message, str):
            return True
        if message.startswith(_WEBSOCKET_ADVICE):
            return False
        if message not in _SENDER_CAUSED:
            return True
        held = self._lines.admit(message)
        if held is None:
            return False
        if held:
            record.msg = f"{message} ({held} more not logged)"
        return True


_sender_caused = SenderCaused()


_second: list[tuple[int, str]] = [(-1, "")]


def _time(created: float) -> str:
    """``2026-11-27T08:36:40.264123Z``, the form of history records and refresh values;
    the seconds part formatted once per second."""
    seconds = int(created)
    cached, stamp = _second[0]
    if cached != seconds:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second[0] = (seconds, stamp)
    return f"{stamp}.{int((created - seconds) * 1_000_000):06d}Z"


def _cut(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with long text cut to ``LOG_FIELD_LIMIT``."""
    return {
        k: clip(v, LOG_FIELD_LIMIT) if isinstance(v, str) and len(v) > LOG_FIELD_LIMIT else v
        for k, v in fields.items()
    }


def _json(stamp: str, level: str, logger: str, message: str, fields: dict[str, Any]) -> bytes:
    """``{"time","level","logger","msg",...fields}`` on one line; C1 controls escaped as
    JSON escapes C0 ones, so that ``kubectl logs`` in a terminal shows what a sender wrote
    (a header's bytes 0x80-0x9F reach us as latin-1) instead of obeying it."""
    line = {"time": stamp, "level": level, "logger": logger, "msg": message, **fields}
    return json_c1_escaped(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE))


def _text(created: float, level: str, message: str, fields: dict[str, Any]) -> str:
    """``HH:MM:SS level message  key=value ...``, for a terminal: what a sender wrote
    (a header, a ref) comes out escaped, not as the terminal's control sequences."""
    stamp = datetime.fromtimestamp(created).strftime("%H:%M:%S")
    extras = " ".join(f"{k}={v}" for k, v in fields.items() if v not in ("", None))
    return printable(f"{stamp} {level:7} {message}" + (f"  {extras}" if extras else ""))


class JsonFormatter(logging.Formatter):
    """``{"time","level","logger","msg",...extra}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        line = _json(
            _time(record.created), record.levelname.lower(), record.name, _message(record), fields
        )
        return line[:-1].decode()


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level message key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = _text(record.created, record.levelname.lower(), _message(record), _fields(record))
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


LEVEL_NAMES = {logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error"}
"""The levels of the lines ``line`` writes."""


class Write(Protocol):
    """What ``line`` is."""

    def __call__(
        self,
        logger: logging.Logger,
        level: int,
        message: str,
        args: tuple[object, ...],
        fields: dict[str, Any],
        stamp: str = "",
    ) -> None:
        """Write one line at ``level`` (of ``LEVEL_NAMES``) in the format ``configure``
        chose, as ``logger`` would write it; its JSON time is ``stamp`` when given (a
        delivery's line carries its record's time)."""


def _through_logging(
    logger: logging.Logger,
    level: int,
    message: str,
    args: tuple[object, ...],
    fields: dict[str, Any],
    stamp: str = "",
) -> None:
    """Before ``configure`` (the app used as a library, tests): an ordinary log record."""
    logger.log(level, message, *args, extra=fields)


line: Write = _through_logging
"""The line every delivery writes: once configured, rendered straight to the stream's
bytes, without a LogRecord, caller lookup, formatter or handler lock (20.1 → 6.6 µs a line
in process; BENCHMARKS.md, "Fast paths")."""


def _direct(stream: TextIO, use_json: bool) -> tuple[Write, Callable[[], None]]:
    """``line`` writing to ``stream``, the bytes under it when it has them; and what writes
    the lines it still holds (at exit).

    On an event loop the JSON lines of one turn of the loop are written together at its
    end, in one write for all the deliveries answered in that turn: stderr's bytes are
    unbuffered, and a write per line was a system call per delivery. Other log records
    are written at once, so one may come out before a delivery line of the same turn.
    Elsewhere, and in the text format people read, each line is written at once. For the
    event loop's thread (or a thread without a loop): nothing here takes a lock.
    """
    raw: BinaryIO | None = getattr(stream, "buffer", None)
    pending: list[bytes] = []  # JSON lines waiting for the end of this turn of the loop
    flushing_on: asyncio.AbstractEventLoop | None = None  # the loop that will write them

    def flush() -> None:
        nonlocal flushing_on
        flushing_on = None
        lines = b"".join(pending)
        pending.clear()
        if raw is None:
            stream.write(lines.decode())
        elif rest := _write_all(raw, lines):
            # A full non-blocking stream: the cut line is finished later (the stream stays
            # one JSON object per line); the whole lines after it are dropped, not queued.
            pending.append(rest[: rest.find(b"\n") + 1])
        stream.flush()

    def flush_at_exit() -> None:
        """Lines of a turn the loop did not finish; the stream may be gone by now."""
        if pending:
            with contextlib.suppress(ValueError, OSError):
                flush()

    def write(
        logger: logging.Logger,
        level: int,
        message: str,
        args: tuple[object, ...],
        fields: dict[str, Any],
        stamp: str = "",
    ) -> None:
        nonlocal flushing_on
        if not logger.isEnabledFor(level):
            return
        text = clip(message % args, LOG_FIELD_LIMIT)
        name = LEVEL_NAMES[level]
        if not use_json:
            now = time.time()
            readable = _text(now, name, text, fields)
            if len(readable) > LOG_FIELD_LIMIT:  # else no field can be longer: nothing to cut
                readable = _text(now, name, text, _cut(fields))
            stream.write(readable + "\n")
            stream.flush()
            return
        stamp = stamp or _time(time.time())
        rendered = _json(stamp, name, logger.name, text, fields)
        if len(rendered) > LOG_FIELD_LIMIT:  # else no field can be longer: nothing to cut
            rendered = _json(stamp, name, logger.name, text, _cut(fields))
        pending.append(rendered)
        if flushing_on is not None and flushing_on.is_running():
            return  # due at the end of this turn
        try:
            flushing_on = asyncio.get_running_loop()
        except RuntimeError:  # no loop running: now
            flush()
            return
        flushing_on.call_soon(flush)

    return write, flush_at_exit


def _write_all(raw: BinaryIO, data: bytes) -> bytes:
    """Write ``data``, which an unbuffered stream may take part by part; return the part a
    non-blocking stream would not take now (nothing is waited for)."""
    view = memoryview(data)
    while view:
        try:
            written = raw.write(view)
        except BlockingIOError as error:  # a buffered writer over a non-blocking stream
            return bytes(view[error.characters_written :])
        if not written:
            return bytes(view)
        view = view[written:]
    return b""


_exit_flush: list[Callable[[], None]] = [lambda: None]
"""Writes what the delivery log of the last ``configure`` still holds."""
atexit.register(lambda: _exit_flush[0]())


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Route every logger (ours and uvicorn's) to ``stream`` in the chosen format."""
    global line
    stream = stream or sys.stderr
    use_json = not stream.isatty() if json is None else json
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    line, _exit_flush[0] = _direct(stream, use_json)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.error").addFilter(_sender_caused)
    for name in ("httpx2", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)
