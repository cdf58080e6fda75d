"""One line per record: JSON for machines, readable text for people."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest

from kargo_bitbucket import logs
from kargo_bitbucket.bounds import LOG_FIELD_LIMIT


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(logs, "line", logs.line)  # what configure() installs
    monkeypatch.setattr(logs, "_exit_flush", list(logs._exit_flush))
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_line_carries_time_level_message_and_extra_fields_in_order() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=True)
    log = logging.getLogger("kargo_bitbucket.delivery")
    log.info("delivery %s", "refreshed", extra={"delivery": "abc", "status": 200, "refreshed": 1})
    log.debug("not shown at info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert list(line) == ["time", "level", "logger", "msg", "delivery", "status", "refreshed"]
    assert line["level"] == "info"
    assert line["logger"] == "kargo_bitbucket.delivery"
    assert line["msg"] == "delivery refreshed"
    stamp = datetime.fromisoformat(line["time"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
    assert abs((datetime.now(stamp.tzinfo) - stamp).total_seconds()) < 5


def test_json_time_has_microseconds_as_history_records_do() -> None:
    formatter = logs.JsonFormatter()
    record = logging.makeLogRecord({"msg": "x", "created": 1_700_000_000.25})
    assert orjson.loads(formatter.format(record))["time"] == "2023-11-14T22:13:20.250000Z"
    record = logging.makeLogRecord({"msg": "x", "created": 1_700_000_001.9999996})
    assert orjson.loads(formatter.format(record))["time"] == "2023-11-14T22:13:21.999999Z"


def test_a_line_given_a_time_carries_it() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=True)
    log = logging.getLogger("kargo_bitbucket.delivery")
    logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {}, "2001-02-03T04:05:06.000007Z")
    logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {})
    given, now = (orjson.loads(line)["time"] for line in stream.getvalue().splitlines())
    assert given == "2001-02-03T04:05:06.000007Z"
    assert given < now


def test_exceptions_are_kept_on_the_json_line() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("kargo_bitbucket").exception("failed")
    line = orjson.loads(stream.getvalue())
    assert "RuntimeError: boom" in line["exception"]


def test_text_lines_for_people_and_level_filter() -> None:
    stream = io.StringIO()
    logs.configure("warning", stream=stream, json=False)
    log = logging.getLogger("kargo_bitbucket.delivery")
    log.info("hidden")
    log.warning("receiver %s: newline", "demo/r", extra={"delivery": "abc", "empty": ""})
    text = stream.getvalue()
    assert "hidden" not in text
    assert "warning receiver demo/r: newline  delivery=abc" in text
    assert "empty=" not in text


def test_text_lines_show_what_a_sender_wrote_escaped() -> None:
    # Header bytes 0x80-0xFF reach us as latin-1: U+009B is a terminal's CSI.
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=False)
    log = logging.getLogger("kargo_bitbucket.delivery")
    logs.line(log, logging.WARNING, "delivery %s", ("missing-signature",), {"event": "e\x9b2J"})
    log.warning("ref %s\x1b[31m", "main", extra={"delivery": "\x9b31m"})
    text = stream.getvalue()
    assert "\x9b" not in text and "\x1b" not in text
    assert "event=e\\x9b2J" in text
    assert "ref main\\x1b[31m  delivery=\\x9b31m" in text


@pytest.mark.parametrize("on_bytes", [True, False])
def test_delivery_line_is_written_straight_in_the_json_format(on_bytes: bool) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8") if on_bytes else io.StringIO()
    logs.configure("info", stream=stream, json=True)
    log = logging.getLogger("kargo_bitbucket.delivery")
    logs.line(
        log, logging.INFO, "delivery %s (%d more)", ("bad-signature", 3), {"delivery": "d" * 20_000}
    )
    log.warning("through logging", extra={"status": 401})
    text = raw.getvalue().decode() if on_bytes else stream.getvalue()
    first, second = (orjson.loads(line) for line in text.splitlines())
    assert list(first) == ["time", "level", "logger", "msg", "delivery"]
    assert first["msg"] == "delivery bad-signature (3 more)"
    assert first["logger"] == "kargo_bitbucket.delivery" and first["level"] == "info"
    assert first["delivery"].endswith("…[truncated, 20000 chars]")
    assert datetime.fromisoformat(first["time"]) <= datetime.fromisoformat(second["time"])
    assert second["msg"] == "through logging"


def test_delivery_line_for_people_and_below_the_level() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=False)
    log = logging.getLogger("kargo_bitbucket.delivery")
    logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {"receiver": "ns/r", "detail": ""})
    assert stream.getvalue().endswith(" info    delivery refreshed  receiver=ns/r\n")
    logs.configure("warning", stream=stream, json=False)
    logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {"receiver": "ns/r"})
    assert stream.getvalue().count("delivery refreshed") == 1


@pytest.mark.parametrize("json", [True, False])
def test_delivery_line_fields_are_cut_only_past_the_limit(json: bool) -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=json)
    log = logging.getLogger("kargo_bitbucket.delivery")
    at_limit, past = "a" * LOG_FIELD_LIMIT, "b" * (LOG_FIELD_LIMIT + 1)
    logs.line(
        log, logging.INFO, "delivery %s", ("refreshed",), {"delivery": at_limit, "status": 200}
    )
    logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {"delivery": past, "status": 200})
    first, second = stream.getvalue().splitlines()
    assert at_limit in first and "truncated" not in first
    assert f"{'b' * LOG_FIELD_LIMIT}…[truncated, {LOG_FIELD_LIMIT + 1} chars]" in second
    assert "200" in second


class Unbuffered(io.RawIOBase):
    """Bytes under a stream as under stderr: every write reaches the file at once."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return len(data)


def test_delivery_lines_of_one_loop_turn_reach_unbuffered_bytes_in_one_write() -> None:
    raw = Unbuffered()
    logs.configure("info", stream=io.TextIOWrapper(raw, "utf-8", write_through=True), json=True)
    log = logging.getLogger("kargo_bitbucket.delivery")

    async def one_turn() -> None:
        for number in range(3):
            logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {"delivery": f"d{number}"})
        assert raw.writes == []
        await asyncio.sleep(0)
        assert len(raw.writes) == 1

    asyncio.run(one_turn())
    lines = [orjson.loads(line) for line in raw.writes[0].splitlines()]
    assert [line["delivery"] for line in lines] == ["d0", "d1", "d2"]
    logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {"delivery": "off-loop"})
    assert orjson.loads(raw.writes[-1])["delivery"] == "off-loop"


def test_a_line_left_by_a_loop_that_stopped_goes_out_with_the_next_loops_lines() -> None:
    raw = Unbuffered()
    logs.configure("info", stream=io.TextIOWrapper(raw, "utf-8", write_through=True), json=True)
    log = logging.getLogger("kargo_bitbucket.delivery")
    stopped = asyncio.new_event_loop()

    def last_turn() -> None:
        logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {"delivery": "first"})
        stopped.stop()  # before the turn that would write it

    stopped.call_soon(last_turn)
    stopped.run_forever()
    assert raw.writes == []

    async def next_loop() -> None:
        logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {"delivery": "second"})

    asyncio.run(next_loop())
    stopped.close()
    lines = [orjson.loads(line) for line in b"".join(raw.writes).splitlines()]
    assert [line["delivery"] for line in lines] == ["first", "second"]


def test_a_full_non_blocking_stream_keeps_one_json_object_per_line() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    raw = io.FileIO(write_end, "wb")
    logs.configure("info", stream=io.TextIOWrapper(raw, "utf-8", write_through=True), json=True)
    log = logging.getLogger("kargo_bitbucket.delivery")

    async def turn(first: int, count: int) -> None:
        for number in range(first, first + count):
            logs.line(log, logging.INFO, "delivery %s", ("refreshed",), {"delivery": f"d{number}"})

    try:
        asyncio.run(turn(0, 2000))  # far more than the pipe holds: the rest is dropped
        received = b""
        while chunk := _read_now(read_end):
            received += chunk
        asyncio.run(turn(2000, 1))  # finishes the cut line, then writes the next one
        received += _read_now(read_end)
    finally:
        raw.close()
        os.close(read_end)
    lines = [orjson.loads(line) for line in received.splitlines()]
    assert lines[0]["delivery"] == "d0"
    assert lines[-1]["delivery"] == "d2000"
    assert len(lines) < 2000


def _read_now(fd: int) -> bytes:
    """What the pipe holds now, without waiting."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def test_uvicorn_warnings_any_sender_causes_are_throttled_and_the_rest_counted() -> None:
    now = [100.0]
    lines = logs.SenderCaused(clock=lambda: now[0])

    def logged(message: str) -> str | None:
        record = logging.makeLogRecord({"name": "uvicorn.error", "msg": message})
        return record.getMessage() if lines.filter(record) else None

    burst = [logged("Invalid HTTP request received.") for _ in range(20)]
    assert burst == ["Invalid HTTP request received."] * logs.SENDER_CAUSED_RATE + [None] * 15
    assert logged("Unsupported upgrade request.") == "Unsupported upgrade request."  # its own
    now[0] += 1
    assert logged("Invalid HTTP request received.") == (
        "Invalid HTTP request received. (15 more not logged)"
    )
    assert logged("No supported WebSocket library detected. Please use ...") is None
    assert logged("Started server process [1]") == "Started server process [1]"


def test_configure_throttles_uvicorns_own_warnings() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=True)
    for _ in range(50):
        logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    # Five a second: one second boundary crossed at most while logging them.
    assert len(stream.getvalue().splitlines()) <= 2 * logs.SENDER_CAUSED_RATE + 1


def test_json_lines_escape_c1_controls_a_sender_wrote() -> None:
    # kubectl logs shows JSON lines in a terminal: U+009B must not reach it as CSI.
    stream = io.StringIO()
    logs.configure("info", stream=stream, json=True)
    log = logging.getLogger("kargo_bitbucket.delivery")
    logs.line(log, logging.WARNING, "delivery %s", ("missing-signature",), {"event": "e\x9b2J"})
    log.warning("ref %s", "mai\x85n", extra={"delivery": "é\x9b31m\x80"})
    text = stream.getvalue()
    assert all(not 0x80 <= ord(c) <= 0x9F for c in text)
    assert "e\\u009b2J" in text and "mai\\u0085n" in text and "é\\u009b31m\\u0080" in text
    first, second = (orjson.loads(line) for line in text.splitlines())
    assert first["event"] == "e\x9b2J"
    assert (second["msg"], second["delivery"]) == ("ref mai\x85n", "é\x9b31m\x80")
