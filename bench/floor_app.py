"""A second baseline for bench/run.py: the least work any receiver must do per delivery.

On top of what bare_app.py does (read the body, check the HMAC, answer JSON) it
decodes the push with a msgspec schema of only the fields a receiver needs, finds
the one Warehouse of the repository in a dict, and writes its refresh annotation to
SQLite (WAL), one transaction per event-loop iteration, answering only once the
write is committed. No logging, history, metrics, routing, ref matching or error
handling. Run: ``python floor_app.py --port N --state F --repo URL``.

``--observed`` adds, as leanly as hand-written Python allows, what the issues require of
every delivery besides the refresh: the event key and delivery id read, one JSON log line
written, one history record kept (serialised, inserted 64 at a time in the refresh's
transaction, trimmed every 64 rows) and a counter per result. It prices that work apart
from how the product is built (bench/in_process.py runs it beside the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import sqlite3
import sys
import threading
import time
from typing import Any, BinaryIO

import msgspec
import orjson
from bare_app import READY, UNAUTHORIZED, Work, answer, make_app, read_body, serve

WAREHOUSES = 10_000
HISTORY, HISTORY_BATCH = 1000, 64


class Href(msgspec.Struct):
    href: str


class Links(msgspec.Struct):
    html: Href


class Repository(msgspec.Struct):
    links: Links


class Ref(msgspec.Struct):
    name: str
    type: str = "branch"


class Change(msgspec.Struct):
    new: Ref | None = None


class PushBody(msgspec.Struct):
    changes: list[Change]


class Push(msgspec.Struct):
    repository: Repository
    push: PushBody


DECODER = msgspec.json.Decoder(Push)


class Writer:
    """Refresh writes queued by deliveries, committed on the event loop once per iteration.

    (Handing commits to a database thread and back cost 15 us more per delivery.)
    """

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS objects (namespace TEXT, name TEXT, refresh TEXT, "
            "PRIMARY KEY (namespace, name)) WITHOUT ROWID"
        )
        self.db.executemany(
            "INSERT OR IGNORE INTO objects VALUES (?, ?, '')",
            ((f"ns{i % 100}", f"wh{i}") for i in range(WAREHOUSES)),
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, namespace TEXT, "
            "receiver TEXT, record BLOB)"
        )
        self.pending: list[tuple[tuple[str, str, str], asyncio.Future[None]]] = []
        self.records: list[tuple[str, str, bytes]] = []
        # Checkpoints (and their fsyncs) on a thread of their own, as serve does.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        threading.Thread(target=checkpoints, args=(path,), daemon=True).start()

    async def refresh(self, namespace: str, name: str) -> None:
        """Queue one write and wait until it is committed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append(((str(time.time()), namespace, name), future))
        await future

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        self._write([row for row, _ in batch])
        for _, future in batch:
            future.set_result(None)

    def _write(self, rows: list[tuple[str, str, str]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("UPDATE objects SET refresh = ? WHERE namespace = ? AND name = ?", rows)
        if len(self.records) >= HISTORY_BATCH:
            records, self.records = self.records, []
            self.db.executemany(
                "INSERT INTO deliveries (namespace, receiver, record) VALUES (?, ?, ?)", records
            )
            newest = self.db.execute("SELECT last_insert_rowid()").fetchone()[0]
            self.db.execute("DELETE FROM deliveries WHERE id <= ?", (newest - HISTORY,))
        self.db.execute("COMMIT")


def checkpoints(path: str) -> None:
    """Once a second: copy the WAL into the database; start it over past 1000 pages."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=100")
    while True:
        time.sleep(1)
        _, pages, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if pages > 1000:
            db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()


def refresh_work(warehouses: dict[str, tuple[str, str]], writer: Writer) -> Work:
    """The floor's work on a signed body: decode, look up, write, answer."""

    async def work(body: bytes) -> bytes:
        push = DECODER.decode(body)
        namespace, name = warehouses[push.repository.links.html.href.lower()]
        await writer.refresh(namespace, name)
        return orjson.dumps({"msg": "refreshed 1 warehouse(s)", "refreshed": [name]})

    return work


def observed_app(
    secret: bytes, warehouses: dict[str, tuple[str, str]], writer: Writer, log: BinaryIO
) -> Any:
    """The floor's work plus the log line, history record and counter of every delivery."""
    counts: dict[tuple[str, str], int] = {}
    seconds: list[Any] = [-1, ""]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        event = signature = delivery = b""
        for name, value in scope["headers"]:
            if name == b"x-event-key":
                event = value
            elif name == b"x-hub-signature":
                signature = value
            elif name == b"x-request-uuid":
                delivery = value
        body = await read_body(receive)
        if body is None:
            return
        status, payload = 200, READY
        expected = b"sha256=" + hmac.new(secret, body, "sha256").hexdigest().encode()
        if scope["method"] == "GET":
            pass
        elif not hmac.compare_digest(signature, expected):
            status, payload = 401, UNAUTHORIZED
        elif event != b"repo:push":
            payload = b'{"msg":"event ignored"}'
        else:
            push = DECODER.decode(body)
            repository = push.repository.links.html.href
            namespace, name = warehouses[repository.lower()]
            await writer.refresh(namespace, name)
            now = time.time()
            if int(now) != seconds[0]:
                seconds[:] = [int(now), time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))]
            stamp = f"{seconds[1]}.{int((now - seconds[0]) * 1e6):06d}Z"
            refs = [f"refs/heads/{c.new.name}" for c in push.push.changes if c.new]
            duration = round((time.perf_counter() - started) * 1000, 3)
            record = {
                "time": stamp, "receiver": "bench/bitbucket", "namespace": "bench",
                "event": "repo:push", "delivery_id": delivery.decode(), "status": 200,
                "result": "refreshed", "message": "refreshed 1 warehouse(s)",
                "duration_ms": duration, "repository": [repository], "refs": refs,
                "candidates": [{
                    "kind": "Warehouse", "namespace": namespace, "name": name,
                    "outcome": "refreshed", "reason": f"{refs[0]} pushed to {repository}",
                }],
            }  # fmt: skip
            writer.records.append(("bench", "bitbucket", orjson.dumps(record)))
            key = ("repo:push", "refreshed")
            counts[key] = counts.get(key, 0) + 1
            line = {
                "time": stamp, "level": "info", "logger": "floor", "msg": "delivery refreshed",
                "receiver": "bench/bitbucket", "event": "repo:push",
                "delivery": record["delivery_id"], "status": 200, "result": "refreshed",
                "refreshed": 1, "duration_ms": duration,
            }  # fmt: skip
            log.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            log.flush()
            payload = orjson.dumps({"msg": "refreshed 1 warehouse(s)", "refreshed": [name]})
        await answer(send, status, payload)

    return app


def main() -> None:
    """Serve the floor app as bare_app.py serves the bare one."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True, help="SQLite file to create and write")
    parser.add_argument("--repo", required=True, help="the pushed repository's html URL")
    parser.add_argument("--observed", action="store_true", help="log, history and metrics too")
    args = parser.parse_args()
    warehouses = {
        f"https://example.com/{i}": (f"ns{i % 100}", f"wh{i}") for i in range(1, WAREHOUSES)
    }
    warehouses[args.repo.lower()] = ("ns0", "wh0")
    secret = os.environ["BENCH_SECRET"].encode()
    if args.observed:
        serve(observed_app(secret, warehouses, Writer(args.state), sys.stderr.buffer), args.port)
    else:
        serve(make_app(secret, refresh_work(warehouses, Writer(args.state))), args.port)


if __name__ == "__main__":
    main()
