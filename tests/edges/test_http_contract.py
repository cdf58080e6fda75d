"""SPEC §4 as one table, over the ASGI app in process (httpx's ASGI transport, memory store).

Each row is one request and what a sender sees: status, JSON body, headers, and which
objects were refreshed. What needs a real server (timeouts, size limits of the HTTP
layer, signals) stays in tests/e2e.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import pytest

from kargo_bitbucket.app import create_app
from kargo_bitbucket.store.base import Target
from tests.builders import one_receiver, promotion, push, sign, to_yaml, warehouse
from tests.memory_store import BASE_URL, MemoryStore

SECRET = "topsecret"
REPO = "https://bitbucket.org/acme/app"
PR = "https://bitbucket.org/acme/app/pull-requests/7"
BODY_LIMIT = 4096
MANIFESTS = to_yaml(
    *one_receiver("demo", value=SECRET),
    warehouse("demo", "app", repo=REPO + ".git"),
    promotion("demo", "release", PR),
)


PUSH = push("main")
PR_MERGED = json.dumps({"pullrequest": {"links": {"html": {"href": PR}}}}).encode()
WAREHOUSE = Target("Warehouse", "demo", "app")
PROMOTION = Target("Promotion", "demo", "release")


@dataclass(frozen=True)
class Row:
    """One request to the app and the answer §4 requires."""

    status: int
    answer: dict[str, Any]
    body: bytes = PUSH
    event: str = "repo:push"
    method: str = "POST"
    path: str | None = None  # None: the receiver's published path
    signature: str | None = "valid"  # "valid": signed with the receiver's secret
    headers: dict[str, str] = field(default_factory=dict)
    streamed: bool = False
    store: Callable[[MemoryStore], None] | None = None
    refreshed: tuple[Target, ...] = ()
    answer_headers: dict[str, str] = field(default_factory=dict)


def failing(store: MemoryStore) -> None:
    store.failing.add(WAREHOUSE)


def broken(store: MemoryStore) -> None:
    store.broken = True


def loading(store: MemoryStore) -> None:
    store.loaded = False


def lost(store: MemoryStore) -> None:
    store.lost = True


INVALID = {"error": "invalid request body"}
TOO_LARGE = {"error": f"content exceeds limit of {BODY_LIMIT} bytes"}
ROWS = {
    "1 unknown path": Row(404, {"error": "not found"}, path="/bitbucket/" + "0" * 64),
    "1 path with trailing slash": Row(404, {"error": "not found"}, path="<receiver>/"),
    "1 any method on an unknown path": Row(404, {"error": "not found"}, method="GET", path="/x"),
    "2 GET on a receiver": Row(405, {"error": "method not allowed"}, method="GET",
                              answer_headers={"allow": "POST"}),
    "3 declared length over the limit": Row(413, TOO_LARGE, body=b" " * (BODY_LIMIT + 1)),
    "3 streamed body over the limit": Row(413, TOO_LARGE, body=b" " * (BODY_LIMIT + 1),
                                          streamed=True),
    "4 ping needs no signature": Row(200, {"msg": "pong"}, event="diagnostics:ping",
                                     signature=None, body=b"not json"),
    "5 no signature": Row(401, {"error": "missing signature"}, signature=None),
    "5 empty signature": Row(401, {"error": "missing signature"}, signature=""),
    "6 wrong secret": Row(401, {"error": "unauthorized"}, signature=sign(PUSH, "other")),
    "6 not hex": Row(401, {"error": "unauthorized"}, signature="sha256=zz"),
    "6 unknown algorithm": Row(401, {"error": "unauthorized"}, signature="md5=00"),
    "7 unhandled event": Row(200, {"msg": "event repo:fork ignored"}, event="repo:fork",
                             body=b"not json"),
    "8 not JSON": Row(400, INVALID, body=b"{"),
    "8 not an object": Row(400, INVALID, body=b"[]"),
    "8 wrong type": Row(400, INVALID, body=b'{"push": {"changes": "main"}}'),
    "8 invalid UTF-8 in the PR URL": Row(
        400, INVALID, event="pullrequest:fulfilled",
        body=b'{"pullrequest":{"links":{"html":{"href":"\x80"}}}}',
    ),
    "8 invalid UTF-8 in a Server ref": Row(
        400, INVALID, event="repo:refs_changed", body=b'{"changes":[{"refId":"\x80"}]}'
    ),
    "8 lone surrogate escape": Row(400, INVALID, body=PUSH.replace(b"main", b"\\ud800")),
    "9 push without repository URL": Row(
        400, {"error": "payload has no repository URL"}, body=push("main", repo=None)
    ),
    "10 push refreshes the Warehouse": Row(
        200, {"msg": "refreshed 1 warehouse(s)", "refreshed": ["demo/app"]},
        refreshed=(WAREHOUSE,),
    ),
    "10 push of another branch": Row(200, {"msg": "refreshed 0 warehouse(s)"},
                                     body=push("dev")),
    "10 event key in any case": Row(200, {"msg": "refreshed 1 warehouse(s)"}, event="REPO:Push",
                                    refreshed=(WAREHOUSE,)),
    "10 merged PR refreshes the Promotion": Row(
        200, {"msg": "refreshed 1 promotion(s)", "refreshed": ["demo/release"]},
        event="pullrequest:fulfilled", body=PR_MERGED, refreshed=(PROMOTION,),
    ),
    "11 refresh failed": Row(500, {"error": "failed to refresh 1 of 1 warehouses"},
                             store=failing),
    "- internal error": Row(500, {"error": "internal error"}, store=broken),
    "- store still loading": Row(503, {"error": "not ready, try again"}, store=loading,
                                 answer_headers={"retry-after": "5"}),
    "- store lost its state file": Row(503, {"error": "store unavailable"}, store=lost),
    # Only the refresh needs the store: a ping or a refusal is answered as ever.
    "- ping while the store is lost": Row(200, {"msg": "pong"}, event="diagnostics:ping",
                                          signature=None, store=lost),
    "- wrong secret while the store is lost": Row(401, {"error": "unauthorized"},
                                                  signature=sign(PUSH, "other"), store=lost),
    "- unhandled event while the store is lost": Row(200, {"msg": "event repo:fork ignored"},
                                                     event="repo:fork", store=lost),
}  # fmt: skip


async def exchange(store: MemoryStore, row: Row) -> httpx.Response:
    """Send the row's request to a fresh app over the ASGI transport."""
    app = create_app(store, body_limit=BODY_LIMIT)
    receiver = store.receiver_path("demo", "bb")
    path = (row.path or receiver).replace("<receiver>", receiver)
    headers = {"Content-Type": "application/json", "X-Event-Key": row.event, **row.headers}
    headers["X-Request-UUID"] = "11111111-2222-3333-4444-555555555555"
    if row.signature is not None:
        headers["X-Hub-Signature"] = (
            sign(row.body, SECRET) if row.signature == "valid" else row.signature
        )
    content: bytes | AsyncIterator[bytes] = row.body
    if row.streamed:

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(row.body), 1024):
                yield row.body[start : start + 1024]

        content = chunks()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        return await client.request(row.method, path, content=content, headers=headers)


@pytest.mark.parametrize("row", list(ROWS.values()), ids=list(ROWS))
def test_spec_4(row: Row) -> None:
    store = MemoryStore(MANIFESTS)
    if row.store is not None:
        row.store(store)
    answer = asyncio.run(exchange(store, row))
    assert answer.status_code == row.status
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body.items() >= row.answer.items()
    if row.status == 400 and body["error"] == "invalid request body":
        assert body["detail"]
    for name, value in row.answer_headers.items():
        assert answer.headers[name] == value
    assert tuple(target for target, _, _ in store.refreshes) == row.refreshed


@pytest.mark.parametrize(
    ("row", "note"),
    [
        (
            ROWS["10 push refreshes the Warehouse"],
            "Bitbucket repo:push (delivery 11111111-2222-3333-4444-555555555555) to "
            f'{REPO}: branch "main" matches subscription branch "main" (subscribed as '
            f"{REPO}.git, matched by repository identity)",
        ),
        (
            ROWS["10 merged PR refreshes the Promotion"],
            "Bitbucket pullrequest:fulfilled (delivery 11111111-2222-3333-4444-555555555555): "
            f"waits on {PR} in a git-wait-for-pr step",
        ),
    ],
)
def test_each_refreshed_object_is_told_its_delivery_and_its_own_reason(row: Row, note: str) -> None:
    store = MemoryStore(MANIFESTS)
    assert asyncio.run(exchange(store, row)).status_code == 200
    assert [n for _, _, n in store.refreshes] == [note]
