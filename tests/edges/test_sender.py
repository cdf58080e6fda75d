"""``send``'s transport: what it says when the receiver cuts the connection mid-body."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from kargo_bitbucket.config import DEFAULT_BODY_LIMIT
from kargo_bitbucket.sender import UnreachableError, send


@pytest.fixture
def cutting_server() -> Iterator[str]:
    """A listener that reads a request's first bytes, then resets the connection, as a
    receiver does once it has answered 413 to a body over its limit."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener:
            connection, _ = listener.accept()
            connection.recv(4096)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/bitbucket/x"
    thread.join(timeout=10)


def test_a_body_over_the_default_limit_cut_mid_send_is_explained(cutting_server: str) -> None:
    body = b"x" * (8 * DEFAULT_BODY_LIMIT)
    with pytest.raises(UnreachableError) as raised:
        send(cutting_server, "repo:push", body, b"s3cret", cloud=True, timeout=10)
    message = str(raised.value)
    assert f"closed the connection while the {len(body)}-byte body was being sent" in message
    assert f"answers 413 to a body over its --body-limit ({DEFAULT_BODY_LIMIT} bytes" in message


def test_a_small_body_cut_mid_send_is_unreachable(cutting_server: str) -> None:
    with pytest.raises(UnreachableError, match=r"^cannot reach http://127\.0\.0\.1:"):
        send(cutting_server, "repo:push", b"{}" * 10, b"s3cret", cloud=True, timeout=10)


def test_a_big_body_to_a_closed_port_is_unreachable() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{spare.getsockname()[1]}/bitbucket/x"  # bound, not listening
        body = b"x" * (2 * DEFAULT_BODY_LIMIT)
        with pytest.raises(UnreachableError, match=r"^cannot reach .*Connection refused"):
            send(url, "repo:push", body, b"s3cret", cloud=True, timeout=10)
