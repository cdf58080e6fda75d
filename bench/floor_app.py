"""A second baseline for bench/run.py: the least work any receiver must do per delivery.

On top of what bare_app.py does (read the body, check the HMAC, answer JSON) it
decodes the push with a msgspec schema of only the fields a receiver needs, finds
the one Warehouse of the repository in a dict, and writes its refresh annotation to
SQLite (WAL), one transaction per event-loop iteration, answering only once the
write is committed. No logging, history, metrics, routing, ref matching or error
handling. Run: ``python floor_app.py --port N --state F --repo URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import threading
import time

import msgspec
import orjson
from bare_app import Work, make_app, serve

WAREHOUSES = 10_000


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
        self.pending: list[tuple[tuple[str, str, str], asyncio.Future[None]]] = []
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


def main() -> None:
    """Serve the floor app as bare_app.py serves the bare one."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", required=True, help="SQLite file to create and write")
    parser.add_argument("--repo", required=True, help="the pushed repository's html URL")
    args = parser.parse_args()
    warehouses = {
        f"https://example.com/{i}": (f"ns{i % 100}", f"wh{i}") for i in range(1, WAREHOUSES)
    }
    warehouses[args.repo.lower()] = ("ns0", "wh0")
    work = refresh_work(warehouses, Writer(args.state))
    serve(make_app(os.environ["BENCH_SECRET"].encode(), work), args.port)


if __name__ == "__main__":
    main()
