"""What one history row costs the state file, against a ring of slots rewritten in place.

Figure 5 (history and metrics against neither) puts the history at 15-25 µs a delivery
through sockets and 7-10 % of the CPU in process. This isolates the part the state file
pays, natively and without the event loop: ``StateFile.write_batch`` with 64 records in
one of every 4 refresh commits (16 deliveries share a commit at 16 connections), a
checkpoint every 440 commits, as ``serve``'s once a second at figure 1's rate. Its rows are
appended and the oldest dropped every 64; the baseline keeps the same rows in 1,000
slots, each record replacing the oldest in place, in a copy of the schema. Prints CPU
µs per row and WAL frames written per 64 rows, for both, and their ratio by round.

    .venv/bin/python bench/history_rows.py            # 7 rounds, about 15 seconds
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from common import state_file_module

from kargo_bitbucket.history import Candidate, DeliveryRecord, to_json
from kargo_bitbucket.store.base import Target

KEEP = 1000
BATCH = 64
COMMITS_PER_BATCH = 4
CHECKPOINT_EVERY = 440  # commits: serve checkpoints once a second, 7,000 deliveries a second
CANDIDATES = 1  # figure 1's push refreshes one Warehouse and no other subscribes there


def record() -> DeliveryRecord:
    """A record the size of figure 1's (the real 10 KB push refreshing one Warehouse)."""
    return DeliveryRecord(
        time="2026-12-08T04:30:00.123456Z",
        receiver="kargo-demo/bitbucket",
        namespace="kargo-demo",
        event="repo:push",
        delivery_id="4a4dd1d8-3bd2-4e8f-9a53-59d4a9b1c1f2",
        attempt="1",
        status=200,
        result="refreshed",
        message="refreshed 1 warehouse(s)",
        duration_ms=0.412,
        repository=["https://bitbucket.org/acme/guestbook"],
        refs=["refs/heads/main"],
        candidates=[
            Candidate(
                kind="Warehouse",
                namespace="kargo-demo",
                name=f"guestbook-{i}",
                outcome="refreshed" if i == 0 else "not refreshed",
                reason="branch main was pushed" if i == 0 else "branch develop is not pushed",
            )
            for i in range(CANDIDATES)
        ],
    )


class Appended:
    """The state file as it is: ``write_batch`` appends records and trims every 64."""

    def __init__(self, directory: Path) -> None:
        self.state = state_file_module().StateFile(directory / "appended.db")
        self.db: sqlite3.Connection = self.state._db

    def commit(self, records: list[DeliveryRecord], value: str) -> None:
        self.state.write_batch([(Target("Warehouse", "ns", "w"), value)], records, KEEP)

    def checkpoint(self) -> None:
        self.state.checkpoint()


class Ring(Appended):
    """The baseline: the same schema, each record written over the oldest of KEEP slots."""

    def __init__(self, directory: Path) -> None:
        self.state = state_file_module().StateFile(directory / "ring.db")
        self.db = self.state._db
        self.slot = 0

    def commit(self, records: list[DeliveryRecord], value: str) -> None:
        rows = []
        for r in records:
            self.slot = (self.slot + 1) % KEEP
            rows.append((self.slot, r.namespace, r.receiver.rpartition("/")[2], to_json(r)))
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany(
            "REPLACE INTO deliveries (id, namespace, receiver, record) VALUES (?, ?, ?, ?)", rows
        )
        self.db.execute("UPDATE objects SET refresh = ? WHERE kind = 'Warehouse'", (value,))
        self.db.execute("COMMIT")


def cost(history: Appended, batches: int) -> float:
    """CPU µs per history row over ``batches`` batches of BATCH records."""
    records = [record()] * BATCH
    commits = 0
    started = time.process_time()
    for i in range(batches):
        for j in range(COMMITS_PER_BATCH):
            history.commit(records if j == 0 else [], f"v{i}.{j}")
            commits += 1
            if commits % CHECKPOINT_EVERY == 0:
                history.checkpoint()
    return (time.process_time() - started) / (batches * BATCH) * 1e6


def frames(history: Appended) -> float:
    """WAL frames one batch of BATCH records writes, with its commit's refresh."""
    history.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for i in range(16):
        history.commit([record()] * BATCH, f"f{i}")
    written = history.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    return float(written) / 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, default=1000, help="batches of 64 per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        appended, ring = Appended(Path(scratch)), Ring(Path(scratch))
        for history in (appended, ring):
            cost(history, 2 * KEEP // BATCH)  # full windows, pages reused from here on
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(cost(appended, args.batches))
            theirs.append(cost(ring, args.batches))
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        print(f"a record of {len(to_json(record()))} bytes (one candidate, as figure 1's)")
        print(
            f"appended and trimmed: {statistics.median(ours):.2f} µs a row, "
            f"{frames(appended):.1f} WAL frames per {BATCH} rows"
        )
        print(
            f"ring rewritten in place: {statistics.median(theirs):.2f} µs a row, "
            f"{frames(ring):.1f} WAL frames per {BATCH} rows"
        )
        print(
            "appended / ring by round: "
            + " ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
