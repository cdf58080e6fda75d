"""A state file deleted or replaced while serving: 503 until it is back, never a lost 200."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.builders import one_receiver, push, signed, to_yaml
from tests.support import Response, Server, cli, eventually, request


def manifests(*warehouses: str) -> str:
    return to_yaml(*one_receiver("demo", *warehouses))


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
        assert server.logs().count("was deleted, replaced or made unreadable while serving") == 1
        cli("apply", "-f", "-", state=state, stdin=manifests("w2"))
        answer = eventually(lambda: (a := deliver()).status == 200 and a, what="a 200")
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

        def reloaded() -> Response | None:  # never a 200 that refreshed w1, only in the old file
            answer = deliver()
            assert answer.status in (200, 503)
            return answer if answer.status == 200 else None

        answer = eventually(reloaded, timeout=15, what="the replacement loaded")  # polled each 1 s
        assert answer.json()["refreshed"] == ["demo/w3"]
        assert refreshed(state, "w3") is not None
    finally:
        server.stop()
