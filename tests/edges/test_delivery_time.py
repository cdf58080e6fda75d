"""A delivery's history entry carries the time written to what it refreshed."""

from __future__ import annotations

import asyncio
import json

import httpx2 as httpx

from kargo_bitbucket.app import create_app
from tests.builders import one_receiver, sign, to_yaml
from tests.memory_store import BASE_URL, MemoryStore

SECRET = "s3cret"
REPO = "https://bitbucket.org/acme/app"


def test_history_time_is_the_refresh_value_written() -> None:
    store = MemoryStore(to_yaml(*one_receiver("demo", "w", value=SECRET)))
    body = json.dumps(
        {
            "repository": {"links": {"html": {"href": REPO}}},
            "push": {"changes": [{"new": {"type": "branch", "name": "main"}}]},
        }
    ).encode()
    headers = {"X-Event-Key": "repo:push", "X-Hub-Signature": sign(body, SECRET)}

    async def deliver() -> int:
        transport = httpx.ASGITransport(app=create_app(store))
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            path = store.receiver_path("demo", "bb")
            return (await client.post(path, content=body, headers=headers)).status_code

    assert asyncio.run(deliver()) == 200
    ((target, value, _),) = store.refreshes
    assert target.name == "w"
    (record,) = asyncio.run(store.deliveries())
    assert record.time == value
