"""The embedded store: indexes follow the state file, refreshes are grouped, status is published."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sqlite3
import stat
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kargo_bitbucket.admin import create_admin_app
from kargo_bitbucket.cli import parser
from kargo_bitbucket.config import resolve_env
from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.history import Candidate
from kargo_bitbucket.metrics import Metrics
from kargo_bitbucket.store import sqlite as sqlite_store
from kargo_bitbucket.store import state_file
from kargo_bitbucket.store.base import REFRESH_ANNOTATION, Target
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.sqlite import SqliteStore
from kargo_bitbucket.store.state_file import StateFile
from tests.builders import delivery_record
from tests.store.support import config, started, warehouse
from tests.support import call, until


def names(entries: list[Any]) -> list[tuple[str, str]]:
    return [(e.namespace, e.name) for e in entries]


def test_other_process_changes_are_seen_while_serving(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    writer = StateFile(path)
    writer.apply([warehouse("a", "w1")])

    async def scenario() -> None:
        store = await started(path)
        try:
            identity = {"bitbucket.org/acme/app"}

            def matching() -> list[tuple[str, str]]:
                return names(store.indexes.warehouses_for(identity, None))

            assert names(store.indexes.warehouses_for(identity, None)) == [("a", "w1")]
            writer.apply([warehouse("b", "w2"), *config("a")])
            writer.delete("Warehouse", "a", "w1")
            await until(
                lambda: names(store.indexes.warehouses_for(identity, None)) == [("b", "w2")]
            )
            assert len(store.indexes.resolution.routes) == 1
            writer.apply([warehouse("a", "w1", branch="develop")])
            writer.apply([warehouse("b", "w2", repo="https://bitbucket.org/acme/other")])
            await until(
                lambda: names(store.indexes.warehouses_for(identity, None)) == [("a", "w1")]
            )
            assert names(store.indexes.warehouses_for(identity, "b")) == []
        finally:
            await store.close()

    asyncio.run(scenario())


def test_receivers_published_into_status_and_rerouted_on_secret_change(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    writer = StateFile(path)
    writer.apply(config("demo"))

    async def scenario() -> None:
        store = await started(path)
        try:
            (pc,) = writer.get("ProjectConfig")
            (published,) = pc["status"]["webhookReceivers"]
            assert published["url"].startswith("https://k.example.com/bitbucket/")
            assert store.indexes.route(published["path"]) is not None
            writer.delete("Secret", "demo", "s")
            await until(lambda: store.indexes.route(published["path"]) is None)
            (pc,) = writer.get("ProjectConfig")
            assert pc["status"]["webhookReceivers"] == []
            ready = pc["status"]["conditions"][0]
            assert ready["status"] == "False" and "demo/s not found" in ready["message"]
        finally:
            await store.close()

    asyncio.run(scenario())


def test_concurrent_refreshes_share_transactions_and_deleted_objects_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    writer = StateFile(path)
    writer.apply([warehouse("a", f"w{i}") for i in range(50)])

    calls = 0
    original = StateFile.write_batch

    def counting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args)

    monkeypatch.setattr(StateFile, "write_batch", counting)

    async def scenario() -> None:
        store = await started(path)
        try:
            results = await asyncio.gather(
                *(store.refresh([Target("Warehouse", "a", f"w{i}")], f"v{i}") for i in range(50)),
                store.refresh([Target("Warehouse", "a", "missing")], "x"),
            )
            assert all(len(r.refreshed) == 1 for r in results[:50])
            assert results[50].gone == [Target("Warehouse", "a", "missing")]
            assert 1 <= calls <= 3
        finally:
            await store.close()

    asyncio.run(scenario())
    stored = {
        o["metadata"]["name"]: o["metadata"]["annotations"][REFRESH_ANNOTATION]
        for o in writer.get("Warehouse")
    }
    assert stored["w7"] == "v7"


def test_an_object_refreshed_twice_in_one_burst_is_written_once_with_the_later_value(
    tmp_path: Path,
) -> None:
    state = StateFile(tmp_path / "state.db")
    state.apply([warehouse("a", "w1")])
    statements: list[str] = []
    state._db.set_trace_callback(statements.append)
    target = Target("Warehouse", "a", "w1")
    gone = Target("Warehouse", "a", "missing")

    found = state.write_batch([(target, "v1"), (gone, "v2"), (target, "v3")])

    assert found == {target}
    assert sum(s.startswith("UPDATE objects") for s in statements) == 2
    (stored,) = state.get("Warehouse")
    assert stored["metadata"]["annotations"][REFRESH_ANNOTATION] == "v3"


def test_a_failed_commit_fails_every_refresh_waiting_on_it_in_one_log_line_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    StateFile(path).apply([warehouse("a", "w1"), warehouse("a", "w2")])

    def broken(*args: Any) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")

    async def scenario() -> None:
        store = await started(path)
        monkeypatch.setattr(StateFile, "write_batch", broken)
        try:
            both = [Target("Warehouse", "a", "w1"), Target("Warehouse", "a", "w2")]
            first, second = await asyncio.gather(
                store.refresh(both, "v1"), store.refresh(both[:1], "v2")
            )
            assert (first.failed, first.refreshed) == (both, [])
            assert second.failed == both[:1]
        finally:
            await store.close()

    asyncio.run(scenario())
    failures = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert [r.getMessage() for r in failures] == [
        "refresh of Warehouse a/w1 and 1 more failed: database disk image is malformed",
        "refresh of Warehouse a/w1 failed: database disk image is malformed",
    ]


def test_an_unexpected_writer_error_reaches_the_waiting_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    StateFile(path).apply([warehouse("a", "w1")])

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug in the writer")

    async def scenario() -> None:
        store = await started(path)
        monkeypatch.setattr(StateFile, "write_batch", broken)
        try:
            with pytest.raises(RuntimeError, match="bug in the writer"):
                await asyncio.wait_for(store.refresh([Target("Warehouse", "a", "w1")], "v"), 5)
        finally:
            monkeypatch.undo()
            await store.close()

    asyncio.run(scenario())


def test_refreshes_reach_the_database_file_through_background_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's commits never checkpoint (and fsync); a second connection does, each second."""
    path = tmp_path / "state.db"
    writer = StateFile(path)
    writer.apply([warehouse("a", "w1")])
    writer.close()

    def in_database_file() -> str | None:
        # immutable=1 reads the main file only, ignoring the WAL.
        with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as db:
            row = db.execute("SELECT refresh FROM objects WHERE name = 'w1'").fetchone()
            return str(row[0]) if row[0] is not None else None

    async def scenario(interval: float, refreshes: int, expected: str | None) -> None:
        monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL", interval)
        store = await started(path)
        connections = [store.state, store._inline]
        try:
            await until(
                lambda: all(
                    c._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
                    for c in connections
                    if c is not None
                ),
                what="the checkpointer to take checkpoints over from the commits",
            )
            for i in range(refreshes):
                await store.refresh([Target("Warehouse", "a", "w1")], f"v{i}")
            await until(lambda: in_database_file() == expected, what=f"{expected} in the file")
        finally:
            await store.close()

    # 1500 commits are past SQLite's automatic checkpoint (1000 WAL pages): none happened.
    asyncio.run(scenario(3600, 1500, None))
    asyncio.run(scenario(0.2, 1, "v0"))


def test_apply_of_unchanged_object_does_not_bump_revision(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.db")
    state.apply([warehouse("a", "w")])
    revision = state.revision()
    assert state.apply([warehouse("a", "w")])[0][1] == "unchanged"
    assert state.revision() == revision


def test_generation_counts_spec_changes(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.db")
    state.apply([warehouse("a", "w")])
    state.apply([warehouse("a", "w", branch="develop")])
    (obj,) = state.get("Warehouse")
    assert obj["metadata"]["generation"] == 2


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    from kargo_bitbucket.store.state_file import StateFileError

    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateFileError, match=r"junk\.db"):
        StateFile(path)


def test_checkpoints_keep_the_wal_bounded_under_steady_writes(tmp_path: Path) -> None:
    """Passive checkpoints alone never let SQLite start the WAL over while commits keep
    coming (it grew by 10 MB a second under load); the RESTART pass past the limit does."""
    path = tmp_path / "state.db"
    writer = StateFile(path)
    writer.apply([warehouse("a", "w1")])
    writer.leave_checkpoints_to_caller()
    checkpointer = StateFile(path)
    wal = Path(f"{path}-wal")
    commits = 0
    stop = threading.Event()

    def write() -> None:
        nonlocal commits
        target = Target("Warehouse", "a", "w1")
        while not stop.is_set() and commits < 5000:  # at least 20 MB through the WAL
            writer.write_batch([(target, f"v{commits}")])
            commits += 1
            time.sleep(0.0002)  # steady writes, as deliveries come: the subject

    thread = threading.Thread(target=write)
    thread.start()
    largest = 0
    deadline = time.monotonic() + 30
    try:
        while thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # the checkpointer's own pace (each second in the product)
            checkpointer.checkpoint(wal_limit=200)
            largest = max(largest, wal.stat().st_size)
    finally:
        stop.set()
        thread.join()
    assert commits == 5000
    assert largest < 8 * 1024 * 1024, largest


@contextlib.contextmanager
def another_writer(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection holding the state file's write lock until it commits."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        other.close()


def test_a_refresh_waits_off_the_event_loop_while_another_process_writes(tmp_path: Path) -> None:
    """Commits happen on the event loop only when the file is free; else on the store's thread."""
    path = tmp_path / "state.db"
    writer = StateFile(path)
    writer.apply([warehouse("a", "w1")])

    async def scenario() -> None:
        store = await started(path)
        try:
            with another_writer(path) as other:
                refresh = asyncio.create_task(store.refresh([Target("Warehouse", "a", "w1")], "v1"))
                began = time.monotonic()
                for _ in range(30):  # the loop keeps turning while the refresh waits
                    await asyncio.sleep(0.01)
                # Blocked on the lock, the loop would stall for the 10 s busy timeout.
                assert time.monotonic() - began < 5 and not refresh.done()
                other.execute("COMMIT")
            result = await asyncio.wait_for(refresh, 5)
            assert result.refreshed == [Target("Warehouse", "a", "w1")]
        finally:
            await store.close()

    asyncio.run(scenario())
    (stored,) = writer.get("Warehouse")
    assert stored["metadata"]["annotations"][REFRESH_ANNOTATION] == "v1"


def test_history_is_trimmed_in_bulk_but_readers_see_exactly_the_last_n(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.db")
    state.keep_history(10)
    for i in range(300):
        state.write_batch([], [delivery_record(f"d{i}", "a" if i % 2 else "b")], keep=10)
        shown = state.deliveries()
        assert [r.delivery_id for r in shown] == [f"d{j}" for j in range(i, max(i - 10, -1), -1)]
        (rows,) = state._db.execute("SELECT COUNT(*) FROM deliveries").fetchone()
        assert rows <= 10 + state_file.TRIM_EVERY
    # Filters apply within the last 10, not to older rows still in the file.
    assert [r.delivery_id for r in state.deliveries(namespace="a")] == [
        f"d{j}" for j in (299, 297, 295, 293, 291)
    ]
    state.keep_history(3)  # a restart with a smaller history drops the rest at once
    (rows,) = state._db.execute("SELECT COUNT(*) FROM deliveries").fetchone()
    assert rows == 3
    assert [r.delivery_id for r in state.deliveries(limit=2)] == ["d299", "d298"]


LOOKUP_MEMORY = 4 * 1024 * 1024
"""Bytes a lookup by id may allocate: far less than the 3,000 records below (~60 MiB built)."""


def test_a_delivery_is_looked_up_by_id_without_loading_the_whole_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``deliveries --id`` and ``/deliveries.json?id=`` read the history a page at a time:
    built whole, 1,000,000 records took 18.5 s and 1.76 GiB for one lookup."""
    path = tmp_path / "state.db"
    reasons = [
        Candidate(
            kind="Warehouse",
            namespace="a",
            name=f"w{i}",
            outcome="refreshed",
            reason="branch main matches",
        )
        for i in range(50)
    ]
    writer = StateFile(path)
    writer.keep_history(10_000)
    oldest = [delivery_record("wanted", attempt=str(n), candidates=reasons) for n in (1, 2)]
    later = [delivery_record(f"other-{i}", candidates=reasons) for i in range(3000)]
    writer.write_batch([], oldest + later, keep=10_000)
    writer.write_batch([], [delivery_record("wanted-not", namespace="b")], keep=10_000)

    def peak(lookup: Callable[[], Any]) -> int:
        tracemalloc.start()
        try:
            lookup()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    args = parser().parse_args(
        ["deliveries", "--id", "wanted", "-n", "a", "-o", "json", "--state", str(path)]
    )
    resolve_env(vars(args))
    assert peak(lambda: args.run(args)) < LOOKUP_MEMORY
    shown = json.loads(capsys.readouterr().out)
    assert [(r["delivery_id"], r["attempt"]) for r in shown] == [("wanted", "2"), ("wanted", "1")]

    async def scenario() -> tuple[int, Any]:
        indexes = Indexes(BaseURL.parse("https://k.example.com"), "sys")
        store = SqliteStore(StateFile(path), indexes, 10_000)
        await store.start()
        try:
            admin = create_admin_app(store, Metrics())
            return await call(admin, "GET", "/deliveries.json?id=want&limit=2")
        finally:
            await store.close()

    status, listed = (0, None)

    def admin_lookup() -> None:
        nonlocal status, listed
        status, listed = asyncio.run(scenario())

    assert peak(admin_lookup) < LOOKUP_MEMORY
    assert status == 200
    assert [(r["delivery_id"], r["attempt"]) for r in listed] == [
        ("wanted-not", "1"),
        ("wanted", "2"),
    ]


def test_deliveries_dropped_under_a_small_history_stay_dropped_after_a_larger_one(
    tmp_path: Path,
) -> None:
    """Rows are trimmed every TRIM_EVERY records, so some past the size stay in the file
    until then; a restart with a larger ``--history-size`` must not show them again."""
    path = tmp_path / "state.db"
    indexes = Indexes(BaseURL.parse("https://k.example.com"), "sys")

    async def serve(size: int, *records: str) -> list[str]:
        store = SqliteStore(StateFile(path), indexes, size)
        await store.start()
        try:
            for second, delivery_id in enumerate(records):
                at = f"2026-12-06T00:00:{second:02d}"
                store.record(delivery_record(delivery_id, time=f"{at}.0Z"))
                store.record(
                    delivery_record(f"{delivery_id}-unsigned", time=f"{at}.5Z", signed=False)
                )
            return [r.delivery_id for r in await store.deliveries()]
        finally:
            await store.close()

    small = asyncio.run(serve(3, *(f"d{i}" for i in range(40))))
    assert small == [f"d{i}{kind}" for i in (39, 38, 37) for kind in ("-unsigned", "")]
    assert asyncio.run(serve(1000)) == small


def test_delivery_records_are_written_together_and_none_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    reader = StateFile(path)
    calls = 0

    async def scenario() -> None:
        nonlocal calls
        store = await started(path)
        original = store._inline.write_batch  # type: ignore[union-attr]

        def counting(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            return original(*args)

        store._inline.write_batch = counting  # type: ignore[method-assign,union-attr]
        try:
            store.record(delivery_record("alone"))
            assert reader.deliveries() == []  # not yet: it waits for company
            await until(lambda: reader.deliveries(), what="the delayed write")
            assert [r.delivery_id for r in reader.deliveries()] == ["alone"]
            calls = 0
            for i in range(sqlite_store.RECORD_BATCH * 2):
                store.record(delivery_record(f"d{i}"))
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # a full batch is written at once, without the delay
            assert calls == 1
            assert len(reader.deliveries()) == sqlite_store.RECORD_BATCH * 2 + 1
            store.record(delivery_record("just now"))
            shown = await store.deliveries(limit=1)  # what the admin page reads
            assert [r.delivery_id for r in shown] == ["just now"]
            store.record(delivery_record("at shutdown"))
        finally:
            await store.close()

    asyncio.run(scenario())
    assert reader.deliveries(limit=1)[0].delivery_id == "at shutdown"


def test_a_cancelled_refresh_leaves_the_store_working(tmp_path: Path) -> None:
    """Shutdown may cancel a delivery whose refresh waits for another process's lock."""
    path = tmp_path / "state.db"
    writer = StateFile(path)
    writer.apply([warehouse("a", "w1")])

    async def scenario() -> None:
        store = await started(path)
        try:
            with another_writer(path) as other:
                waiting = asyncio.create_task(store.refresh([Target("Warehouse", "a", "w1")], "v1"))
                other_delivery = asyncio.create_task(
                    store.refresh([Target("Warehouse", "a", "w2")], "v1")
                )
                await asyncio.sleep(0)  # both deliveries queue their writes
                await until(lambda: not store._pending, what="the writes taken into a batch")
                waiting.cancel()
                store.record(delivery_record("meanwhile"))
                other.execute("COMMIT")
            # The batch went through; the delivery still waiting for it gets its answer.
            done = await asyncio.wait_for(other_delivery, 5)
            assert done.gone == [Target("Warehouse", "a", "w2")]
            shown = await asyncio.wait_for(store.deliveries(), 1)
            assert [r.delivery_id for r in shown] == ["meanwhile"]
            result = await store.refresh([Target("Warehouse", "a", "w1")], "v2")
            assert result.refreshed == [Target("Warehouse", "a", "w1")]
        finally:
            await asyncio.wait_for(store.close(), 5)

    asyncio.run(scenario())
    assert [r.delivery_id for r in writer.deliveries()] == ["meanwhile"]
    (stored,) = writer.get("Warehouse")
    assert stored["metadata"]["annotations"][REFRESH_ANNOTATION] == "v2"


def test_a_new_state_file_and_its_journal_are_its_owners_only(tmp_path: Path) -> None:
    # It holds every receiver's secret; the usual umask would make it world-readable.
    previous = os.umask(0o022)
    try:
        path = tmp_path / "new" / "state.db"
        state = StateFile(path)
        state.apply([warehouse("demo", "wh", "https://bitbucket.org/acme/app")])
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        state.close()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert modes["state.db"] == 0o600 and modes["state.db-wal"] == 0o600, modes


def test_serve_makes_the_state_files_folder_its_owners_only_too(tmp_path: Path) -> None:
    # serve claims the file (<state>.serve) before it opens it, and made the folder first.
    previous = os.umask(0o022)
    try:
        path = tmp_path / "new" / "state.db"
        with state_file.serve_only_here(path, "test"):
            StateFile(path).close()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("path", ["/proc/kargo-bitbucket-test.db", "/proc/none/state.db"])
def test_a_state_file_that_cannot_be_created_is_a_state_file_error(path: str) -> None:
    # Not the OSError of its creation (a traceback in apply and serve).
    with pytest.raises(state_file.StateFileError, match=f"state file {path}: "):
        StateFile(path)


def test_a_checkpoint_failing_each_second_is_logged_once_and_its_end_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk fails the checkpoint at every try: one warning, not one a second."""
    path = tmp_path / "state.db"
    failing = threading.Event()
    failing.set()
    tries: list[bool] = []
    checkpoint = StateFile.checkpoint

    def full(state: StateFile, wal_limit: int = state_file.WAL_LIMIT) -> None:
        tries.append(failing.is_set())
        if failing.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        checkpoint(state, wal_limit)

    monkeypatch.setattr(StateFile, "checkpoint", full)
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL", 0.001)
    caplog.set_level(logging.INFO, logger="kargo_bitbucket.store.sqlite")

    async def scenario() -> None:
        store = await started(path)
        try:
            await until(lambda: tries.count(True) >= 20, what="20 failed checkpoints")
            failing.clear()
            await until(lambda: tries.count(False) >= 2, what="2 checkpoints after")
        finally:
            await store.close()

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    assert lines == [
        f"checkpoint of state file {path} failing (database or disk is "
        "full); retried each second, the WAL file growing until it works",
        f"checkpoint of state file {path} works again after {tries.count(True)} failed attempt(s)",
    ]


def test_records_a_full_disk_refuses_are_tried_again_each_retry_not_in_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records waited RECORD_DELAY (50 ms) between tries: with the disk full and nothing
    arriving, serve spent 17 % of a core writing its backlog again and again."""
    path = tmp_path / "state.db"
    reader = StateFile(path)
    full = threading.Event()
    full.set()
    tries: list[float] = []
    write_batch = StateFile.write_batch

    def on_full_disk(state: StateFile, batch: Any, records: Any = (), keep: int = 10) -> Any:
        tries.append(time.monotonic())
        if full.is_set():
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise error
        return write_batch(state, batch, records, keep)

    monkeypatch.setattr(StateFile, "write_batch", on_full_disk)
    monkeypatch.setattr(sqlite_store, "RECORD_RETRY", 0.2, raising=False)

    async def scenario() -> None:
        store = await started(path)
        try:
            for i in range(sqlite_store.RECORD_BATCH * 2):
                store.record(delivery_record(f"d{i}"))
            await until(lambda: len(tries) >= 3, what="3 tries")
            full.clear()
            await until(
                lambda: len(reader.deliveries()) == sqlite_store.RECORD_BATCH * 2,
                what="every record written once there is room",
            )
        finally:
            await store.close()

    asyncio.run(scenario())
    assert min(b - a for a, b in itertools.pairwise(tries[:3])) >= 0.19


def test_a_start_on_a_full_disk_is_not_ready_and_becomes_ready_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """serve on a full disk logged a traceback ("store failed to start") and answered 503
    until restarted, space freed or not."""
    path = tmp_path / "state.db"
    StateFile(path).apply([*config("a"), warehouse("a", "w1")])
    full = threading.Event()
    full.set()
    tries = 0
    write_status = StateFile.write_status

    def on_full_disk(state: StateFile, *args: Any) -> bool:
        nonlocal tries
        if full.is_set():
            tries += 1
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise error
        return write_status(state, *args)

    monkeypatch.setattr(StateFile, "write_status", on_full_disk)
    monkeypatch.setattr(sqlite_store, "START_RETRY", 0.01, raising=False)
    caplog.set_level(logging.INFO, logger="kargo_bitbucket.store.sqlite")

    async def scenario() -> None:
        store = SqliteStore(StateFile(path), Indexes(BaseURL.parse("https://k.example.com"), "s"))
        starting = asyncio.create_task(store.start())
        try:
            await until(lambda: tries >= 3 or starting.done(), what="3 tries")
            assert not store.ready
            full.clear()
            await asyncio.wait_for(starting, 10)
            assert store.ready
        finally:
            await store.close()

    asyncio.run(scenario())
    (published,) = StateFile(path).get("ProjectConfig")
    assert [r["name"] for r in published["status"]["webhookReceivers"]] == ["r"]
    lines = [r.getMessage() for r in caplog.records if "written" in r.getMessage()]
    assert lines == [
        f"state file {path} cannot be written (database or disk is full): not ready, "
        "deliveries are answered 503 until it can; tried again each second",
        f"state file {path} can be written again: ready after {tries} failed attempt(s)",
    ]


def test_records_a_full_disk_kept_from_the_history_at_shutdown_are_said_to_be_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The line blamed another process's write lock, whatever had refused the records."""
    path = tmp_path / "state.db"

    def on_full_disk(*args: Any) -> Any:
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
        raise error

    async def scenario() -> None:
        store = await started(path)
        monkeypatch.setattr(StateFile, "write_batch", on_full_disk)
        store.record(delivery_record("d1"))
        store.record(delivery_record("d2"))
        await store.close()

    asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"2 delivery records not written to the history in state file {path}: "
        "database or disk is full"
    ]


def test_a_refused_write_blames_a_full_filesystem_only_for_a_full_disk_or_io_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held by another process is said as it is, whatever the free space."""
    path = tmp_path / "state.db"
    StateFile(path).close()
    holder, writer = sqlite3.connect(path), sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        writer.execute("BEGIN IMMEDIATE")
    holder.close()
    writer.close()
    full = os.statvfs_result((4096, 4096, 512, 0, 0, 64, 0, 0, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda at: full)
    assert state_file._cannot_write(path, locked.value) == "database is locked"
    locked.value.sqlite_errorcode = sqlite3.SQLITE_IOERR
    assert state_file._cannot_write(path, locked.value) == (
        "database is locked (its filesystem has no space left)"
    )
