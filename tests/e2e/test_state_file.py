"""A state file deleted or replaced while serving: 503 until it is back, never a lost 200."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from tests.builders import REPO, push, receiver_manifests, signed
from tests.support import Response, Server, cli, request

WAREHOUSE = """
---
apiVersion: kargo.akuity.io/v1alpha1
kind: Warehouse
metadata: {name: %s, namespace: demo}
spec:
  subscriptions: [{git: {repoURL: %s, branch: main}}]
"""


def manifests(*warehouses: str) -> str:
    return receiver_manifests() + "".join(WAREHOUSE % (name, REPO) for name in warehouses)


def until(check: Callable[[], Response], want: int, seconds: float = 5) -> Response:
    """Deliver until the answer has status ``want`` (a deadline, not a sleep)."""
    deadline = time.monotonic() + seconds
    while True:
        answer = check()
        if answer.status == want or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def refreshed(state: Path, name: str) -> str | None:
    shown = cli("get", "warehouse", name, "-n", "demo", "-o", "json", state=state).stdout
    annotations = json.loads(shown)["metadata"].get("annotations", {})
    return annotations.get("kargo.akuity.io/refresh")


def served(state: Path, *warehouses: str) -> tuple[Server, Callable[[], Response]]:
    cli("apply", "-f", "-", state=state, stdin=manifests(*warehouses))
    server = Server(state)
    (line,) = cli("urls", state=state).stdout.splitlines()
    url = line.split("\t")[2]
    body = push(("branch", "main"))

    def deliver() -> Response:
        return request(url, body, signed(body))

    return server, deliver


def remove_state(state: Path) -> None:
    for path in state.parent.glob(state.name + "*"):
        path.unlink()


def test_deleted_state_file_answers_503_until_apply_creates_a_new_one(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    server, deliver = served(state, "w1")
    try:
        assert deliver().json()["msg"] == "refreshed 1 warehouse(s)"
        remove_state(state)
        for _ in range(5):  # at once: the write is checked against the file at the path
            answer = deliver()
            assert (answer.status, answer.json()) == (503, {"error": "store unavailable"})
        assert server.logs().count("was deleted or replaced while serving") == 1
        cli("apply", "-f", "-", state=state, stdin=manifests("w2"))
        answer = until(deliver, 200)
        assert answer.json()["refreshed"] == ["demo/w2"]  # w1 is not in the new file
        assert refreshed(state, "w2") is not None
        assert "is back: reloaded" in server.logs()
    finally:
        server.stop()


def test_state_file_replaced_by_another_is_loaded_while_serving(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    server, deliver = served(state, "w1")
    try:
        assert deliver().status == 200
        other = tmp_path / "other" / "state.db"
        cli("apply", "-f", "-", state=other, stdin=manifests("w3"))
        for path in other.parent.iterdir():
            os.replace(path, state.parent / path.name)
        deadline = time.monotonic() + 15  # polled every second; the rest is for load
        while True:  # never a 200 that refreshed w1, which only the replaced file has
            answer = deliver()
            assert answer.status in (200, 503)
            if answer.status == 200:
                assert answer.json()["refreshed"] == ["demo/w3"]
                break
            assert time.monotonic() < deadline
        assert refreshed(state, "w3") is not None
    finally:
        server.stop()
