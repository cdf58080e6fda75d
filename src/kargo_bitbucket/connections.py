"""The webhook port's connection limits (SPEC §4): head size, deadlines, the connection cap.

uvicorn with httptools enforces none of them, and alternatives that do cost more per
request than ``serve`` can spare (BENCHMARKS.md, "Front door"), so one protocol subclass
adds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from kargo_bitbucket.compat import HttpToolsProtocol, RequestResponseCycle
from kargo_bitbucket.config import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)

log = logging.getLogger("kargo_bitbucket.connections")

BODY_OVERDUE = "kargo_bitbucket.body_overdue"
"""Scope key the front door sets when a request's body is past its deadline (app.py answers 408)."""
HEAD_LIMIT = 64 * 1024
HEADER_COUNT_LIMIT = 100
FRAMING_LIMIT = HEAD_LIMIT
"""Bytes of a request past its head that are not body: chunk sizes, extensions, trailers."""
PIPELINE_LIMIT = 16
"""Requests one connection may have waiting behind its running one; the next closes it."""
KEEP_ALIVE = 5.0
LINGER = 2.0
"""Seconds a refused connection is read (and what it sends dropped) after its 431."""
LINGER_BYTES = 16 * HEAD_LIMIT
"""Bytes a refused connection may still send before it is closed all the same."""
CAP_LOG_INTERVAL = 10.0
SWEEP_INTERVAL = 0.5
TOO_LARGE_BODY = b'{"error":"request header fields too large"}'
TOO_LARGE_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(TOO_LARGE_BODY)).encode()),
    (b"connection", b"close"),
]
TOO_LARGE = b"".join(
    [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
    + [name + b": " + value + b"\r\n" for name, value in TOO_LARGE_HEADERS]
    + [b"\r\n", TOO_LARGE_BODY]
)
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: 32\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    b'{"error":"too many connections"}'
)


class Watched(Protocol):
    """A connection under one of the front door's deadlines."""

    def close_now(self, reason: str) -> None:
        """Close it and stop counting it; ``reason`` goes to the ``dropped`` counter."""

    def body_overdue(self) -> None:
        """Its request's body is past the deadline: tell the app, or close if told before."""

    def stop_lingering(self) -> None:
        """Close it and stop counting it, with no reason counted: a connection refused and
        answered (``close_now`` counts its reason, then does this)."""


@dataclass(slots=True)
class Connections:
    """Open webhook connections: their cap, their deadlines, and those dropped.

    Deadlines are swept twice a second from insertion-ordered tables (heads being read,
    bodies being read, idle keep-alive connections, ...) instead of a timer per request:
    a timer cost about 3 µs more per request, and the body deadline as ``asyncio.timeout``
    in the app about 5 µs (BENCHMARKS.md, "Fast paths"); the whole protocol costs 1.8 µs
    over uvicorn's own (``bench/servers.py --in-process``).
    At the cap a new connection takes the place of one lingering after its 431, else of the
    longest-idle keep-alive one (as nginx does), else of the one that has been sending its
    head the longest, and is refused with a 503 only when every connection is running a
    request: 1,100 connections held after early answers, or 1,000 silent ones, then lock
    no delivery out. ``dropped`` counts by reason:
    ``idle-evicted``, ``head-evicted``, ``cap`` (refused), ``too-large`` (request line,
    headers, chunk framing or trailers over their limit, answered 431 unless a request
    is running), ``pipelined`` (more than PIPELINE_LIMIT requests queued),
    ``header-timeout``, ``body-timeout`` (a body still not in a further ``body_timeout``
    after its app was told), ``write-timeout`` (an answer the client has not taken in
    ``write_timeout``) and ``keep-alive`` (idle timeout).
    """

    limit: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keep_alive: float = KEEP_ALIVE
    write_timeout: float = DEFAULT_BODY_TIMEOUT
    open: int = 0
    heads: dict[Watched, float] = field(default_factory=dict)
    """Connections reading a head, oldest first, with when it began."""
    bodies: dict[Watched, float] = field(default_factory=dict)
    """Connections whose running request's body is not all in, oldest first, with since when."""
    idle: dict[Watched, float] = field(default_factory=dict)
    """Keep-alive connections waiting for a next request, oldest first, with since when."""
    writes: dict[Watched, float] = field(default_factory=dict)
    """Connections whose client does not take what is written, oldest first, since when."""
    lingering: dict[Watched, float] = field(default_factory=dict)
    """Connections refused with a 431 and half-closed, read until the client closes."""
    linger: float = LINGER
    dropped: Counter[str] = field(default_factory=Counter)
    _sweeping: bool = False
    _logged: float = float("-inf")
    _unlogged: Counter[str] = field(default_factory=Counter)

    def admit(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether a new connection may open; at the cap, close an idle one to make room,
        else the one that has been sending its head the longest."""
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(SWEEP_INTERVAL, self._sweep, loop)
        if self.open < self.limit:
            return True
        if self.lingering:
            next(iter(self.lingering)).stop_lingering()
            return True
        for table, reason in ((self.idle, "idle-evicted"), (self.heads, "head-evicted")):
            if table:
                next(iter(table)).close_now(reason)
                self._reached(reason)
                return True
        self.dropped["cap"] += 1
        self._reached("cap")
        return False

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Act on every connection past its deadline; again in ``SWEEP_INTERVAL``."""
        now = time.monotonic()
        deadlines: tuple[tuple[dict[Watched, float], float, Callable[[Watched], None]], ...] = (
            (self.heads, self.header_timeout, lambda c: c.close_now("header-timeout")),
            (self.bodies, self.body_timeout, lambda c: c.body_overdue()),
            (self.idle, self.keep_alive, lambda c: c.close_now("keep-alive")),
            (self.writes, self.write_timeout, lambda c: c.close_now("write-timeout")),
            (self.lingering, self.linger, lambda c: c.stop_lingering()),
        )
        for table, timeout, act in deadlines:
            while table:  # each act takes the connection out of the table or renews it
                connection, since = next(iter(table.items()))
                if now - since < timeout:
                    break
                act(connection)
        loop.call_later(SWEEP_INTERVAL, self._sweep, loop)

    def _reached(self, reason: str) -> None:
        """Note a connection dropped at the cap; one log line per 10 s at most."""
        self._unlogged[reason] += 1
        now = time.monotonic()
        if now - self._logged >= CAP_LOG_INTERVAL:
            log.warning(
                "connection cap reached: closed %d idle connection(s) and %d still sending "
                "their head, refused %d with 503",
                self._unlogged["idle-evicted"],
                self._unlogged["head-evicted"],
                self._unlogged["cap"],
                extra={"max_connections": self.limit},
            )
            self._logged = now
            self._unlogged.clear()


class TooManyHeaders(Exception):
    """Raised in a parser callback to stop the parser at the header past HEADER_COUNT_LIMIT."""


class _Discarded(list[tuple[bytes, bytes]]):
    """Where a request's trailer fields go once its head is read: nowhere. uvicorn would
    append them to the request's headers, 150 bytes of memory for four on the wire."""

    def append(self, field: tuple[bytes, bytes]) -> None:
        pass


def front_door_protocol(connections: Connections) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the connection limits of SPEC §4 that uvicorn lacks."""
    uvicorn_on_header = HttpToolsProtocol.on_header  # called for every header: no super()
    heads, bodies, idle, writes, lingering = (
        connections.heads,
        connections.bodies,
        connections.idle,
        connections.writes,
        connections.lingering,
    )

    class FrontDoorProtocol(HttpToolsProtocol):
        """One webhook connection, bounded in number, head size and idle time.

        - At ``connections.limit`` open connections a new one replaces the longest-idle
          keep-alive connection, else the one that has been sending its head the longest
          (a flood of silent connections answered 57 of 61 deliveries 503 before), or
          gets a 503 and is closed when every one is running a request.
        - Request line and headers: at most ``HEAD_LIMIT`` bytes in all and
          ``HEADER_COUNT_LIMIT`` headers, else 431 and the close. httptools buffers each
          header whole, so bytes are counted as they are fed (8 parallel 64 MB request
          lines took 500 MB and stalled deliveries 6.6 s before); headers are counted as
          the parser finds them and it is stopped at the one past the limit (1,000 heads of
          64 KiB of empty headers took 1.5 GB and stalled a delivery 10.7 s before; uvicorn
          then logs its throttled "Invalid HTTP request received."). What follows the head
          and is not body (chunk framing, trailers) is counted the same way, at most
          ``FRAMING_LIMIT`` bytes a request, and trailers are not kept: an endless trailer
          section took 800 MB in 1.5 s before.
        - At most ``PIPELINE_LIMIT`` requests queued behind the running one; the connection
          is closed at the next (20,000 requests in one write took 486 MB before).
        - Deadlines: ``header_timeout`` to send each head; ``body_timeout`` for the body
          of the running request, after which its scope gets ``BODY_OVERDUE`` and its app
          is woken to answer 408 (the connection is closed if the body is still not in a
          further ``body_timeout`` later: an app that ignores the flag); and ``keep_alive``
          after the last answer, which further bytes (the unread body of an early
          404/405) do not extend: uvicorn's own keep-alive timer restarts on any byte, so
          one byte after an early answer held the connection for ever; and
          ``write_timeout`` for a client that does not read what is written to it (the
          connection is then dropped, with what it had not taken).
        - A 431 is followed by a half-close, and what the client still sends is read and
          dropped until it closes, for at most ``connections.linger`` seconds and
          ``LINGER_BYTES`` (nginx's lingering close): closed with the client's bytes
          unread, the kernel reset the connection, which could destroy the 431 before the
          client read it.
        - Answers keep the order of the requests: bytes the parser refuses get uvicorn's
          400, and bytes over a limit the 431, only once the requests before them are
          answered (then the connection closes); a request whose body they broke is ended
          (its app reads a disconnect and records 499), and nothing after them is read.
          uvicorn wrote the 400 at once, ahead of the answers still owed, and the client
          took it for the answer to a request that was refreshed; the 431 closed the
          connection with those answers unsent.
        - A client that half-closes after pipelining still gets its answers, and a lost
          connection stops every cycle on it: uvicorn marks only the newest, so the
          running one wrote to a closed transport ("Exception in ASGI application").

        uvicorn internals this relies on (compat.py; tests/edges/test_compat.py fails if
        they go):
        the methods connection_made, connection_lost, data_received, eof_received,
        pause_writing, resume_writing, on_message_begin, on_header, on_headers_complete,
        on_body, on_message_complete, on_response_complete and send_400_response (which
        uvicorn calls when the parser refuses bytes or a callback raises); the attributes
        loop, transport, headers, cycle and pipeline; and RequestResponseCycle's scope,
        more_body, response_complete, disconnected and message_event.
        """

        _head: int | None = None  # bytes of the current head fed so far; None between heads
        _framing = 0  # bytes of the current request fed after its head that were not body
        _counted = False
        _refused_at_cap = False
        _eof = False
        _overdue: RequestResponseCycle | None = None  # told its body is late, once
        _too_many = False  # the parser was stopped at a header past HEADER_COUNT_LIMIT
        _last_word: Callable[[], None] | None = None
        """The refusal (400 or 431, then the close) owed once the answers before it are sent."""
        _lingered: int | None = None  # bytes dropped since the 431; None if not lingering

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if not connections.admit(self.loop):
                self._refused_at_cap = True
                transport.write(BUSY)
                transport.close()
                return
            connections.open += 1
            self._counted = True
            self._cycles: deque[RequestResponseCycle] = deque()
            # Told of the first byte the client does not take, even after a close: asyncio's
            # close waits for what is unsent, so a client that stops reading would hold it.
            transport.set_write_buffer_limits(high=0)
            super().connection_made(transport)
            self._head = 0
            heads[self] = time.monotonic()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused_at_cap:
                return
            self._uncount()
            for cycle in self._cycles:
                if not cycle.response_complete:
                    cycle.disconnected = True
                    cycle.message_event.set()
            super().connection_lost(exc)

        def eof_received(self) -> bool:  # type: ignore[override]
            """Keep the write side open for the answers still owed; close if none are, or if
            the only request's body can no longer come (its app then reads a disconnect and
            records 499 at once, where it waited for its body deadline and a 408)."""
            self._eof = True
            if not self._cycles or (len(self._cycles) == 1 and self._cycles[0].more_body):
                self.transport.close()
            return True

        def data_received(self, data: bytes) -> None:
            """Feed the parser at most the room left under the limit of what is being read
            (a head, or a request's framing), so that no limit is passed by more than a
            piece already checked (a pipelined head begun inside the piece that ended the
            request before it is counted from the next piece on: at most twice HEAD_LIMIT);
            nothing more once the connection is closing, or once the parser refused bytes
            (``send_400_response``), or any went over a limit (what comes after a 431 is
            counted against ``LINGER_BYTES``)."""
            while self._last_word is None:
                head = self._head
                room = HEAD_LIMIT - head if head is not None else FRAMING_LIMIT - self._framing
                if room <= 0:
                    return self._refuse()
                piece = data if len(data) <= room else data[:room]
                if head is not None:
                    self._head = head + len(piece)
                else:
                    self._framing += len(piece)
                super().data_received(piece)
                if piece is data or self.transport.is_closing():
                    return
                data = data[len(piece) :]
            if self._lingered is not None:
                self._lingered += len(data)
                if self._lingered > LINGER_BYTES:
                    self.stop_lingering()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._framing = 0
            if self._head is None:
                self._head = 0
                idle.pop(self, None)
                heads[self] = time.monotonic()

        def on_header(self, name: bytes, value: bytes) -> None:
            if len(self.headers) >= HEADER_COUNT_LIMIT:  # trailers go to _Discarded: 0
                self._too_many = True
                raise TooManyHeaders
            uvicorn_on_header(self, name, value)

        def on_headers_complete(self) -> None:
            self._head = None
            heads.pop(self, None)
            if len(self._cycles) > PIPELINE_LIMIT:
                if not self.transport.is_closing():
                    connections.dropped["pipelined"] += 1
                    self.transport.close()
                return  # no cycle: the bytes still in this piece are read and dropped
            super().on_headers_complete()
            self.headers = _Discarded()
            self._cycles.append(self.cycle)
            if not self.pipeline:  # it runs now (a queued one's body waits with it)
                bodies[self] = time.monotonic()

        def on_body(self, body: bytes) -> None:
            framing = self._framing - len(body)  # below 0 where a head's piece held body
            self._framing = framing if framing > 0 else 0
            super().on_body(body)

        def pause_writing(self) -> None:
            super().pause_writing()
            writes.setdefault(self, time.monotonic())

        def resume_writing(self) -> None:
            writes.pop(self, None)
            super().resume_writing()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            bodies.pop(self, None)

        def send_400_response(self, msg: str) -> None:
            if self._too_many:
                return self._refuse()
            self._end_with(lambda: super(FrontDoorProtocol, self).send_400_response(msg))

        def on_response_complete(self) -> None:
            bodies.pop(self, None)
            super().on_response_complete()
            while self._cycles and self._cycles[0].response_complete:
                self._cycles.popleft()
            if self._last_word is not None and not self._cycles:
                if not self.transport.is_closing():
                    self._last_word()
                return
            if self._cycles and self._cycles[0].more_body:  # a queued request now runs
                bodies[self] = time.monotonic()
            if self._cycles or self._head is not None or self.transport.is_closing():
                return  # a pipelined request runs, or the next head is under its deadline
            if self._eof:
                self.transport.close()
            else:
                idle[self] = time.monotonic()

        def close_now(self, reason: str) -> None:
            if self._counted:
                connections.dropped[reason] += 1
            self.stop_lingering()

        def body_overdue(self) -> None:
            bodies.pop(self, None)
            cycle = self._cycles[0] if self._cycles else None
            if cycle is None or cycle.response_complete:
                return
            if cycle is self._overdue:
                return self.close_now("body-timeout")
            self._overdue = cycle
            cycle.scope[BODY_OVERDUE] = True  # type: ignore[literal-required]
            cycle.message_event.set()
            bodies[self] = time.monotonic()

        def stop_lingering(self) -> None:
            self._uncount()
            if self.transport.get_write_buffer_size():
                self.transport.abort()  # a close would wait for a client that does not read
            else:
                self.transport.close()

        def _uncount(self) -> None:
            heads.pop(self, None)
            bodies.pop(self, None)
            idle.pop(self, None)
            writes.pop(self, None)
            lingering.pop(self, None)
            if self._counted:
                self._counted = False
                connections.open -= 1

        def _refuse(self) -> None:
            """The 431 and the close: a head, or a request's framing, is over its limit."""
            connections.dropped["too-large"] += 1
            self._end_with(self._too_large)

        def _too_large(self) -> None:
            transport = self.transport
            transport.write(TOO_LARGE)
            if self._eof or not transport.can_write_eof():
                transport.close()
                return
            transport.write_eof()
            self._lingered = 0
            lingering[self] = time.monotonic()

        def _end_with(self, refusal: Callable[[], None]) -> None:
            """Send ``refusal`` (which closes) after the answers owed before it, reading
            nothing more; a request whose body the refused bytes broke is ended (its app
            reads a disconnect and records 499)."""
            self._head = None
            heads.pop(self, None)
            if self._cycles and self._cycles[-1].more_body:
                broken = self._cycles.pop()
                broken.disconnected = True
                broken.message_event.set()
            self._last_word = refusal
            if not self._cycles:  # else on_response_complete sends it after the last
                refusal()

    return FrontDoorProtocol
