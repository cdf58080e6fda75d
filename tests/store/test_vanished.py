"""The embedded store notices its state file replaced under it (in process; e2e has rm)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest

from kargo_bitbucket.core.manifests import Resource
from kargo_bitbucket.store import sqlite as sqlite_store
from kargo_bitbucket.store.base import REFRESH_ANNOTATION, StoreUnavailable, Target
from kargo_bitbucket.store.state_file import Identity, StateFile, identity
from tests.store.support import config, started, warehouse
from tests.support import until


def logged(
    caplog: pytest.LogCaptureFixture, scenario: Callable[[], Coroutine[Any, Any, None]]
) -> None:
    """Run ``scenario`` with the store's log lines, INFO and up, in ``caplog``."""
    with caplog.at_level(logging.INFO, "kargo_bitbucket"):
        asyncio.run(scenario())


def seeded(path: Path, *warehouses: Resource) -> None:
    """A state file with ``warehouses`` in namespace ``a``, its connection closed: one left
    to the garbage collector would hold the journal files open in this process."""
    seed = StateFile(path)
    seed.apply([*config("a"), *warehouses])
    seed.close()


def refresh_in_file(path: Path, name: str) -> str | None:
    """The refresh value of Warehouse a/``name`` as a connection opened now reads it."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (value,) = db.execute(
            "SELECT refresh FROM objects WHERE kind = 'Warehouse' AND namespace = 'a' AND name = ?",
            (name,),
        ).fetchone()
    return cast("str | None", value)


def test_garbage_moved_over_the_file_is_refused_then_a_good_file_is_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    first = StateFile(path)
    first.apply([*config("a"), warehouse("a", "w1")])
    first.close()
    good = tmp_path / "good" / "state.db"
    second = StateFile(good)
    second.apply([*config("a"), warehouse("a", "w2")])
    second.close()
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a database, " * 1000)
    w1, w2 = Target("Warehouse", "a", "w1"), Target("Warehouse", "a", "w2")

    async def scenario() -> None:
        store = await started(path)
        try:
            assert (await store.refresh([w1], "v1")).refreshed == [w1]
            os.replace(garbage, path)
            with pytest.raises(StoreUnavailable):  # the write batch sees it at once
                await store.refresh([w1], "v2")
            assert not store.can_refresh("Warehouse")
            await until(lambda: "refused" in caplog.text)  # SQLite's words vary: whose journal
            assert not store.can_refresh("Warehouse")
            os.replace(good, path)
            await until(lambda: store.can_refresh("Warehouse"))
            assert [e.name for e in store.indexes.warehouses("a")] == ["w2"]
            assert (await store.refresh([w2], "v3")).refreshed == [w2]
        finally:
            await store.close()

    logged(caplog, scenario)
    assert caplog.text.count("was deleted, replaced or made unreadable while serving") == 1
    assert caplog.text.count("refused") == 1  # once, not at every poll
    reader = StateFile(path, create=False)
    (stored,) = reader.get("Warehouse", "a", "w2")
    assert stored["metadata"]["annotations"][REFRESH_ANNOTATION] == "v3"
    reader.close()


def test_a_state_file_that_cannot_be_looked_at_answers_unavailable_then_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stat that fails with anything but "not found" once left the delivery waiting
    forever for its commit; now the file counts as gone until it can be seen again."""
    path = tmp_path / "state.db"
    StateFile(path).apply([*config("a"), warehouse("a", "w1")])
    w1 = Target("Warehouse", "a", "w1")
    real_stat = os.stat
    denied = True

    def stat(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if denied and os.fspath(target) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(target))
        return real_stat(target, *args, **kwargs)

    async def scenario() -> None:
        nonlocal denied
        store = await started(path)
        monkeypatch.setattr(os, "stat", stat)
        try:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.refresh([w1], "v1"), 5)
            assert not store.can_refresh("Warehouse")
            denied = False
            await until(lambda: store.can_refresh("Warehouse"))
            assert (await store.refresh([w1], "v2")).refreshed == [w1]
        finally:
            await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_journal_file_removed_answers_unavailable_then_the_file_is_reloaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    """``rm state.db-wal`` while serving: the connections kept writing to the unlinked WAL,
    which other processes no longer saw. The next commit notices it; closing the
    connections checkpoints the old WAL into the file, reloaded with journal files anew."""
    path = tmp_path / "state.db"
    seeded(path, warehouse("a", "w1"), warehouse("a", "w2"))
    w1, w2 = Target("Warehouse", "a", "w1"), Target("Warehouse", "a", "w2")

    async def scenario() -> None:
        store = await started(path)
        try:
            assert (await store.refresh([w1], "v1")).refreshed == [w1]
            (tmp_path / f"state.db{suffix}").unlink()
            with pytest.raises(StoreUnavailable):  # the commit after it sees it
                await store.refresh([w2], "v2")
            assert not store.can_refresh("Warehouse")
            await until(lambda: store.can_refresh("Warehouse"))
            assert refresh_in_file(path, "w1") == "v1"  # the old WAL's, checkpointed at close
            assert (await store.refresh([w2], "v3")).refreshed == [w2]
        finally:
            await store.close()

    logged(caplog, scenario)
    assert caplog.text.count("its journal files (-wal, -shm) were removed") == 1
    assert "is back: reloaded" in caplog.text
    assert refresh_in_file(path, "w2") == "v3"


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_journal_file_removed_is_noticed_by_the_poll_without_deliveries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    path = tmp_path / "state.db"
    seeded(path, warehouse("a", "w1"))
    w1 = Target("Warehouse", "a", "w1")

    async def scenario() -> None:
        store = await started(path)
        try:
            assert (await store.refresh([w1], "v1")).refreshed == [w1]
            (tmp_path / f"state.db{suffix}").unlink()
            await until(lambda: "is back: reloaded" in caplog.text)  # lost and reloaded at once
            assert store.can_refresh("Warehouse")
            assert refresh_in_file(path, "w1") == "v1"
            assert (await store.refresh([w1], "v2")).refreshed == [w1]
        finally:
            await store.close()

    logged(caplog, scenario)
    assert caplog.text.count("its journal files (-wal, -shm) were removed") == 1


def test_journal_removed_while_another_connection_holds_it_is_reloaded_once_that_closes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process (``deliveries`` reading, say) still holds the old journal when serve
    lets it go: serve's close is not the last, so the old WAL is not checkpointed and the
    ``-shm`` left at the path still describes it, which fails the reload. That is no
    foreign file to refuse for good: it is tried again until the other one closes (its
    close checkpoints the old WAL)."""
    path = tmp_path / "state.db"
    seeded(path, warehouse("a", "w1"), warehouse("a", "w2"))
    w1, w2 = Target("Warehouse", "a", "w1"), Target("Warehouse", "a", "w2")

    async def scenario() -> None:
        store = await started(path)
        other = sqlite3.connect(path)
        try:
            assert (await store.refresh([w1], "v1")).refreshed == [w1]
            other.execute("SELECT COUNT(*) FROM objects").fetchone()
            (tmp_path / "state.db-wal").unlink()
            with pytest.raises(StoreUnavailable):
                await store.refresh([w2], "v2")
            await until(lambda: "cannot be reloaded yet" in caplog.text)
            assert not store.can_refresh("Warehouse")
            other.close()
            await until(lambda: store.can_refresh("Warehouse"))
            assert refresh_in_file(path, "w1") == "v1"
            assert (await store.refresh([w2], "v3")).refreshed == [w2]
        finally:
            other.close()
            await store.close()

    logged(caplog, scenario)
    assert caplog.text.count("cannot be reloaded yet") == 1  # not at every poll
    assert "refused" not in caplog.text


def test_journal_removed_on_a_full_disk_is_said_once_and_reloaded_once_there_is_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rm state.db-wal`` on a full disk: the reload opens and reads the file, but trimming
    the history to its window is a write and fails. That failure escaped the reload, to be
    logged as ``state file poll failed`` at every poll (4 lines a second) until space was
    freed, where the reload's own failures are said once."""
    path = tmp_path / "state.db"
    seeded(path, warehouse("a", "w1"))
    w1 = Target("Warehouse", "a", "w1")
    full = False
    tries = 0
    keep_history = StateFile.keep_history

    def on_full_disk(state: StateFile, size: int) -> None:
        nonlocal tries
        if full:
            tries += 1
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise error
        keep_history(state, size)

    monkeypatch.setattr(StateFile, "keep_history", on_full_disk)

    async def scenario() -> None:
        nonlocal full
        store = await started(path)
        try:
            assert (await store.refresh([w1], "v1")).refreshed == [w1]
            full = True
            (tmp_path / "state.db-wal").unlink()
            await until(lambda: tries >= 3, what="3 reloads refused by the full disk")
            assert not store.can_refresh("Warehouse")
            full = False
            await until(
                lambda: store.can_refresh("Warehouse"), what="the reload once there is room"
            )
            assert (await store.refresh([w1], "v2")).refreshed == [w1]
        finally:
            await store.close()

    logged(caplog, scenario)
    assert "poll failed" not in caplog.text
    assert caplog.text.count("cannot be reloaded yet: database or disk is full") == 1
    assert caplog.text.count("is back: reloaded") == 1
    assert refresh_in_file(path, "w1") == "v2"


def test_another_file_that_opens_but_fails_its_first_read_is_refused_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file moved over the served one whose first read fails (a journal left beside it):
    refused once, as one that fails the open, not reloaded at every poll."""
    path = tmp_path / "state.db"
    seeded(path, warehouse("a", "w1"))
    other = tmp_path / "other" / "state.db"
    seeded(other, warehouse("a", "w2"))
    reloads = looks = 0

    def looked(at: Path) -> Identity:
        nonlocal looks
        looks += 1
        return identity(at)

    monkeypatch.setattr(sqlite_store, "identity", looked)

    async def scenario() -> None:
        store = await started(path)
        sync = store.sync

        async def unreadable(anew: bool = False) -> None:
            nonlocal reloads
            if anew:
                reloads += 1
                raise sqlite3.DatabaseError("file is not a database")
            await sync(anew)

        monkeypatch.setattr(store, "sync", unreadable)
        try:
            os.replace(other, path)
            await until(lambda: "refused" in caplog.text, what="the other file refused")
            after = looks
            await until(lambda: looks >= after + 4, what="four more polls")
        finally:
            await store.close()

    logged(caplog, scenario)
    assert reloads == 1
    assert caplog.text.count("refused") == 1
