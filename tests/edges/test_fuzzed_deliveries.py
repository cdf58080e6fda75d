"""No sender causes a 5xx (SPEC §4, issue 9): signed corpus payloads with mutated fields.

Hypothesis takes a real Bitbucket payload from the shared corpus, signs it after
changing a few of its values (invalid UTF-8, lone surrogate escapes, wrong types,
nulls, deep nesting, duplicate keys, huge numbers), and sends it through the ASGI app
to a memory store holding Warehouses and a Promotion that the payloads concern.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kargo_bitbucket.app import create_app
from tests.builders import (
    CORPUS_EVENTS,
    json_paths,
    one_receiver,
    promotion,
    sign,
    to_yaml,
    warehouse,
)
from tests.memory_store import BASE_URL, MemoryStore

SECRET = "fuzz-secret"
EVENTS = {p: e for p, e in CORPUS_EVENTS.items() if e != "diagnostics:ping"}
# Stand-ins put in the JSON text, then swapped for what json.dumps cannot write.
RAW = {
    "@invalid-byte@": b"\x80",
    "@cut-sequence@": b"ok\xc3",
    "@encoded-surrogate@": b"\xed\xa0\x80",
    "@lone-surrogate@": b"\\ud800",
    "@nul@": b"\\u0000",
}
BARE = {
    '"@huge-number@"': b"1" + b"0" * 5000,
    '"@overflow@"': b"1e999",
    '"@deep@"': b"[" * 5000 + b"]" * 5000,
    '"@duplicate@"': b'{"a": 1, "a": {"href": 2}, "href": "x", "href": null}',
}
ODD_VALUES = st.sampled_from(
    [None, 0, -1, 1.5, True, "", " ", [], {}, [None], {"href": None}, "refs/heads/main",
     *(f"x{raw}y" for raw in RAW), *BARE]
)  # fmt: skip


def payloads(corpus: Path) -> list[tuple[str, Any]]:
    """(event key, payload) for every handled corpus file."""
    found = []
    for path in sorted(corpus.glob("*.json")):
        events = [event for prefix, event in EVENTS.items() if path.name.startswith(prefix)]
        if events:
            found.append((events[0], json.loads(path.read_bytes())))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return document


def encode(document: Any) -> bytes:
    """JSON text with the stand-ins swapped for raw bytes or bare tokens."""
    text = json.dumps(document).encode()
    for stand_in, raw in BARE.items():
        text = text.replace(stand_in.encode(), raw)
    for stand_in, raw in RAW.items():
        text = text.replace(stand_in.encode(), raw)
    return text


def manifests(documents: list[tuple[str, Any]]) -> str:
    """A receiver, Warehouses on every repository the corpus names, a Promotion per PR URL."""
    strings = {s for _, payload in documents for s in _strings(payload)}
    urls = sorted(s for s in strings if s.startswith(("https://", "ssh://", "http://")))
    out = one_receiver("demo", value=SECRET)
    for i, url in enumerate(urls):
        semver = {"repoURL": url, "commitSelectionStrategy": "SemVer", "semverConstraint": ">=0.1"}
        either = warehouse("demo", f"w{i}", branch=None, repo=url)
        either["spec"]["subscriptions"].append({"git": semver})
        out += [either, promotion("demo", f"p{i}", url)]
    return to_yaml(*out)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for child in value.values() for s in _strings(child)]
    if isinstance(value, list):
        return [s for child in value for s in _strings(child)]
    return []


def test_signed_mutated_corpus_deliveries_are_never_a_5xx(corpus: Path) -> None:
    documents = payloads(corpus)
    if not documents:
        pytest.skip(f"no handled payloads in {corpus}")
    store = MemoryStore(manifests(documents), history_size=10)
    path = store.receiver_path("demo", "bb")
    transport = httpx.ASGITransport(app=create_app(store))
    events = sorted(set(EVENTS.values()))

    with asyncio.Runner() as runner:
        client = httpx.AsyncClient(transport=transport, base_url=BASE_URL)

        @settings(
            max_examples=400,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=st.data())
        def check(data: st.DataObject) -> None:
            event, payload = data.draw(st.sampled_from(documents), label="payload")
            document = json.loads(json.dumps(payload))
            for _ in range(data.draw(st.integers(1, 3), label="mutations")):
                where = json_paths(document)
                if not where:
                    break
                target = data.draw(st.sampled_from(where), label="path")
                value = copy.deepcopy(data.draw(ODD_VALUES, label="value"))  # never edit the pool
                document = replaced(document, target, value)
            if data.draw(st.integers(0, 9), label="other event") == 0:
                event = data.draw(st.sampled_from(events), label="event")
            body = encode(document)
            headers = {"X-Event-Key": event, "X-Hub-Signature": sign(body, SECRET)}
            answer = runner.run(client.post(path, content=body, headers=headers))
            assert 200 <= answer.status_code < 500, (answer.status_code, answer.text)
            reply = answer.json()
            if answer.status_code == 400 and reply["error"] == "invalid request body":
                assert reply["detail"]

        check()
        runner.run(client.aclose())
