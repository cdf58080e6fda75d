"""The admin listener (metrics, /deliveries) behind the same front door as the webhook port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from kargo_bitbucket.connections import HEAD_LIMIT
from kargo_bitbucket.server import ADMIN_MAX_CONNECTIONS
from tests.builders import one_receiver, to_yaml
from tests.support import Server, cli, read_until_closed, request


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    state = tmp_path / "state.db"
    cli("apply", "-f", "-", state=state, stdin=to_yaml(*one_receiver("demo", "app")))
    running = Server(state)
    yield running
    assert running.stop() == 0


def admin_socket(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.admin_port))
    sock.settimeout(15)
    return sock


def test_at_the_cap_silent_connections_make_room_for_requests(server: Server) -> None:
    with ExitStack() as held:
        silent = [held.enter_context(admin_socket(server)) for _ in range(ADMIN_MAX_CONNECTIONS)]
        assert request(server.admin + "/metrics", method="GET").status == 200
        assert read_until_closed(silent[0]) == b""  # the longest silent one made room
        # The webhook port has its own cap: it still answers.
        assert request(server.base + "/healthz", method="GET").status == 200


def test_a_head_over_the_limit_gets_431_and_is_closed(server: Server) -> None:
    sock = admin_socket(server)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * HEAD_LIMIT + b"\r\n\r\n")
    answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431")
    assert request(server.admin + "/metrics", method="GET").status == 200
