"""Every real delivery in the shared corpus, POSTed to a running server, refreshes what it should.

Each payload file gets its own Kargo project (namespace) with a receiver, a Warehouse or
Promotion that the delivery must refresh and one it must leave alone. Expectations come from
the facts recorded in SOURCES.md (repositories, refs, PR links), not from our parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.builders import to_yaml
from tests.e2e.corpus_cases import CASES, Case, headers_for, manifests, namespace_of
from tests.support import Server, cli, eventually, request


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Any:
    """One server for every case, shared safely by construction: each case has a namespace,
    receiver and secret of its own, and its test asserts only on that namespace's objects."""
    state = tmp_path_factory.mktemp("corpus") / "state.db"
    cli("apply", "-f", "-", state=state, stdin=to_yaml(*manifests(CASES[0])))
    server = Server(state)
    documents = [doc for case in CASES[1:] for doc in manifests(case)]
    # Applied while the server runs: it must pick them up within a second.
    cli("apply", "-f", "-", state=state, stdin=to_yaml(*documents))
    yield server
    assert server.stop() == 0


def receiver_url(server: Server, namespace: str) -> str:
    """The URL published for ``namespace``'s receiver, once the running server has picked up
    the objects applied beside it (it polls every second; 20 s is for a loaded machine)."""

    def published() -> str | None:
        for line in cli("urls", state=server.state).stdout.splitlines():
            owner, name, url = line.split("\t")
            if owner == namespace and name == "bb":
                return url
        return None

    return str(eventually(published, timeout=20, what=f"a receiver published for {namespace}"))


def refreshed(state: Path, kind: str, namespace: str) -> dict[str, bool]:
    listing = json.loads(cli("get", kind, "-n", namespace, "-o", "json", state=state).stdout)
    return {
        item["metadata"]["name"]: "kargo.akuity.io/refresh"
        in (item["metadata"].get("annotations") or {})
        for item in listing["items"]
    }


@pytest.mark.parametrize("case", CASES, ids=[c.file.removesuffix(".json") for c in CASES])
def test_delivery(running: Server, corpus: Path, case: Case) -> None:
    body = (corpus / case.file).read_bytes()
    namespace = namespace_of(case)
    answer = request(receiver_url(running, namespace), body, headers_for(case, body))
    assert answer.status == case.status, answer.body
    assert answer.headers["content-type"] == "application/json"
    if case.msg:
        assert answer.json()["msg"] == case.msg
    if "error" in case.extra:
        assert answer.json()["error"] == case.extra["error"]
    if case.hit is not None:
        expected = {"hit": case.status == 200, "miss": bool(case.extra.get("refs_unknown"))}
        assert refreshed(running.state, "warehouses", namespace) == expected
    if case.pr is not None:
        assert refreshed(running.state, "promotions", namespace) == {"hit": True, "miss": False}
