"""The embedded store: resources in one SQLite file (WAL), followed by polling a change counter."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import functools
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TextIO, TypeVar

import orjson

from kargo_bitbucket.core.manifests import Resource
from kargo_bitbucket.core.receivers import Owner, OwnerStatus
from kargo_bitbucket.history import (
    DEFAULT_HISTORY_SIZE,
    UNSIGNED_HISTORY_SIZE,
    DeliveryRecord,
    delivery_id_of,
    newest_first,
    select,
    to_json,
)
from kargo_bitbucket.outcomes import Outcome
from kargo_bitbucket.store.base import (
    REFRESH_ANNOTATION,
    Note,
    RefreshResult,
    StoreUnavailable,
    Target,
    now_rfc3339,
)
from kargo_bitbucket.store.index import Indexes

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body BLOB NOT NULL, status BLOB, refresh TEXT, rv INTEGER NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_rv ON objects (rv);
CREATE TABLE IF NOT EXISTS tombstones (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, rv INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tombstones_rv ON tombstones (rv);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL, receiver TEXT NOT NULL, record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS unsigned_deliveries (
    id INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL, receiver TEXT NOT NULL, record BLOB NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('rv', 0);
"""

POLL_INTERVAL = 0.25
CHECKPOINT_INTERVAL = 1.0
WAL_LIMIT = 1000  # pages, as SQLite's own automatic checkpoint
RESTART_WAIT = 0.1  # seconds a RESTART checkpoint may hold up writers (waiting for readers)
TRIM_EVERY = 64  # history rows dropped together (one at a time dirtied 2 more pages per commit)
RECORD_BATCH = 64  # delivery records written together, or after RECORD_DELAY, whichever first
RECORD_DELAY = 0.05
VACUUM_SLACK = 1024  # free pages (4 MiB) left alone: history churn reuses its own
VACUUM_STEP = 2048  # free pages handed back per checkpoint: 20-60 ms of write lock, measured
INCREMENTAL = 2  # PRAGMA auto_vacuum
CLOSE_AT_LEAST = 1.0
"""Seconds close gives the queued writes even when the shutdown grace is over: the records
of deliveries cut short at its end are written then (a commit takes milliseconds)."""
HISTORY_PAGE = 1000
"""History rows read at a time when looking a delivery up by id: the whole history at once
took 1.76 GiB at 1,000,000 records, and between pages the database thread is free."""
WATCHED_KINDS = ("Secret", "ProjectConfig", "ClusterConfig", "Warehouse", "Promotion")
HISTORY_TABLES = {
    True: ("deliveries", "history_size"),
    False: ("unsigned_deliveries", "unsigned_size"),
}
"""Signed deliveries and unsigned requests, each in a table of its own with its own window
(the meta key holding how many of it readers see)."""


class StateFileError(RuntimeError):
    """The state file cannot be opened or is not ours."""


class StateFileServed(RuntimeError):
    """Another ``serve`` serves this state file."""


def serve_only_here(path: str | os.PathLike[str], who: str) -> TextIO:
    """Claim the state file for this ``serve`` until the returned file is closed (or the
    process ends): an exclusive lock on ``<state>.serve``, which names ``who`` has it.

    Two servers on one file would publish the receivers' URLs in turn, and the last one's
    would stay after it stopped. Raises ``StateFileServed`` naming the other server.
    """
    real = Path(path).resolve()  # one lock whatever the spelling (links, ..) of the path
    if real.is_dir():
        raise StateFileError(f"state file {path} is a directory")
    try:
        marker = real.with_name(real.name + ".serve")
        marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the state file's
        handle = marker.open("a+", encoding="utf-8")
    except (OSError, ValueError) as error:
        raise StateFileError(f"state file {path}: {error}") from error
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        other = handle.read(200).strip() or "another process"
        handle.close()
        raise StateFileServed(
            f"state file {path} is served already ({other}): stop that server, or give this "
            "one another --state"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{who}\n")
    handle.flush()
    return handle


Identity = tuple[int, int] | None
"""(device, inode) of the file at a path; None when there is none."""


def identity(path: Path) -> Identity:
    """Which file is at ``path`` now: compared with the one opened, it tells a file that was
    deleted (``rm state.db*``) or replaced (a new one moved over it) while open. None when
    there is none, or none this process may look at (its directory's permissions changed)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _create_private(path: Path) -> None:
    """Create the state file readable by its owner only, as its folder when that is new: it
    holds every receiver's secret (SQLite gives its journal files the same mode)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


@dataclass(frozen=True, slots=True)
class Change:
    """One object created, changed or deleted since the last poll (``body`` None = deleted)."""

    kind: str
    namespace: str
    name: str
    body: dict[str, Any] | None


class StateFile:
    """Synchronous access to the state file, for the CLI and the store's worker thread."""

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, busy_timeout: float = 10.0
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        if not create and not self.path.exists():
            raise StateFileError(f"state file {self.path} does not exist")
        try:
            if create:
                _create_private(self.path)
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            # Free pages can then be handed back (``vacuum``): the file's size follows what it
            # holds. Only a new file takes it here; ``start_vacuuming`` converts an old one.
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            (mode,) = self._db.execute("PRAGMA journal_mode=WAL").fetchone()
            self.wal = mode == "wal"
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except OSError as error:
            raise StateFileError(f"state file {self.path}: {error.strerror or error}") from error
        except sqlite3.DatabaseError as error:
            raise StateFileError(f"state file {self.path}: {error}") from error
        self.identity = identity(self.path)
        self._journal = {suffix: identity(self._beside(suffix)) for suffix in ("-wal", "-shm")}
        self.left_to_exit = False

    def _beside(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def remove_own_journal(self) -> None:
        """Once closed, delete the WAL and shared-memory files this connection left at the
        path: SQLite would otherwise read them as the journal of a file put there since.
        Nothing is deleted while the file itself is still the one at the path."""
        if self.is_still_at_path():
            return
        for suffix, opened in self._journal.items():
            if opened is not None and identity(self._beside(suffix)) == opened:
                with contextlib.suppress(FileNotFoundError):
                    self._beside(suffix).unlink()

    def is_still_at_path(self) -> bool:
        """True while the file this connection writes to is the one at its path."""
        return identity(self.path) == self.identity

    def close(self) -> None:
        """Close the connection, unless it was left to the process's exit (``left_to_exit``:
        a thread given up on at shutdown may still be in it, and closing would wait for it)."""
        if not self.left_to_exit:
            self._db.close()

    def never_wait_for_locks(self) -> None:
        """Make writes fail at once with SQLITE_BUSY while another connection writes."""
        self._db.execute("PRAGMA busy_timeout=0")

    def leave_checkpoints_to_caller(self) -> None:
        """Stop this connection's commits from checkpointing (and fsyncing) the WAL.

        When a commit starts the WAL over, the file is cut back to ``WAL_LIMIT`` pages.
        """
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT * 4096}")

    def checkpoint(self, wal_limit: int = WAL_LIMIT) -> None:
        """Copy committed WAL pages into the database file, then keep the WAL bounded.

        The PASSIVE pass copies without holding up writers, but under a steady stream of
        commits the WAL never gets fully copied between two of them, so SQLite never starts
        it over: past ``wal_limit`` pages, a RESTART pass waits for a gap between writes
        (the rest is already copied, so it is short) and the next commit starts the WAL
        from its beginning. (TRUNCATE instead cost 12 ms p99 at one connection: it fsyncs.)
        """
        _, wal_pages, _ = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if wal_pages > wal_limit:
            # While it waits, writers wait too: give up after RESTART_WAIT, retry next time.
            self._db.execute(f"PRAGMA busy_timeout={int(RESTART_WAIT * 1000)}")
            self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()

    def start_vacuuming(self) -> bool:
        """Convert a file made before incremental auto-vacuum (one VACUUM); True if it did."""
        (mode,) = self._db.execute("PRAGMA auto_vacuum").fetchone()
        if mode == INCREMENTAL:
            return False
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self._db.execute("VACUUM")
        return True

    def vacuum(self, slack: int = VACUUM_SLACK, step: int = VACUUM_STEP) -> None:
        """Hand up to ``step`` free pages back once more than ``slack`` are free.

        The pages move to the end of the file, which the next checkpoint cuts. It takes the
        write lock, so it waits at most ``RESTART_WAIT`` for it and otherwise tries next time.
        """
        (free,) = self._db.execute("PRAGMA freelist_count").fetchone()
        if free <= slack:
            return
        self._db.execute(f"PRAGMA busy_timeout={int(RESTART_WAIT * 1000)}")
        try:
            # executescript steps the pragma to its end; execute() frees one page per call.
            self._db.executescript(f"PRAGMA incremental_vacuum({step})")
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken immediately so concurrent writers queue."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _next_rv(self, db: sqlite3.Connection) -> int:
        """Bump and return the change counter (inside a transaction)."""
        row = db.execute("UPDATE meta SET value = value + 1 WHERE key = 'rv' RETURNING value")
        return int(row.fetchone()[0])

    # Manifests
    def apply(self, resources: Sequence[Resource]) -> list[tuple[Resource, str]]:
        """Create or update every resource in one transaction; say what happened to each.

        ``status`` and the refresh annotation of an existing object are kept unless
        the manifest sets them (SPEC §10).
        """
        outcomes = []
        with self._transaction() as db:
            for resource in resources:
                outcomes.append((resource, self._apply_one(db, resource)))
        return outcomes

    def _apply_one(self, db: sqlite3.Connection, resource: Resource) -> str:
        body = copy.deepcopy(resource.body)
        status = body.pop("status", None)
        meta = body.setdefault("metadata", {})
        annotations = meta.get("annotations") or {}
        refresh = annotations.pop(REFRESH_ANNOTATION, None)
        if not annotations:
            meta.pop("annotations", None)
        for server_field in ("generation", "resourceVersion", "creationTimestamp", "uid"):
            meta.pop(server_field, None)
        key = (resource.kind, resource.namespace, resource.name)
        row = db.execute(
            "SELECT body, status, refresh FROM objects "
            "WHERE kind = ? AND namespace = ? AND name = ?",
            key,
        ).fetchone()
        if row is None:
            meta["generation"] = 1
            db.execute(
                "INSERT INTO objects (kind, namespace, name, body, status, refresh, rv, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *key,
                    orjson.dumps(body),
                    orjson.dumps(status) if status is not None else None,
                    refresh,
                    self._next_rv(db),
                    now_rfc3339(),
                ),
            )
            db.execute("DELETE FROM tombstones WHERE kind = ? AND namespace = ? AND name = ?", key)
            return "created"
        old_body = orjson.loads(row[0])
        generation = int(old_body.get("metadata", {}).get("generation", 1))
        if old_body.get("spec") != body.get("spec"):
            generation += 1
        meta["generation"] = generation
        new_status = orjson.dumps(status) if status is not None else row[1]
        new_refresh = refresh if refresh is not None else row[2]
        if old_body == body and new_status == row[1] and new_refresh == row[2]:
            return "unchanged"
        db.execute(
            "UPDATE objects SET body = ?, status = ?, refresh = ?, rv = ? "
            "WHERE kind = ? AND namespace = ? AND name = ?",
            (orjson.dumps(body), new_status, new_refresh, self._next_rv(db), *key),
        )
        return "configured"

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete one object; False when it did not exist."""
        key = (kind, namespace, name)
        with self._transaction() as db:
            gone = db.execute(
                "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?", key
            ).rowcount
            if gone:
                db.execute(
                    "INSERT OR REPLACE INTO tombstones (kind, namespace, name, rv) "
                    "VALUES (?, ?, ?, ?)",
                    (*key, self._next_rv(db)),
                )
        return bool(gone)

    def get(
        self, kind: str, namespace: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` as the API would show them, optionally by namespace and name."""
        query = "SELECT body, status, refresh, rv, created FROM objects WHERE kind = ?"
        args: list[Any] = [kind]
        if namespace is not None:
            query += " AND namespace = ?"
            args.append(namespace)
        if name is not None:
            query += " AND name = ?"
            args.append(name)
        query += " ORDER BY namespace, name"
        return [_assemble(*row) for row in self._db.execute(query, args)]

    # What the server uses
    def revision(self) -> int:
        """The change counter: bumped by every apply or delete, by any process."""
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'rv'").fetchone()[0])

    def changes_since(self, revision: int) -> tuple[int, list[Change]]:
        """Objects changed and deleted after ``revision``, and the revision they bring us to."""
        self._db.execute("BEGIN")
        try:
            current = self.revision()
            changes = [
                Change(kind, namespace, name, None)
                for kind, namespace, name in self._db.execute(
                    "SELECT kind, namespace, name FROM tombstones WHERE rv > ? ORDER BY rv",
                    (revision,),
                )
            ]
            for row in self._db.execute(
                "SELECT kind, namespace, name, body, status, refresh, rv, created FROM objects "
                "WHERE rv > ? ORDER BY rv",
                (revision,),
            ):
                changes.append(Change(row[0], row[1], row[2], _assemble(*row[3:])))
        finally:
            self._db.execute("COMMIT")
        return current, changes

    def write_batch(
        self,
        batch: Sequence[tuple[Target, str]],
        records: Sequence[DeliveryRecord] = (),
        keep: int = DEFAULT_HISTORY_SIZE,
    ) -> set[Target]:
        """Write refresh values and delivery records in one transaction.

        An object named more than once in ``batch`` is written once, with its last value
        (pushes to one repository on 16 connections: CPU per delivery 0.934 of writing
        each, in process).
        Returns the targets that exist. History beyond the last ``keep`` records (and
        unsigned requests beyond ``UNSIGNED_HISTORY_SIZE``) is dropped every ``TRIM_EVERY``
        records; readers see only the last ``keep`` (``keep_history``).
        """
        found = set()
        with self._transaction() as db:
            if records:
                signed = [r for r in records if r.signed]
                _insert(db, "deliveries", signed, keep)
                if len(signed) < len(records):
                    unsigned = [r for r in records if not r.signed]
                    _insert(db, "unsigned_deliveries", unsigned, _unsigned_keep(keep))
            for target, value in dict(batch).items():
                updated = db.execute(
                    "UPDATE objects SET refresh = ? WHERE kind = ? AND namespace = ? AND name = ?",
                    (value, target.kind, target.namespace, target.name),
                ).rowcount
                if updated:
                    found.add(target)
        return found

    def keep_history(self, size: int) -> None:
        """Set the number of deliveries readers see, and drop the older ones now.

        Rows past the window readers saw until now (left between two ``TRIM_EVERY``) go
        too: a restart with a larger size must not bring dropped deliveries back.
        """
        with self._transaction() as db:
            for signed, keep in ((True, size), (False, _unsigned_keep(size))):
                table, key = HISTORY_TABLES[signed]
                db.execute(
                    f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) "
                    f"- MIN(?, COALESCE((SELECT value FROM meta WHERE key = '{key}'), ?))",
                    (keep, keep),
                )
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, keep))

    def deliveries(
        self,
        namespace: str | None = None,
        receiver: str | None = None,
        limit: int | None = None,
        queued: tuple[int, int] = (0, 0),
        delivery_id: str | None = None,
    ) -> list[DeliveryRecord]:
        """The last ``keep_history`` deliveries (all if never set), newest first, with the
        unsigned requests of their own window merged in; ``delivery_id`` keeps those whose
        id starts with it (``with_id``).

        ``queued`` (signed, unsigned) newer ones not written yet take that many places of
        the windows.
        """
        if delivery_id is not None:
            pages = self.with_id(delivery_id, namespace, receiver, limit, queued)
            return newest_of(itertools.chain.from_iterable(pages), limit)
        signed = self._window(True, namespace, receiver, limit, queued[0])
        unsigned = self._window(False, namespace, receiver, limit, queued[1])
        return list(itertools.islice(newest_first(signed, unsigned), limit))

    def with_id(
        self,
        prefix: str,
        namespace: str | None,
        receiver: str | None,
        limit: int | None,
        queued: tuple[int, int] = (0, 0),
    ) -> Iterator[list[DeliveryRecord]]:
        """The records of each window whose delivery id starts with ``prefix``, newest first,
        found reading ``HISTORY_PAGE`` rows at a time: one list per page read, and no more
        pages once ``limit`` are found in a window (``newest_of`` merges them)."""
        for signed, skip in zip((True, False), queued, strict=True):
            table, key = HISTORY_TABLES[signed]
            top, floor = self._db.execute(
                f"SELECT MAX(id), MAX(id) - COALESCE((SELECT value FROM meta WHERE key = '{key}')"
                f" - ?, MAX(id)) FROM {table}",
                (skip,),
            ).fetchone()
            owner, filters = _owned_by(namespace, receiver)
            query = f"SELECT record FROM {table} WHERE id > ? AND id <= ?{owner} ORDER BY id DESC"
            wanted = limit
            while top is not None and top > floor and wanted != 0:
                rows = self._db.execute(query, (max(top - HISTORY_PAGE, floor), top, *filters))
                found = [
                    DeliveryRecord.from_json(record)
                    for (record,) in rows
                    if delivery_id_of(record).startswith(prefix)
                ][:wanted]
                if wanted is not None:
                    wanted -= len(found)
                top -= HISTORY_PAGE
                yield found

    def _window(
        self,
        signed: bool,
        namespace: str | None,
        receiver: str | None,
        limit: int | None,
        queued: int,
    ) -> list[DeliveryRecord]:
        """The records of one history table a reader sees, newest first."""
        table, key = HISTORY_TABLES[signed]
        query = (
            f"SELECT record FROM {table} WHERE id > (SELECT MAX(id) FROM {table}) "
            f"- COALESCE((SELECT value FROM meta WHERE key = '{key}') - ?, "
            f"(SELECT MAX(id) FROM {table}))"
        )
        owner, filters = _owned_by(namespace, receiver)
        query += f"{owner} ORDER BY id DESC"
        args: list[Any] = [queued, *filters]
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        return [DeliveryRecord.from_json(row[0]) for row in self._db.execute(query, args)]

    def write_status(self, owner: Owner, status: OwnerStatus) -> bool:
        """Publish an owner's receivers and conditions; False when nothing changed."""
        key = (owner.kind, owner.namespace, owner.name)
        with self._transaction() as db:
            row = db.execute(
                "SELECT body, status FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                key,
            ).fetchone()
            if row is None:
                return False
            generation = orjson.loads(row[0]).get("metadata", {}).get("generation", 1)
            old = orjson.loads(row[1]) if row[1] else {}
            new = {**old, **status.render(old, generation, now_rfc3339())}
            if new == old:
                return False
            db.execute(
                "UPDATE objects SET status = ? WHERE kind = ? AND namespace = ? AND name = ?",
                (orjson.dumps(new), *key),
            )
        return True


def _insert(
    db: sqlite3.Connection, table: str, records: Sequence[DeliveryRecord], keep: int
) -> None:
    """Append records to one history table, trimming it to ``keep`` every ``TRIM_EVERY``."""
    if not records:
        return
    db.executemany(
        f"INSERT INTO {table} (namespace, receiver, record) VALUES (?, ?, ?)",
        [(r.namespace, r.receiver.rpartition("/")[2], to_json(r)) for r in records],
    )
    # Ids are consecutive (rows go from the old end only): the newest is the last.
    newest = db.execute("SELECT last_insert_rowid()").fetchone()[0]
    if newest % TRIM_EVERY < len(records):  # this batch passed a multiple
        db.execute(f"DELETE FROM {table} WHERE id <= ?", (newest - keep,))


def _owned_by(namespace: str | None, receiver: str | None) -> tuple[str, list[str]]:
    """The ``AND`` terms of a history query that keep one owner's namespace and receiver."""
    terms, args = "", []
    if namespace is not None:
        terms, args = " AND namespace = ?", [namespace]
    if receiver is not None:
        terms, args = terms + " AND receiver = ?", [*args, receiver]
    return terms, args


def newest_of(records: Iterable[DeliveryRecord], limit: int | None) -> list[DeliveryRecord]:
    """The ``limit`` newest of records gathered from several windows, newest first (the
    order within each window is kept: ``sorted`` is stable)."""
    return sorted(records, key=lambda record: record.time, reverse=True)[:limit]


def _newest(records: list[DeliveryRecord], keep: int) -> list[DeliveryRecord]:
    """The last ``keep`` signed and last ``_unsigned_keep(keep)`` unsigned of queued records,
    in their order: what readers would see of them."""
    signed = unsigned = 0
    chosen = []
    for record in reversed(records):
        if record.signed and signed < keep:
            signed += 1
            chosen.append(record)
        elif not record.signed and unsigned < _unsigned_keep(keep):
            unsigned += 1
            chosen.append(record)
    chosen.reverse()
    return chosen


def _unsigned_keep(keep: int) -> int:
    """How many unsigned requests are kept beside ``keep`` deliveries."""
    return min(keep, UNSIGNED_HISTORY_SIZE)


def _assemble(
    body: bytes, status: bytes | None, refresh: str | None, rv: int, created: str
) -> dict[str, Any]:
    """Rebuild the object a reader expects from the stored columns."""
    obj: dict[str, Any] = orjson.loads(body)
    meta = obj.setdefault("metadata", {})
    meta["resourceVersion"] = str(rv)
    meta["creationTimestamp"] = created
    if refresh is not None:
        meta.setdefault("annotations", {})[REFRESH_ANNOTATION] = refresh
    if status is not None:
        obj["status"] = orjson.loads(status)
    return obj


def load_indexes(state: StateFile, indexes: Indexes) -> Indexes:
    """Fill ``indexes`` with everything in the state file (for one-shot commands)."""
    _, changes = state.changes_since(0)
    for change in changes:
        indexes.apply(change.kind, change.namespace, change.name, change.body)
    indexes.reroute()
    return indexes


Pending = tuple[Sequence[Target], str, "asyncio.Future[set[Target]]", StateFile]
"""One delivery's refreshes queued for the writer: its targets, their value, the future
that gets the targets of its burst that exist, and the state file it decided from."""


P = ParamSpec("P")
T = TypeVar("T")


class DatabaseThread(Executor):
    """The store's one database thread: state-file calls run there, in order.

    A daemon thread, where ThreadPoolExecutor's are joined at exit: a call waiting for
    another process's write lock (the busy timeout, per batch) must not hold the process
    past its shutdown grace.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None]
        self._calls = queue.SimpleQueue()
        self._shut = self._cancel = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` behind the calls already queued."""
        if self._shut:
            raise RuntimeError("the database thread is shut down")
        future: Future[T] = Future()
        self._calls.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """End the thread once the queued calls have run (or, ``cancel_futures``, once the
        running one has); ``wait`` for that."""
        if not self._shut:
            self._shut = True
            self._calls.put(None)
        self._cancel |= cancel_futures
        if wait:
            self._thread.join()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, run = call
            if self._cancel:
                future.cancel()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = run()
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(result)


class SqliteStore:
    """The embedded backend: indexes fed from the state file, refreshes grouped per burst."""

    def __init__(
        self, state: StateFile, indexes: Indexes, history_size: int = DEFAULT_HISTORY_SIZE
    ) -> None:
        self.state = state
        self.history_size = history_size
        self.watch_restarts: dict[tuple[str, str], int] = {}
        self.api_failures: dict[tuple[str, str], int] = {}
        self._records: list[DeliveryRecord] = []
        self.indexes = indexes
        self._revision = 0
        self._ready = False
        self._poller: asyncio.Task[None] | None = None
        self._executor = DatabaseThread("sqlite")
        self._pending: list[Pending] = []
        self._records_due = False
        self._record_timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._inline: StateFile | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._given = state
        self._available = True
        self._rejected: Identity = None
        self._released = False

    @property
    def ready(self) -> bool:
        """True once the state file has been loaded and receivers published."""
        return self._ready

    def can_refresh(self, kind: str) -> bool:
        """False, for every kind, from the moment the state file is seen deleted or replaced
        until a file at its path has been loaded (``_poll``)."""
        return self._available

    async def start(self) -> None:
        """Load the whole state, publish receivers, then poll for other processes' changes."""
        await self.sync()
        await self._serve_from_state()
        self._ready = True
        self._poller = asyncio.create_task(self._poll(), name="state-file-poller")

    async def _serve_from_state(self) -> None:
        """Auto-vacuum, the history window, the inline writer and the checkpointer."""
        try:
            if await self._run(self.state.start_vacuuming):
                log.info("state file %s converted to incremental auto-vacuum", self.state.path)
        except sqlite3.Error as error:
            log.warning("state file %s keeps its free pages: %s", self.state.path, error)
        await self._run(self.state.keep_history, self.history_size)
        if self.state.wal:  # else a COMMIT, not only BEGIN, may meet a lock
            self._inline = await self._run(StateFile, self.state.path)
            self._inline.never_wait_for_locks()
        self._checkpointer = asyncio.create_task(self._checkpoints(), name="state-checkpoints")

    async def _checkpoints(self) -> None:
        """Checkpoint the WAL from a connection and thread of its own, once a second.

        A commit that checkpoints also fsyncs the WAL and the database file: on the writer
        thread, every delivery waiting for a refresh would wait for the disk too.
        """
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint") as thread:
            try:
                state = await loop.run_in_executor(thread, StateFile, self.state.path)
            except StateFileError as error:
                log.warning("commits keep checkpointing the state file: %s", error)
                return
            try:
                await self._run(self.state.leave_checkpoints_to_caller)
                if self._inline is not None:
                    self._inline.leave_checkpoints_to_caller()
                while True:
                    await asyncio.sleep(CHECKPOINT_INTERVAL)
                    try:
                        await loop.run_in_executor(thread, state.vacuum)
                        await loop.run_in_executor(thread, state.checkpoint)
                    except sqlite3.Error as error:
                        log.warning("state file checkpoint failed: %s", error)
            finally:
                await loop.run_in_executor(thread, state.close)

    async def sync(self, anew: bool = False) -> None:
        """Apply every change since the last sync to the indexes; republish if receivers moved.

        ``anew``: the indexes are emptied and fed the whole file (another file at the path).
        """
        revision, changes = await self._run(self.state.changes_since, 0 if anew else self._revision)
        self._revision = revision
        if anew:
            self.indexes.clear()
        elif not changes:
            return
        rerouted = anew
        for change in changes:
            rerouted |= self.indexes.apply(change.kind, change.namespace, change.name, change.body)
        if rerouted or not self._ready:
            resolution = self.indexes.reroute()
            for owner, status in resolution.statuses.items():
                await self._run(self.state.write_status, owner, status)

    async def _poll(self) -> None:
        """Follow changes made by other processes (``apply`` while serving), and notice a
        state file deleted or replaced under us within ``POLL_INTERVAL``."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                if self._available and not await self._run(self.state.is_still_at_path):
                    self._lose()
                if not self._available:
                    await self._reopen()
                elif await self._run(self.state.revision) != self._revision:
                    await self.sync()
            except sqlite3.Error as error:
                log.warning("state file poll failed: %s", error)

    def _lose(self) -> None:
        """Stop taking refreshes: they would go to a file no one reads again. Said once,
        though the poller and a write batch can both notice it at the same time."""
        if not self._available:
            return
        self._available = False
        log.error(
            "state file %s was deleted, replaced or made unreadable while serving: deliveries "
            "are answered 503 until a state file is back at that path (kargo-bitbucket apply "
            "-f creates one)",
            self.state.path,
        )

    async def _reopen(self) -> None:
        """Load the file now at the state file's path, if there is one we have not refused."""
        if not self._released:
            await self._release()
        path = self.state.path
        found = identity(path)
        if found is None or found == self._rejected:
            return
        opened = functools.partial(
            StateFile, path, create=False, busy_timeout=self.state.busy_timeout
        )
        try:
            self.state = await self._run(opened)
            self._released = False
            await self.sync(anew=True)
        except (StateFileError, sqlite3.DatabaseError) as error:
            # A journal left beside a foreign file can pass the open and fail the first read:
            # refused once, like a file that fails the open, not retried at every poll.
            if not self._released:
                await self._release()
            self._rejected = found
            reason = error.__cause__ or error
            log.error("state file %s refused: %s; deliveries are still answered 503", path, reason)
            return
        await self._serve_from_state()
        self._available = True
        log.warning(
            "state file %s is back: reloaded, deliveries are answered again",
            path,
            extra=self.indexes.counts(),
        )
        if self._records:
            self._write_records()

    async def _release(self) -> None:
        """Close every connection to the lost file, then remove the journal it left behind."""
        await self._stop_checkpoints()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        await self._run(self.state.close)
        await self._run(self.state.remove_own_journal)
        self._released = True

    def record(self, record: DeliveryRecord) -> None:
        """Queue a delivery record, written with others: ``RECORD_BATCH`` or ``RECORD_DELAY``.

        Written one by one, each record rewrote a whole page of the table in the commit of
        a few refreshes (measured: grouping saved 6.5 % CPU per delivery at 16 connections
        and took p99 at one connection from 10 ms to 2 ms).
        """
        if self.history_size <= 0:
            return
        self._records.append(record)
        if len(self._records) > 2 * (self.history_size + UNSIGNED_HISTORY_SIZE):
            self._records = _newest(self._records, self.history_size)  # the file is away
        if len(self._records) >= RECORD_BATCH:
            self._write_records()
        else:
            self._write_records_soon()

    def _write_records_soon(self) -> None:
        """Have the queued records written ``RECORD_DELAY`` from now, if nothing sooner."""
        if self._record_timer is None:
            loop = asyncio.get_running_loop()
            self._record_timer = loop.call_later(RECORD_DELAY, self._write_records)

    def _write_records(self) -> None:
        """Have the writer take the queued records with its next transaction, now."""
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        self._records_due = True
        self._kick()

    async def deliveries(
        self,
        namespace: str | None = None,
        receiver: str | None = None,
        limit: int | None = None,
        delivery_id: str | None = None,
    ) -> list[DeliveryRecord]:
        """Recorded deliveries, newest first: the queued ones, then the written ones.

        Looking for a ``delivery_id``, the file is read a page per turn of the database
        thread (``StateFile.with_id``), not as one long read.
        """
        newest = _newest(self._records, self.history_size)
        unsigned = sum(not r.signed for r in newest)
        queued = select(reversed(newest), namespace, receiver, limit, delivery_id)
        if not self._available:  # the file's history went with it
            return queued
        windows = (len(newest) - unsigned, unsigned)
        written: list[DeliveryRecord]
        if delivery_id is None:
            written = await self._run(self.state.deliveries, namespace, receiver, limit, windows)
        else:
            pages = self.state.with_id(delivery_id, namespace, receiver, limit, windows)
            found: list[DeliveryRecord] = []
            while (page := await self._run(next, pages, None)) is not None:
                found += page
            written = newest_of(found, limit)
        # The writer may have written queued ones meanwhile: show those once.
        shown = {(r.time, r.receiver, r.delivery_id) for r in queued}
        written = [r for r in written if (r.time, r.receiver, r.delivery_id) not in shown]
        return list(itertools.islice(newest_first(queued, written), limit))

    def _kick(self) -> None:
        """Make sure a writer task is draining the queues."""
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="state-writer"
            )

    async def refresh(
        self, targets: Sequence[Target], value: str, note: Note | None = None
    ) -> RefreshResult:
        """Queue the writes; concurrent deliveries share one transaction per burst."""
        if not self._available:
            raise StoreUnavailable(f"state file {self.state.path} is gone")
        if not targets:
            return RefreshResult()
        future: asyncio.Future[set[Target]] = asyncio.get_running_loop().create_future()
        self._pending.append((targets, value, future, self.state))
        self._kick()
        result = RefreshResult()
        try:
            found = await future
        except sqlite3.Error as error:
            log.error("refresh of %s failed: %s", _named(targets), error)
            for target in targets:
                result.add(Outcome.FAILED, target, f"state file: {error}")
            return result
        for target in targets:
            result.add(Outcome.REFRESHED if target in found else Outcome.GONE, target)
        return result

    async def _flush(self) -> None:
        """Write everything queued, batch after batch, until the queue is empty."""
        while self._pending or self._records_due:
            batch = []
            for targets, value, future, source in self._pending:
                if source is self.state and self._available:
                    batch.append((targets, value, future))
                elif not future.done():  # decided from a file that is gone
                    future.set_exception(StoreUnavailable("state file was deleted or replaced"))
            self._pending = []
            if not self._available:  # records wait for the file to be back
                return
            records: list[DeliveryRecord] = []
            if self._records_due:
                records, self._records, self._records_due = self._records, [], False
            writes = [(target, value) for targets, value, _ in batch for target in targets]
            try:
                found = await self._write(writes, records)
            except asyncio.CancelledError:  # close gave up on it: its records are counted there
                self._records = records + self._records
                raise
            except Exception as error:  # each delivery waiting on the batch gets it, never hangs
                if records:  # they wait for another try (the newest history_size of them)
                    self._records = _newest(records + self._records, self.history_size)
                    self._write_records_soon()
                for _, _, future in batch:
                    if not future.done():  # its delivery may have been cancelled meanwhile
                        future.set_exception(error)
                continue
            for _, _, future in batch:
                if not future.done():
                    future.set_result(found)

    async def _write(
        self, writes: list[tuple[Target, str]], records: list[DeliveryRecord]
    ) -> set[Target]:
        """One transaction, committed right here on the event loop when the file is free.

        A commit without fsync takes tens of microseconds, less than handing it to the
        database thread and back (measured: 15 us per delivery). Only when another
        process holds the write lock (``apply``, a checkpoint) does the batch go to the
        database thread, to wait there for the lock without stalling the loop.

        Once committed, the file written must still be the one at the path (one stat):
        else the refreshes went to a deleted file and their deliveries are answered 503.
        """
        state, inline = self.state, self._inline
        found: set[Target] | None = None
        if inline is not None:
            try:
                found = inline.write_batch(writes, records, self.history_size)
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:  # or BUSY_SNAPSHOT...
                    raise
        if found is None:
            found = await self._run(state.write_batch, writes, records, self.history_size)
        if not state.is_still_at_path():
            if state is self.state and self._available:
                self._lose()
            raise StoreUnavailable(f"state file {state.path} was deleted or replaced")
        return found

    async def _run(self, func: Any, *args: Any) -> Any:
        """Run a state-file call on the store's single database thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def close(self, deadline: float | None = None) -> None:
        """Write what is queued; stop polling and checkpointing; release the database thread.

        At ``deadline`` (``time.monotonic()``; the end of the shutdown grace), or
        ``CLOSE_AT_LEAST`` seconds from now if that is later, it stops waiting, says in one
        line how many history records were not written, and leaves the database thread and
        its connection to the process's exit. Only records: a refresh is answered 200 once
        its transaction has committed, never before.
        """
        if deadline is not None:
            deadline = max(deadline, time.monotonic() + CLOSE_AT_LEAST)
        if self._records:
            self._write_records()
        flushed = self._flusher is None or await _by(deadline, self._flusher)
        if self._record_timer is not None:
            self._record_timer.cancel()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._stop_checkpoints()
        idle = self._executor.submit(lambda: None)  # runs once the calls before it have
        if flushed and await _by(deadline, asyncio.wrap_future(idle)):
            self._executor.shutdown(wait=True)
        else:
            await self._give_up()
        if self._records:
            log.error(
                "%d delivery records not written to the history in state file %s: another "
                "process held its write lock (past the shutdown grace, or the busy timeout)",
                len(self._records),
                self.state.path,
            )
        if self._inline is not None:
            self._inline.close()
        if self.state is not self._given:  # a file reloaded here; the caller closes its own
            self.state.close()

    async def _give_up(self) -> None:
        """Past the shutdown grace, the database thread may still wait for another process's
        write lock (up to the busy timeout) or read: leave it and its connection to the
        process's exit, the records it was writing counted as not written."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()  # its records go back to the queue
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._flusher
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.state.left_to_exit = True

    async def _stop_checkpoints(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer
            self._checkpointer = None


async def _by(deadline: float | None, task: asyncio.Future[Any]) -> bool:
    """Wait for ``task`` until ``deadline`` (``time.monotonic()``; None: as long as it takes);
    True if it ended, however."""
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    return bool(done)


def _named(targets: Sequence[Target]) -> str:
    """The first target by kind and name, and how many more: one bounded log line."""
    first = targets[0]
    more = f" and {len(targets) - 1} more" if len(targets) > 1 else ""
    return f"{first.kind} {first.namespace}/{first.name}{more}"
