"""Running the app on uvicorn: header-read deadline, draining readiness, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kargo_bitbucket.app import Lifecycle

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_GRACE = 8.0


def protocol_with_header_deadline(timeout: float) -> type[HttpToolsProtocol]:
    """An httptools protocol that closes connections whose headers take longer than ``timeout``."""

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


class Server(uvicorn.Server):
    """uvicorn's server, draining on a stop signal and then exiting 0 (SPEC §9).

    uvicorn re-raises the captured signal after shutdown, which would make the
    process die of SIGTERM; a completed graceful shutdown is a success.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.draining = True
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


class CompanionServer(uvicorn.Server):
    """A second server in the process (the admin listener): the main server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ListenError(OSError):
    """A listen address cannot be bound; the message names it."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before serving so a busy port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted connections (no Nagle delay).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve_together(
    main: Server,
    main_socket: socket.socket,
    companion: CompanionServer | None,
    companion_socket: socket.socket | None,
) -> None:
    """Run the webhook server and the admin listener; stop the admin once the main one exits."""
    task = None
    if companion is not None and companion_socket is not None:
        task = asyncio.create_task(companion.serve([companion_socket]), name="admin")
    try:
        await main.serve([main_socket])
    finally:
        if companion is not None and task is not None:
            companion.should_exit = True
            await task


def build_admin_server(app: Any, host: str, port: int) -> CompanionServer:
    """The admin listener on its own port, sharing the process's event loop."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
    )
    return CompanionServer(config)


def build_server(
    app: Any,
    lifecycle: Lifecycle,
    host: str,
    port: int,
    *,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> Server:
    """A uvicorn server for ``app`` on ``host:port`` with our protocol and no access log."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",  # the caller runs the event loop (uvloop.run)
        http=protocol_with_header_deadline(header_timeout),
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=int(shutdown_grace),
        timeout_keep_alive=15,
    )
    return Server(config, lifecycle)
