"""Running the app on uvicorn: the front door's protocol, draining readiness, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from kargo_bitbucket.app import Lifecycle
from kargo_bitbucket.compat import UvicornServer
from kargo_bitbucket.connections import KEEP_ALIVE, Connections, front_door_protocol

DEFAULT_SHUTDOWN_GRACE = 8.0
ADMIN_MAX_CONNECTIONS = 32
"""Open connections the admin listener takes: scrapers and a few people browsing."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PROCESS_LINES = frozenset(
    {"Started server process [%d]", "Shutting down", "Finished server process [%d]"}
)
"""uvicorn's lines about the process, which it logs once per server it runs."""


class Server(UvicornServer):
    """uvicorn's server, draining on a stop signal and then exiting 0 (SPEC §9).

    uvicorn's own signal capture re-raises the signal after shutdown, which would make
    the process die of SIGTERM; a completed graceful shutdown is a success.
    """

    def __init__(
        self, config: uvicorn.Config, lifecycle: Lifecycle, connections: Connections
    ) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.connections = connections

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.draining = True
        if self.lifecycle.stop_by is None:  # the first signal starts the grace
            grace = self.config.timeout_graceful_shutdown or 0
            self.lifecycle.stop_by = time.monotonic() + grace
        super().handle_exit(sig, frame)


class CompanionServer(UvicornServer):
    """A second server in the process (the admin listener): the main server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class OncePerProcess(logging.Filter):
    """Lets each of uvicorn's ``PROCESS_LINES`` through once: the admin listener is a second
    server in the process, and its copies of those lines only said the same thing again."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[object, object]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in PROCESS_LINES:
            return True
        line = (record.msg, record.args)
        if line in self.seen:
            return False
        self.seen.add(line)
        return True


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
    if companion is None or companion_socket is None:
        await main.serve([main_socket])
        return
    uvicorn_log = logging.getLogger("uvicorn.error")
    once = OncePerProcess()
    uvicorn_log.addFilter(once)
    task = asyncio.create_task(companion.serve([companion_socket]), name="admin")
    try:
        await main.serve([main_socket])
    finally:
        companion.should_exit = True
        try:
            await task
        finally:
            uvicorn_log.removeFilter(once)


def build_admin_server(app: Any, host: str, port: int) -> CompanionServer:
    """The admin listener on its own port, sharing the process's event loop.

    Behind the same front door as the webhook port (head size, deadlines), with a cap of
    its own: whoever reaches the port cannot hold connections or buffer big heads there.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http=front_door_protocol(Connections(ADMIN_MAX_CONNECTIONS)),
        ws="none",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=int(KEEP_ALIVE),
    )
    return CompanionServer(config)


def build_server(
    app: Any,
    lifecycle: Lifecycle,
    host: str,
    port: int,
    *,
    connections: Connections,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> Server:
    """A uvicorn server for ``app`` on ``host:port`` behind the front door's limits."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",  # the caller runs the event loop (uvloop.run)
        http=front_door_protocol(connections),
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        # Nothing reads the client address that X-Forwarded-For would rewrite; the
        # middleware cost 2-3 µs per delivery (bench/in_process.py).
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(shutdown_grace),  # uvicorn's is whole seconds
        timeout_keep_alive=int(KEEP_ALIVE),
    )
    return Server(config, lifecycle, connections)
