"""Lean HTTP/1.1 to the API server for refresh PATCHes and Events: pre-built request bytes
over a pool of keep-alive TLS connections, answers parsed by httptools.

Through httpx (under lightkube) one PATCH cost the receiver 1.0-1.5 ms of CPU, most of it in
httpx's connection pool, URL merging and h11; through this module 0.26-0.28 ms, against
0.12-0.15 ms for bare bytes with nothing around them (BENCHMARKS.md, issue 10). Watches,
lists, status writes and the Lease stay on lightkube.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import urllib.request
from collections.abc import AsyncGenerator
from typing import NamedTuple, Protocol, cast
from urllib.parse import urlsplit

import httptools
import httpx2 as httpx
from lightkube import AsyncClient, ConfigError
from lightkube.config.kubeconfig import SingleConfig

from kargo_bitbucket.compat import http_client, user_auth, verify_cluster

log = logging.getLogger(__name__)

ANSWER_LIMIT = 2 * 1024 * 1024
"""Largest answer body read: etcd stores objects of up to 1.5 MiB, so every genuine answer
fits; a bigger one fails the attempt and closes its connection."""
IDLE_CONNECTIONS = 96
"""Connections kept open between requests: as many as patches and Events run at once (64 +
16) and a few spare; with fewer, a 1,000-Warehouse push reopens TLS connections."""


class WireError(ConnectionError):
    """The request got no complete answer (connection lost, refused, bad or oversized
    answer); the connection is dropped and the request may be retried."""


class _Stale(WireError):
    """A kept-alive connection closed before any byte of the answer: the request is sent
    again once, on a new connection."""


class Answer(NamedTuple):
    """An API server's answer: status, body and ``Retry-After`` in seconds (0 if none)."""

    status: int
    body: bytes
    retry_after: float


class Sender(Protocol):
    """How the Refresher sends a request: :class:`Wire`, or :class:`ClientWire` where the
    lean path cannot apply."""

    async def request(self, method: str, path: str, body: bytes, content_type: str) -> Answer:
        """The answer, or :class:`WireError` when none came."""
        ...

    async def close(self) -> None:
        """Close the connections this sender opened."""
        ...


class Wire:
    """Keep-alive connections to one API server, one request at a time on each.

    ``auth`` is lightkube's httpx Auth for the kubeconfig's user (None for client
    certificates alone): the ``Authorization`` header comes from its ``async_auth_flow``,
    and a 401 runs the flow on once more (a rotated token file is re-read, an exec plugin
    re-run) and retries with the new header.
    """

    def __init__(
        self,
        server: str,
        context: ssl.SSLContext,
        auth: httpx.Auth | None,
        user_agent: str,
        *,
        answer_limit: int = ANSWER_LIMIT,
    ) -> None:
        url = urlsplit(server)
        self.host = url.hostname or ""
        self.port = url.port or 443
        self.prefix = url.path.rstrip("/")
        self.context = context
        self.auth = auth
        self.answer_limit = answer_limit
        self._head = f"Host: {url.netloc}\r\nUser-Agent: {user_agent}\r\n"
        self._authorization: str | None = None
        self._auth_lock = asyncio.Lock()
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()

    async def request(self, method: str, path: str, body: bytes, content_type: str) -> Answer:
        """Send one request and read its answer; a 401 is retried once with fresh credentials.

        Raises :class:`WireError` when no complete answer came (retryable).
        """
        authorization = await self._credentials()
        answer = await self._exchange(method, path, body, content_type, authorization)
        if answer.status == 401 and self.auth is not None:
            renewed = await self._renew(authorization)
            if renewed != authorization:
                answer = await self._exchange(method, path, body, content_type, renewed)
        return answer

    async def _exchange(
        self, method: str, path: str, body: bytes, content_type: str, authorization: str | None
    ) -> Answer:
        credentials = f"Authorization: {authorization}\r\n" if authorization else ""
        message = (
            f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._head}{credentials}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        try:
            return await self._send(message, await self._take())
        except _Stale:
            # The server closed an idle kept-alive connection as we wrote on it (its idle
            # timeout): once more on a new one, as browsers and httpx do.
            return await self._send(message, await self._open())

    async def _send(self, message: bytes, connection: _Connection) -> Answer:
        self._busy.add(connection)
        try:
            answer = await connection.exchange(message)
        except BaseException:
            connection.close()  # a half-read answer would corrupt the next request's
            raise
        finally:
            self._busy.discard(connection)
        if connection.reusable and len(self._idle) < IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    async def _take(self) -> _Connection:
        """An idle open connection (newest first), else a new one."""
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection
            connection.close()
        return await self._open()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self.answer_limit),
                self.host,
                self.port,
                ssl=self.context,
                server_hostname=self.host,
            )
        except (OSError, ssl.SSLError) as error:
            raise WireError(f"cannot connect to {self.host}:{self.port}: {error}") from error
        return connection

    async def _credentials(self) -> str | None:
        if self._authorization is None and self.auth is not None:
            async with self._auth_lock:
                if self._authorization is None:
                    self._authorization = await self._authorize(renew=False)
        return self._authorization

    async def _renew(self, stale: str | None) -> str | None:
        """New credentials after a 401 with ``stale``, fetched once however many requests
        were refused with it."""
        async with self._auth_lock:
            if self._authorization == stale:
                self._authorization = await self._authorize(renew=True)
            return self._authorization

    async def _authorize(self, *, renew: bool) -> str | None:
        """The header lightkube's auth flow sets; with ``renew``, the one it sets after a 401."""
        assert self.auth is not None
        flow: AsyncGenerator[httpx.Request, httpx.Response] = self.auth.async_auth_flow(
            httpx.Request("GET", f"https://{self.host}:{self.port}{self.prefix}/")
        )
        try:
            request = await anext(flow)
            if renew:
                with contextlib.suppress(StopAsyncIteration):
                    request = await flow.asend(httpx.Response(401, request=request))
        except (ConfigError, OSError, ValueError, KeyError) as error:
            # A token file gone, an exec plugin failing: the attempt fails, the next may work.
            raise WireError(f"cannot get credentials: {error}") from error
        finally:
            await flow.aclose()
        return request.headers.get("Authorization")

    async def close(self) -> None:
        """Close every connection, idle or in use."""
        for connection in [*self._idle, *self._busy]:
            connection.close()
        self._idle.clear()


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: write a request, parse its answer."""

    def __init__(self, answer_limit: int) -> None:
        self.answer_limit = answer_limit
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.retry_after = 0.0
        self.open = True
        self.keep_alive = True
        self.answers = 0
        self.answering = False

    @property
    def reusable(self) -> bool:
        """Open, the last answer complete, and the server did not say ``Connection: close``."""
        return self.open and self.keep_alive and self.waiter is None

    async def exchange(self, message: bytes) -> Answer:
        """Write ``message``; the complete answer, or :class:`WireError`."""
        assert self.transport is not None and self.waiter is None
        if not self.open:
            raise WireError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.body, self.size, self.retry_after, self.answering = [], 0, 0.0, False
        self.transport.write(message)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.answers and not self.answering:
            self._fail(_Stale("kept-alive connection closed by the server"))
        self._fail(WireError("connection closed before the answer was complete"))

    def data_received(self, data: bytes) -> None:
        self.answering = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(WireError(f"bad answer: {error}"))
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 11 and name.lower() == b"retry-after":
            self.retry_after = seconds(value)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.answer_limit:
            self._fail(WireError(f"answer larger than {self.answer_limit} bytes"))
            self.close()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self.answers += 1
        if self.waiter is not None and not self.waiter.done():
            status = self.parser.get_status_code()
            self.waiter.set_result(Answer(status, b"".join(self.body), self.retry_after))
        else:
            self.close()  # an answer nobody asked for: the stream cannot be trusted

    def _fail(self, error: WireError) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)


class ClientWire:
    """The same requests through lightkube's own httpx client (its pool, credentials and
    proxy settings): the path for servers :class:`Wire` cannot reach."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = http_client(client)

    async def request(self, method: str, path: str, body: bytes, content_type: str) -> Answer:
        """Send one request; :class:`WireError` when no answer came."""
        try:
            response = await self.client.request(
                method, path, content=body, headers={"Content-Type": content_type}
            )
        except httpx.TransportError as error:
            raise WireError(f"{type(error).__name__}: {error}") from error
        return Answer(
            response.status_code,
            response.content,
            seconds(response.headers.get("retry-after", "").encode()),
        )

    async def close(self) -> None:
        """Nothing of its own: the connections are lightkube's, closed with its client."""


def seconds(value: bytes) -> float:
    """A ``Retry-After`` header in seconds (0 when absent or not a number of seconds)."""
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0


def open_wire(config: SingleConfig, user_agent: str) -> Wire | None:
    """A :class:`Wire` for a kubeconfig context, or None where the lean path cannot apply
    (plain HTTP, a proxy for the API host, unusable credentials) and lightkube's client must
    carry the requests; the choice is logged once."""
    server = config.cluster.server
    url = urlsplit(server)
    proxies = urllib.request.getproxies_environment()
    context: object = None
    auth: httpx.Auth | None = None
    reason = ""
    if url.scheme != "https":
        reason = f"scheme {url.scheme or '(none)'}"
    elif ("https" in proxies or "all" in proxies) and not urllib.request.proxy_bypass(url.netloc):
        reason = "a proxy applies to the API server"
    else:
        try:
            auth = user_auth(config.user)
            context = verify_cluster(config.cluster, config.user, config.abs_file)
        except (ConfigError, OSError, ValueError) as error:
            reason = f"credentials: {error}"
    if not isinstance(context, ssl.SSLContext):
        log.info("refresh PATCHes and Events go through lightkube (%s)", reason or "no TLS")
        return None
    log.debug("refresh PATCHes and Events go over keep-alive connections to %s", server)
    return Wire(server, context, auth, user_agent)
