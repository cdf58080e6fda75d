"""A client gone while its body is read is recorded as gone, not as a 408 it never saw."""

from __future__ import annotations

import asyncio
from typing import Any

from kargo_bitbucket.app import create_app
from kargo_bitbucket.metrics import Metrics
from tests.builders import one_receiver, to_yaml
from tests.memory_store import MemoryStore


async def post_then_vanish(store: MemoryStore, metrics: Metrics) -> list[dict[str, Any]]:
    """Send half a body to the receiver, then disconnect; return what the app sent."""
    app = create_app(store, metrics=metrics)
    path = store.receiver_path("demo", "bb")
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"x-event-key", b"repo:push"), (b"content-length", b"100")],
    }
    messages = [
        {"type": "http.request", "body": b'{"push": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_disconnect_mid_body_is_recorded_as_client_disconnected() -> None:
    store = MemoryStore(to_yaml(*one_receiver("demo")))
    metrics = Metrics()
    sent = asyncio.run(post_then_vanish(store, metrics))
    assert sent == []
    (record,) = asyncio.run(store.deliveries())
    assert (record.status, record.result, record.signed) == (499, "client-disconnected", False)
    assert record.message == "client disconnected before the body was complete"
    exposition = metrics.exposition().decode()
    assert 'result="client-disconnected"' in exposition
    assert 'result="body-timeout"' not in exposition
