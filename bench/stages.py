"""CPU of each step of one delivery, alone and one after another, beside the floor's own steps.

bench/in_process.py prices the whole delivery and its parts taken away; this prices the
pure steps (no event loop, no state-file writes) on the real 10 KB push to a state of
10,000 Warehouses, each timed alone in a tight loop (best of 5) and then all of them in
the order a delivery takes them, where they no longer keep the CPU's caches to
themselves. The floor's two steps (bench/floor_app.py: the HMAC and its lean decode)
are timed the same way, as the baseline:

    .venv/bin/python bench/stages.py
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import shutil
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import floor_app  # noqa: E402
import run  # noqa: E402
from common import CORPUS  # noqa: E402

SECRET = "stages-bench"
CALLS = 20_000


class Discard(io.RawIOBase):
    """Bytes under a log stream, thrown away: the write's system call is left out."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


def best_us(step: Callable[[], object], calls: int = CALLS) -> float:
    """µs per call of ``step``, the best of 5 runs of ``calls`` calls."""
    return min(timeit.repeat(step, number=calls, repeat=5)) / calls * 1e6


async def measure(state: Path, body: bytes) -> None:
    """Time ours and the floor's steps, on the event loop as serve runs them."""
    print("ours, each step of a delivery (µs per call, best of 5):")
    named, store = await steps(state, body)
    ours = await asyncio.to_thread(report, named)  # off the loop: each log line written at once
    await store.close()
    print("the floor's steps:")
    floor = report(floor_steps(body))
    print(f"ours / floor, one after another: {ours / floor:.2f} ({ours:.1f} / {floor:.1f} µs)")


async def steps(state: Path, body: bytes) -> tuple[dict[str, Callable[[], object]], Any]:
    """Each step of a signed push's delivery as ``Deliveries`` takes it, on real inputs.

    The log line is rendered and written to a stream that discards it: its system call
    is not counted (bench/in_process.py counts it). Returns the steps with the started
    store, for the caller to close.
    """
    from kargo_bitbucket import delivery, history, logs
    from kargo_bitbucket.core import events
    from kargo_bitbucket.core.decision import judge_push, pushed_identities
    from kargo_bitbucket.core.receivers import BaseURL
    from kargo_bitbucket.core.signature import check_signature
    from kargo_bitbucket.metrics import Metrics
    from kargo_bitbucket.outcomes import Outcome
    from kargo_bitbucket.store.base import RefreshResult, Target, now_rfc3339
    from kargo_bitbucket.store.index import Indexes
    from kargo_bitbucket.store.sqlite import SqliteStore
    from kargo_bitbucket.store.state_file import StateFile

    logs.configure("info", io.TextIOWrapper(Discard(), "utf-8", write_through=True), json=True)
    indexes = Indexes(BaseURL.parse("http://127.0.0.1:8080"), "kargo")
    store = SqliteStore(StateFile(state), indexes, history_size=0)  # record() keeps nothing
    await store.start()
    metrics = Metrics(indexes.counts)
    deliveries = delivery.Deliveries(store, metrics)
    (path,) = list(vars(indexes)["_routes"])
    route = indexes.route(path)
    assert route is not None
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    raw = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"x-event-key", b"repo:push"),
        (b"x-hub-signature", signature.encode()),
        (b"x-request-uuid", b"9f2c1d3e-0000-4000-8000-000000000000"),
        (b"x-attempt-number", b"1"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers = delivery.read_headers(raw)
    push = events.parse_event("repo:push", body)
    assert isinstance(push, events.Push)
    pushed = pushed_identities(push)
    found = indexes.warehouses_for(pushed, route.owner.scope)
    verdicts = [v for v in judge_push(push, pushed, found) if v is not None]
    result = RefreshResult()
    for verdict in verdicts:
        if verdict.refresh:
            result.add(Outcome.REFRESHED, Target(verdict.kind, verdict.namespace, verdict.name))
    assert result.refreshed, "the push refreshes no Warehouse of the state"

    now = now_rfc3339(micro=True)
    started = time.perf_counter()

    def conclude() -> Any:
        return deliveries._conclude(route, headers, push, verdicts, result, started, now)

    kept: list[history.DeliveryRecord] = []
    store.record = kept.append  # type: ignore[method-assign]
    conclude()
    store.record = lambda record: None  # type: ignore[method-assign]
    return {
        "headers": lambda: delivery.read_headers(raw),
        "timestamp": lambda: now_rfc3339(micro=True),
        "signature": lambda: check_signature(signature, body, route.secret),
        "parse": lambda: events.parse_event("repo:push", body),
        "find Warehouses": lambda: indexes.warehouses_for(
            pushed_identities(push), route.owner.scope
        ),
        "match refs": lambda: [v for v in judge_push(push, pushed, found) if v is not None],
        "targets": lambda: delivery._due(verdicts, headers.delivery_id),
        "answer, record, log line, metrics": conclude,
        "record's JSON": lambda: history.to_json(kept[0]),
    }, store


def floor_steps(body: bytes) -> dict[str, Callable[[], object]]:
    """bench/floor_app.py's own work on the same body, apart from its SQLite write."""
    secret = SECRET.encode()
    return {
        "HMAC": lambda: hmac.new(secret, body, "sha256").hexdigest(),
        "decode": lambda: floor_app.DECODER.decode(body),
    }


def report(named: dict[str, Callable[[], object]]) -> float:
    """Print each step alone and all in sequence; return the sequence's µs per delivery."""
    for name, step in named.items():
        print(f"  {name:20} {best_us(step):6.2f} µs")
    every = list(named.values())

    def in_sequence() -> None:
        for step in every:
            step()

    alone = sum(best_us(step) for step in every)
    together = best_us(in_sequence, CALLS // 4)
    print(f"  {'sum of the above':20} {alone:6.2f} µs; one after another {together:6.2f} µs")
    return together


def main() -> int:
    body = (CORPUS / "cloud_repo_push_branch_update.json").read_bytes()
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-stages-"))
    try:
        cli = run.PROJECT / ".venv" / "bin" / "kargo-bitbucket"
        state = run.build_state(cli, workdir, 10_000, 10_000, SECRET)
        asyncio.run(measure(state.path, body))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
