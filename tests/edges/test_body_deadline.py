"""The front door's body and write deadlines, with apps that honour them and apps that do not
(in process)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from kargo_bitbucket.connections import BODY_OVERDUE, Connections, front_door_protocol
from tests.support import MemoryTransport, until

HEAD = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"


def connect(app: Any, connections: Connections) -> tuple[Any, MemoryTransport]:
    """One connection of the front door protocol to ``app``, and its transport."""
    config = uvicorn.Config(app, lifespan="off", log_config=None, proxy_headers=False)
    config.load()
    protocol = front_door_protocol(connections)(config, ServerState(), {})
    transport = MemoryTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def open_connection(app: Any, connections: Connections) -> MemoryTransport:
    """One connection of the front door protocol to ``app``, its head and a byte of body sent."""
    protocol, transport = connect(app, connections)
    protocol.data_received(HEAD)
    return transport


def test_an_app_told_its_body_is_overdue_answers_and_the_connection_stays_counted() -> None:
    told: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body") and BODY_OVERDUE not in scope:
            pass
        told.append(BODY_OVERDUE in scope)
        await send({"type": "http.response.start", "status": 408, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        connections = Connections(body_timeout=0.01)
        transport = open_connection(app, connections)
        await until(lambda: told, 5)
        assert told == [True]
        assert transport.written.startswith(b"HTTP/1.1 408 ")
        assert connections.dropped["body-timeout"] == 0
        assert not connections.bodies  # the answer ended its body's deadline

    asyncio.run(scenario())


def test_an_app_that_ignores_the_overdue_body_has_its_connection_closed() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] == "http.request":
            pass

    async def scenario() -> None:
        connections = Connections(body_timeout=0.01)
        transport = open_connection(app, connections)
        await until(lambda: transport.closed, 5)
        assert connections.dropped["body-timeout"] == 1
        assert connections.open == 0

    asyncio.run(scenario())


async def answer_ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_client_that_does_not_take_its_answers_is_dropped_at_the_write_deadline() -> None:
    """Its answers cannot be written, so no other deadline applies: it was held for ever."""

    async def scenario() -> None:
        connections = Connections(write_timeout=0.01)
        protocol, transport = connect(answer_ok, connections)
        protocol.pause_writing()  # what the transport does when the client stops reading
        transport.buffered = 65536
        await until(lambda: transport.closed, 5)
        assert transport.aborted  # a close would wait for the client to read what is held
        assert connections.dropped["write-timeout"] == 1
        assert connections.open == 0

    asyncio.run(scenario())


def test_a_client_that_takes_its_answers_leaves_the_write_deadline() -> None:
    async def scenario() -> None:
        connections = Connections()
        protocol, transport = connect(answer_ok, connections)
        protocol.pause_writing()
        assert list(connections.writes) == [protocol]
        protocol.resume_writing()
        assert not connections.writes  # nothing left for the sweep to close
        assert not transport.closed

    asyncio.run(scenario())
