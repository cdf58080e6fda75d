"""The embedded store ``serve`` runs: the state file (``state_file.py``) loaded into the
indexes and followed by polling its change counter, refreshes written once per burst."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from kargo_bitbucket.history import (
    DEFAULT_HISTORY_SIZE,
    UNSIGNED_HISTORY_SIZE,
    DeliveryRecord,
    newest_first,
    select,
    unsigned_size,
)
from kargo_bitbucket.outcomes import Outcome
from kargo_bitbucket.store.base import Note, RefreshResult, StoreUnavailable, Target
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.state_file import (
    Identity,
    StateFile,
    StateFileError,
    cannot_write,
    identity,
    newest_of,
    primary_code,
)

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25
CHECKPOINT_INTERVAL = 1.0
RECORD_BATCH = 64  # delivery records written together, or after RECORD_DELAY, whichever first
RECORD_DELAY = 0.05
RECORD_RETRY = 1.0
"""Seconds before records a failed write kept (a full disk, say) are tried again; meanwhile
new ones join them without a write each (at RECORD_DELAY the backlog's retries took 17 % of
a core with nothing arriving)."""
START_RETRY = 1.0
"""Seconds between tries to start on a state file that cannot be written."""
CLOSE_AT_LEAST = 1.0
"""Seconds close gives the queued writes even when the shutdown grace is over: the records
of deliveries cut short at its end are written then (a commit takes milliseconds)."""


def _newest(records: list[DeliveryRecord], keep: int) -> list[DeliveryRecord]:
    """The last ``keep`` signed and last ``unsigned_size(keep)`` unsigned of queued records,
    in their order: what readers would see of them."""
    signed = unsigned = 0
    chosen = []
    for record in reversed(records):
        if record.signed and signed < keep:
            signed += 1
            chosen.append(record)
        elif not record.signed and unsigned < unsigned_size(keep):
            unsigned += 1
            chosen.append(record)
    chosen.reverse()
    return chosen


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
        self._records_failure: str | None = None  # why the last write of records failed
        self._record_timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._inline: StateFile | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._given = state
        self._available = True
        self._rejected: Identity = None
        self._retrying = False  # reloading the file we served, its journal files removed
        self._released = False

    @property
    def ready(self) -> bool:
        """True once the state file has been loaded and receivers published."""
        return self._ready

    def can_refresh(self, kind: str) -> bool:
        """False, for every kind, from the moment the state file, or its journal files, are
        seen deleted or replaced until a file at its path has been loaded (``_poll``)."""
        return self._available

    async def start(self) -> None:
        """Load the whole state, publish receivers, then poll for other processes' changes.

        Starting writes (receivers' status, the history window): on a state file that cannot
        be written (a full disk) it is tried again each ``START_RETRY``, not ready meanwhile,
        said once, and ready by itself once it can be written.
        """
        failed = 0
        while True:
            try:
                await self.sync(anew=failed > 0)  # republish all: the last try stopped midway
                await self._serve_from_state()
                break
            except sqlite3.OperationalError as error:
                if not cannot_write(error):
                    raise
                failed += 1
                if failed == 1:
                    log.error(
                        "state file %s cannot be written (%s): not ready, deliveries are "
                        "answered 503 until it can; tried again each second",
                        self.state.path,
                        error,
                    )
            await asyncio.sleep(START_RETRY)
        if failed:
            log.warning(
                "state file %s can be written again: ready after %d failed attempt(s)",
                self.state.path,
                failed,
            )
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
            failed = 0  # in a row: a full disk fails every try, said once and at its end
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
                        failed += 1
                        if failed == 1:
                            log.warning(
                                "checkpoint of state file %s failing (%s); retried each second, "
                                "the WAL file growing until it works",
                                state.path,
                                error,
                            )
                        continue
                    if failed:
                        log.info(
                            "checkpoint of state file %s works again after %d failed attempt(s)",
                            state.path,
                            failed,
                        )
                    failed = 0
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
        state file (or its journal files) deleted or replaced under us within
        ``POLL_INTERVAL``."""
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
        if self.state.file_is_at_path():  # the journal files it opened are not
            log.error(
                "state file %s: its journal files (-wal, -shm) were removed or replaced while "
                "serving: deliveries are answered 503 until it is reloaded with new ones, "
                "within a second (stop serve before removing them)",
                self.state.path,
            )
            return
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
        path, served = self.state.path, self.state.identity
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
            await self._serve_from_state()  # writes too (the history window): a full disk
        except (StateFileError, sqlite3.DatabaseError) as error:
            if not self._released:
                await self._release()
            reason = error.__cause__ or error
            if found == served:
                # The file we served, its journal files removed: another process may still
                # hold the old ones (its close checkpoints them), or the disk is full.
                # Tried again at every poll, said once.
                if not self._retrying:
                    self._retrying = True
                    log.error(
                        "state file %s cannot be reloaded yet: %s; deliveries are still "
                        "answered 503, tried again every %g s",
                        path,
                        reason,
                        POLL_INTERVAL,
                    )
                return
            # A journal left beside a foreign file can pass the open and fail the first read:
            # refused once, like a file that fails the open, not retried at every poll.
            self._rejected = found
            log.error("state file %s refused: %s; deliveries are still answered 503", path, reason)
            return
        self._retrying = False
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
        if len(self._records) >= RECORD_BATCH and self._records_failure is None:
            self._write_records()
        else:
            self._write_records_soon()

    def _write_records_soon(self, delay: float = RECORD_DELAY) -> None:
        """Have the queued records written ``delay`` from now, if nothing sooner."""
        if self._record_timer is None:
            loop = asyncio.get_running_loop()
            self._record_timer = loop.call_later(delay, self._write_records)

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
                    self._records_failure = str(error)
                    self._write_records_soon(RECORD_RETRY)
                for _, _, future in batch:
                    if not future.done():  # its delivery may have been cancelled meanwhile
                        future.set_exception(error)
                continue
            if records:
                self._records_failure = None
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

        Once committed, the file written and its journal files must still be the ones at
        the path (three stats): else the refreshes went to a deleted file, or a WAL no other
        process reads, and their deliveries are answered 503.
        """
        state, inline = self.state, self._inline
        found: set[Target] | None = None
        if inline is not None:
            try:
                found = inline.write_batch(writes, records, self.history_size)
            except sqlite3.OperationalError as error:
                if primary_code(error) != sqlite3.SQLITE_BUSY:
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
                "%d delivery records not written to the history in state file %s: %s",
                len(self._records),
                self.state.path,
                self._records_failure
                or "another process held its write lock (past the shutdown grace, or the busy "
                "timeout)",
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
