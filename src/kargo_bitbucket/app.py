"""The ASGI application: health routes, and checks 1 to 3 of SPEC §4 before a delivery."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kargo_bitbucket.config import DEFAULT_BODY_LIMIT
from kargo_bitbucket.connections import BODY_OVERDUE
from kargo_bitbucket.core.receivers import Route as ReceiverRoute
from kargo_bitbucket.delivery import Answer, Deliveries, Headers, read_headers
from kargo_bitbucket.metrics import Metrics
from kargo_bitbucket.outcomes import Result
from kargo_bitbucket.store.base import Store
from kargo_bitbucket.unknown_paths import UnknownPaths

log = logging.getLogger("kargo_bitbucket.app")

JSON = b"application/json"
FIXED_PATHS = frozenset({"/healthz", "/readyz"})
SMALL_BODY = 64 * 1024
"""Bytes of every body that are always read; what a body holds past them comes out of
BODIES_MEMORY (Bitbucket Cloud's payloads are at most 256 KB)."""
BODIES_MEMORY = 32 * 1024 * 1024
"""Bytes past SMALL_BODY that the bodies being read may hold in all: 400 unsigned senders
each holding a body of 2 MiB less one byte took 855 MiB before. Room is made by ending the
reads that began earliest: a sender holding bodies open loses them to one that sends."""
RETRY_SOON = (b"retry-after", b"1")
CLIENT_CLOSED = 499
"""Status recorded (never sent) for a client gone mid-body: nginx's "client closed request",
so history and metrics tell it from a 408 the client was sent and a slow proxy caused."""


@dataclass(slots=True)
class Lifecycle:
    """Readiness as the probes see it: loaded and announced, and not draining for shutdown."""

    started: bool = False
    draining: bool = False
    stop_by: float | None = None
    """When the shutdown grace ends (``time.monotonic()``), from the stop signal on: the
    store's close stops waiting for its writes then."""


class BodyTooLarge(Exception):
    """The streamed body went past the limit."""


class BodiesTooLarge(Exception):
    """The body's read was ended to make room in BODIES_MEMORY, or it alone would not fit."""


class BodyOverdue(Exception):
    """The front door says the body is past its deadline (connections.py)."""


class ClientDisconnected(Exception):
    """The client went away before its body was complete: nobody is left to answer."""


CUT_SHORT = Answer.error(500, Result.ERROR, "cut short by shutdown")
"""What the history says of a delivery the shutdown grace ran out on (it was answered 500)."""


class ReceiverEndpoint:
    """Every path that is not a fixed route: a receiver lookup, then the delivery checks.

    The body's deadline is the front door's (connections.py): behind another server, or
    in tests over ASGI, a body is read for as long as it takes.
    """

    def __init__(self, store: Store, deliveries: Deliveries, body_limit: int) -> None:
        self.store = store
        self.deliveries = deliveries
        self.body_limit = body_limit
        self.too_large = f"content exceeds limit of {body_limit} bytes"
        self.limit_digits = len(str(body_limit))
        """Digits of the body limit: a longer Content-Length is larger, and not converted
        (a sender's 5,000 digits would raise in ``int``)."""
        self.unknown = UnknownPaths(deliveries.metrics)
        self.held = 0
        """Bytes past SMALL_BODY held by the bodies being read (at most BODIES_MEMORY)."""
        self._large: dict[asyncio.Task[Any], int] = {}
        """The tasks reading a body past SMALL_BODY, the earliest first, with what each holds."""
        self._ended: set[asyncio.Task[Any]] = set()
        """Tasks whose read was ended to make room (cancelled, answered 503 busy)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        path = path.partition("?")[0]
        if not self.store.ready:
            # Routes are unknown until the caches are loaded: say "try again", not "no such path".
            return await _answer(
                send, 503, {"error": "not ready, try again"}, [(b"retry-after", b"5")]
            )
        route = self.store.indexes.route(path)
        if route is None:
            self.unknown.seen(path)
            return await _answer(send, 404, {"error": "not found"})
        try:
            await self._deliver(scope, receive, send, route)
        except asyncio.CancelledError:
            # The shutdown grace ran out: a JSON 500 makes Bitbucket Cloud send it again.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            log.warning("delivery to %s cut short by shutdown; answered 500", route.label)
            with contextlib.suppress(Exception):
                await _answer(send, 500, {"error": "internal error"}, close=True)

    async def _deliver(
        self, scope: Scope, receive: Receive, send: Send, route: ReceiverRoute
    ) -> None:
        """Checks 2 and 3 of SPEC §4, then the delivery itself."""
        started = time.perf_counter()
        headers = read_headers(scope["headers"])
        if scope["method"] != "POST":
            answer = Answer.error(405, Result.METHOD_NOT_ALLOWED, "method not allowed")
            return await self._refuse(send, route, headers, answer, started, [(b"allow", b"POST")])
        declared = headers.content_length.lstrip("0")  # the parser takes 000…02 as 2
        if declared.isdecimal() and (
            len(declared) > self.limit_digits or int(declared) > self.body_limit
        ):
            answer = Answer.error(413, Result.BODY_TOO_LARGE, self.too_large)
            return await self._refuse(send, route, headers, answer, started)
        try:  # handle raises none of these but the shutdown's cancellation
            body = await self._read_body(scope, receive)
            answer = await self.deliveries.handle(route, headers, body)
        except BodyTooLarge:
            answer = Answer.error(413, Result.BODY_TOO_LARGE, self.too_large)
            return await self._refuse(send, route, headers, answer, started)
        except BodiesTooLarge:
            answer = Answer.error(503, Result.BUSY, "too many large bodies at once, try again")
            return await self._refuse(send, route, headers, answer, started, [RETRY_SOON])
        except BodyOverdue:
            answer = Answer.error(408, Result.BODY_TIMEOUT, "request body not received in time")
            return await self._refuse(send, route, headers, answer, started)
        except ClientDisconnected:
            answer = Answer.error(
                CLIENT_CLOSED,
                Result.CLIENT_DISCONNECTED,
                "client disconnected before the body was complete",
            )
            self.deliveries.refused(route, headers, answer, started)
            return
        except asyncio.CancelledError:  # cut short: nothing else leaves its record
            self.deliveries.refused(route, headers, CUT_SHORT, started)
            raise
        await _answer(send, answer.status, answer.body)

    async def _refuse(
        self,
        send: Send,
        route: ReceiverRoute,
        headers: Headers,
        answer: Answer,
        started: float,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer a request to a receiver before its body is read, and leave a trace of it;
        the connection is closed (after any but a 405) so that the body is never read."""
        self.deliveries.refused(route, headers, answer, started)
        await _answer(send, answer.status, answer.body, extra, close=answer.status != 405)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """Read the whole body, stopping as soon as it passes the limit or its deadline; past
        SMALL_BODY, what it holds counts against BODIES_MEMORY (``_hold``)."""
        chunks = []
        size = held = 0
        task: asyncio.Task[Any] | None = None
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.body_limit:
                    raise BodyTooLarge
                if size > SMALL_BODY:
                    if task is None:
                        task = asyncio.current_task()
                        assert task is not None  # an ASGI app runs in a task
                    self._hold(task, size - SMALL_BODY - held)
                    held = size - SMALL_BODY
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
                if BODY_OVERDUE in scope:
                    raise BodyOverdue
        except asyncio.CancelledError:
            if task is None or task not in self._ended:
                raise  # the shutdown's
            self._ended.discard(task)
            task.uncancel()
            raise BodiesTooLarge from None
        finally:
            if task is not None:  # what it holds; nothing if its read was ended
                self.held -= self._large.pop(task, 0)

    def _hold(self, task: asyncio.Task[Any], more: int) -> None:
        """Count ``more`` bytes of ``task``'s body, first ending the reads that began
        earliest until they fit (each then raises BodiesTooLarge); BodiesTooLarge if
        they cannot."""
        while self.held + more > BODIES_MEMORY:
            earliest = next((t for t in self._large if t is not task), None)
            if earliest is None:
                raise BodiesTooLarge
            self.held -= self._large.pop(earliest)
            self._ended.add(earliest)
            earliest.cancel()
        self.held += more
        self._large[task] = self._large.get(task, 0) + more


async def _answer(
    send: Send,
    status: int,
    body: Mapping[str, object],
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    close: bool = False,
) -> None:
    """Send a complete JSON response."""
    payload = orjson.dumps(body)
    headers = [(b"content-type", JSON), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": payload})


async def _load_without_gc(store: Store) -> None:
    """Load the store with the cyclic GC off, then freeze what was loaded.

    Loading 100,000 objects spent 40-50% of its CPU in collections that find nothing, and
    each later full collection paused the event loop 100-145 ms (measured); frozen objects
    are never scanned again.
    """
    gc.disable()
    try:
        await store.start()
    finally:
        gc.freeze()
        gc.enable()


def create_app(
    store: Store,
    *,
    lifecycle: Lifecycle | None = None,
    body_limit: int = DEFAULT_BODY_LIMIT,
    on_ready: Callable[[], Awaitable[None]] | None = None,
    metrics: Metrics | None = None,
) -> App:
    """Build the application; the store starts loading in the background at startup."""
    lifecycle = lifecycle or Lifecycle()
    deliveries = Deliveries(store, metrics)

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(request: Request) -> Response:
        if lifecycle.started and not lifecycle.draining:
            return Response(b'{"status":"ready"}', media_type="application/json")
        reason = b"draining" if lifecycle.draining else b"loading"
        return Response(b'{"status":"' + reason + b'"}', 503, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def start() -> None:
            try:
                await _load_without_gc(store)
                if on_ready is not None:
                    await on_ready()
                lifecycle.started = True
            except Exception:
                log.exception("store failed to start")
                raise

        starting = asyncio.create_task(start(), name="store-start")
        try:
            yield
        finally:
            lifecycle.draining = True
            if not starting.done():
                starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            await store.close(lifecycle.stop_by)

    health = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    return App(health, ReceiverEndpoint(store, deliveries, body_limit))


class App:
    """Fixed routes and lifespan go to Starlette; every other path is a receiver lookup.

    Deliveries skip Starlette's router and middleware: measured 10 µs per delivery.
    """

    def __init__(self, fixed: Starlette, receivers: ReceiverEndpoint) -> None:
        self.fixed = fixed
        self.receivers = receivers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in FIXED_PATHS:
            await self.receivers(scope, receive, send)
        else:
            await self.fixed(scope, receive, send)
