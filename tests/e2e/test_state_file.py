"""A state file deleted or replaced while serving: 503 until it is back, never a lost 200.
A full disk: the commands that read still work, those that write say so in one line."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.builders import one_receiver, push, signed, to_yaml
from tests.support import Response, Server, cli, eventually, request

FULL_DISK = (
    "import resource, runpy, signal;"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1));"
    "runpy.run_module('kargo_bitbucket', run_name='__main__')"
)
"""``kargo-bitbucket`` as on a full disk: no file it writes can grow past its first byte.
SQLite then says ``disk I/O error`` (EFBIG) where a full filesystem (ENOSPC) gives ``database
or disk is full``; either way every write to the state file fails and every read can pass."""


NO_SPACE_LEFT = (
    "import os;"
    "os.statvfs = lambda path: os.statvfs_result((4096, 4096, 512, 0, 0, 64, 0, 0, 0, 255));"
)
"""... and its filesystem says it has no space left, as a full one does."""


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

        answer = eventually(reloaded, timeout=15, what="the replacement loaded")  # a poll: 0.25 s
        assert answer.json()["refreshed"] == ["demo/w3"]
        assert refreshed(state, "w3") is not None
    finally:
        server.stop()


def refresh_in_file(state: Path, name: str) -> str | None:
    """The refresh value of ``name`` read by a connection opened now (no ``serve`` code)."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        row = db.execute(
            "SELECT refresh FROM objects WHERE kind = 'Warehouse' AND name = ?", (name,)
        ).fetchone()
    return None if row is None else row[0]


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_journal_file_removed_answers_503_then_the_file_is_reloaded(
    tmp_path: Path, suffix: str
) -> None:
    """``rm state.db-wal`` on a full disk: serve kept committing to the unlinked WAL, which
    other processes no longer saw. Now: one 503, the old WAL checkpointed, 200 again."""
    state = tmp_path / "state.db"
    server, deliver = served(state, "w1")
    try:
        assert deliver().status == 200
        before = refreshed(state, "w1")
        assert before is not None
        (tmp_path / f"state.db{suffix}").unlink()
        answer = deliver()
        assert (answer.status, answer.json()) == (503, {"error": "store unavailable"})
        eventually(lambda: "is back: reloaded" in server.logs(), what="the file reloaded")
        # The 200 before the rm was kept (or the 503's later value: it committed too).
        assert (refresh_in_file(state, "w1") or "") >= before
        answer = eventually(lambda: (a := deliver()).status == 200 and a, what="a 200")
        assert answer.json()["refreshed"] == ["demo/w1"]
        assert refresh_in_file(state, "w1") != before
        logs = server.logs()
        assert logs.count("its journal files (-wal, -shm) were removed") == 1, logs
    finally:
        server.stop()


def test_other_commands_on_the_served_file_never_make_it_look_removed(tmp_path: Path) -> None:
    """``get`` and ``apply`` open and close connections of their own, and serve checkpoints
    all along: none of it replaces the journal files serve opened."""
    state = tmp_path / "state.db"
    server, deliver = served(state, "w1")
    try:
        for n in range(10):
            assert deliver().status == 200
            assert refreshed(state, "w1") is not None
            cli("apply", "-f", "-", state=state, stdin=manifests("w1", f"x{n}"))
            assert deliver().status == 200
        assert "journal files" not in server.logs()
    finally:
        server.stop()


def on_full_disk(
    *args: str, state: Path, stdin: str | None = None, reported: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", (NO_SPACE_LEFT if reported else "") + FULL_DISK, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KARGO_BITBUCKET_STATE": str(state)},
    )


@contextlib.contextmanager
def served_by_another(state: Path) -> Iterator[None]:
    """A connection reading ``state`` throughout, as serve's: its journal files stay."""
    with contextlib.closing(sqlite3.connect(state)) as db:
        db.execute("SELECT COUNT(*) FROM objects").fetchone()
        yield


def test_commands_that_read_work_on_a_full_disk(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    cli("apply", "-f", "-", state=state, stdin=manifests("w1"))
    with served_by_another(state):
        shown = on_full_disk("get", "warehouse", "w1", "-n", "demo", "-o", "json", state=state)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["metadata"]["name"] == "w1"
        for command in ("urls", "deliveries"):
            assert on_full_disk(command, state=state).returncode == 0, command


def test_apply_and_delete_on_a_full_disk_fail_in_one_line_and_change_nothing(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.db"
    cli("apply", "-f", "-", state=state, stdin=manifests("w1"))
    with served_by_another(state):
        applied = on_full_disk("apply", "-f", "-", state=state, stdin=manifests("w1", "w2"))
        deleted = on_full_disk("delete", "warehouse", "w1", "-n", "demo", state=state)
        for result in (applied, deleted):
            assert result.returncode == 1, result.stderr
            (line,) = result.stderr.splitlines()
            assert line == f"kargo-bitbucket: state file {state}: cannot write: disk I/O error"
    assert [
        w["metadata"]["name"]
        for w in json.loads(cli("get", "warehouses", "-A", "-o", "json", state=state).stdout)[
            "items"
        ]
    ] == ["w1"]
    with contextlib.closing(sqlite3.connect(state)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_command_on_a_full_disk_says_it_has_no_space_left(tmp_path: Path) -> None:
    """No serve holds the file: no room for its journal files, which SQLite calls an I/O error."""
    state = tmp_path / "state.db"
    cli("apply", "-f", "-", state=state, stdin=manifests("w1"))
    for reported, said in (
        (True, "disk I/O error (its filesystem has no space left)"),
        (False, "disk I/O error"),
    ):
        shown = on_full_disk("get", "warehouses", "-A", state=state, reported=reported)
        assert (shown.returncode, shown.stderr) == (
            1,
            f"kargo-bitbucket: state file {state}: {said}\n",
        )


def test_serve_on_a_full_disk_with_no_room_for_its_journal_fails_in_one_line(
    tmp_path: Path,
) -> None:
    """Before the state file, serve writes who holds it into ``state.db.serve``: a new one on
    a full disk failed that write with a traceback (``OSError: [Errno 28] No space left on
    device``) where the docs promise the state file's one line."""
    state = tmp_path / "state.db"
    cli("apply", "-f", "-", state=state, stdin=manifests("w1"))
    served = on_full_disk(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        "http://127.0.0.1:1",
        "--admin-listen",
        "off",
        state=state,
        reported=True,
    )
    assert (served.returncode, served.stderr) == (
        1,
        f"kargo-bitbucket: state file {state}: disk I/O error (its filesystem has no space left)\n",
    )
