"""What a request leaves in the history, the log and the metrics is bounded (issue 9)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kargo_bitbucket.admin import create_admin_app
from kargo_bitbucket.app import create_app
from kargo_bitbucket.core.manifests import Resource
from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.delivery import Answer, read_headers
from kargo_bitbucket.history import UNSIGNED_HISTORY_SIZE, DeliveryRecord, MemoryHistory
from kargo_bitbucket.logs import JsonFormatter
from kargo_bitbucket.metrics import Metrics
from kargo_bitbucket.outcomes import Result
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.sqlite import SqliteStore
from kargo_bitbucket.store.state_file import StateFile
from tests.builders import delivery_record, push, signed
from tests.store.support import KEY, config, warehouse
from tests.support import call, until

JUST_UNDER_64_KIB = "u" * (64 * 1024 - 200)


class Served:
    """The app over a real state file, driven in process."""

    def __init__(self, store: SqliteStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.app = create_app(store, metrics=metrics)
        self.admin = create_admin_app(store, metrics)
        (self.path,) = store.indexes.resolution.routes

    async def post(self, body: bytes, **headers: str) -> tuple[int, Any]:
        return await call(self.app, "POST", self.path, headers, body)

    async def signed(
        self, body: bytes, event: str = "repo:push", **headers: str
    ) -> tuple[int, Any]:
        return await self.post(body, **signed(body, KEY, event, **headers))


def serve(
    tmp_path: Path,
    scenario: Callable[[Served], Awaitable[None]],
    resources: list[Resource] | None = None,
    history_size: int = 1000,
) -> Path:
    path = tmp_path / "state.db"
    state = StateFile(path)
    state.apply(config("a") + (resources or [warehouse("a", "w")]))

    async def run() -> None:
        indexes = Indexes(BaseURL.parse("https://k.example.com"), "sys")
        store = SqliteStore(state, indexes, history_size)
        metrics = Metrics()
        await store.start()
        try:
            await scenario(Served(store, metrics))
        finally:
            await store.close()

    asyncio.run(run())
    state.close()
    return path


def test_unsigned_flood_keeps_signed_history_and_the_state_file_small(tmp_path: Path) -> None:
    async def scenario(served: Served) -> None:
        for i in range(5):
            status, _ = await served.signed(push("main"), **{"X-Request-UUID": f"signed-{i}"})
            assert status == 200
        for _ in range(300):
            status, body = await served.post(
                b"{}", **{"X-Event-Key": "repo:push", "X-Request-UUID": JUST_UNDER_64_KIB}
            )
            assert (status, body) == (401, {"error": "missing signature"})
        shown = await served.store.deliveries()
        signed = [r.delivery_id for r in shown if r.signed]
        assert signed == [f"signed-{i}" for i in range(4, -1, -1)]
        unsigned = [r for r in shown if not r.signed]
        assert len(unsigned) == 10  # the history is 10: the unsigned ring is no bigger
        assert unsigned[0].delivery_id == f"{'u' * 64}…[truncated, {len(JUST_UNDER_64_KIB)} chars]"
        assert unsigned[0].result == "missing-signature"

    path = serve(tmp_path, scenario, history_size=10)
    reader = StateFile(path, create=False)
    assert [r.delivery_id for r in reader.deliveries() if r.signed][-1] == "signed-0"
    reader.close()
    assert path.stat().st_size < 1024 * 1024  # unbounded: 300 x 64 KiB = 19 MB


def test_unsigned_ring_is_at_most_its_own_size(tmp_path: Path) -> None:
    async def scenario(served: Served) -> None:
        for i in range(UNSIGNED_HISTORY_SIZE + 50):
            assert (await served.post(b"{}", **{"X-Request-UUID": f"u{i}"}))[0] == 401
        status, _ = await served.signed(push("main"), **{"X-Request-UUID": "real"})
        assert status == 200
        shown = await served.store.deliveries()
        assert shown[0].delivery_id == "real"
        assert len(shown) == UNSIGNED_HISTORY_SIZE + 1

    serve(tmp_path, scenario)


def test_memory_history_keeps_unsigned_requests_apart() -> None:
    history = MemoryHistory(3)

    def record(i: int, signed: bool) -> DeliveryRecord:
        return delivery_record(
            f"d{i}",
            time=f"2026-12-06T00:00:{i:02d}.000000Z",
            result="refreshed" if signed else "bad-signature",
            signed=signed,
        )

    history.record(record(0, True))
    for i in range(1, 40):
        history.record(record(i, False))
    history.record(record(40, True))
    shown = asyncio.run(history.deliveries())
    assert [r.delivery_id for r in shown] == ["d40", "d39", "d38", "d37", "d0"]


def test_signed_record_is_bounded_and_counts_what_it_leaves_out(tmp_path: Path) -> None:
    resources = [warehouse("a", f"w{i:02d}") for i in range(60)]
    refs = [f"feature/{i}" for i in range(100)] + ["main"]

    async def scenario(served: Served) -> None:
        headers = {"X-Request-UUID": JUST_UNDER_64_KIB, "X-Attempt-Number": "9" * 1000}
        status, body = await served.signed(push(*refs), event="repo:push" + "x" * 100, **headers)
        assert status == 200  # an unknown event key is ignored, but recorded
        status, body = await served.signed(push(*refs), **headers)
        assert (status, body["msg"]) == (200, "refreshed 60 warehouse(s)")
        assert len(body["deliveryId"]) < 100
        latest, ignored = await served.store.deliveries(limit=2)
        assert ignored.event == f"repo:push{'x' * 55}…[truncated, 109 chars]"
        assert latest.delivery_id.startswith("u" * 64 + "…[truncated")
        assert latest.attempt.endswith("…[truncated, 1000 chars]")
        assert latest.refs == [f"refs/heads/{ref}" for ref in refs[:20]]
        assert latest.omitted_refs == 81
        assert len(latest.candidates) == 50 and latest.omitted_candidates == 10
        assert {c.outcome for c in latest.candidates} == {"refreshed"}

    serve(tmp_path, scenario, resources)


def test_invalid_body_detail_is_kept_in_history_json_and_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(served: Served) -> None:
        status, body = await served.signed(b'{"push": 5}')
        assert status == 400 and body["detail"]
        (record,) = await served.store.deliveries()
        assert record.detail == body["detail"]
        status, listed = await call(served.admin, "GET", "/deliveries.json")
        assert status == 200 and listed[0]["detail"] == body["detail"]
        (line,) = [r for r in caplog.records if r.getMessage() == "delivery invalid-payload"]
        assert line.detail == body["detail"]  # type: ignore[attr-defined]

    with caplog.at_level(logging.INFO, "kargo_bitbucket"):
        serve(tmp_path, scenario)


def test_unsigned_refusals_are_counted_per_receiver_and_logged_a_few_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(served: Served) -> None:
        began = time.monotonic()
        for _ in range(200):
            await served.post(b"{}", **{"X-Hub-Signature": "sha256=00", "X-Request-UUID": "x"})
        flood = time.monotonic()
        assert served.metrics.signature_failures == {("invalid", "a/r"): 200}
        lines = [r for r in caplog.records if r.getMessage().startswith("delivery bad-signature")]
        assert len(lines) <= 5 * (int(flood - began) + 2)
        while int(time.monotonic()) == int(flood):  # the next second's first line counts
            await asyncio.sleep(0.02)
        await served.post(b"{}", **{"X-Hub-Signature": "sha256=00"})
        lines = [r for r in caplog.records if r.getMessage().startswith("delivery bad-signature")]
        assert "more unsigned requests to this receiver not logged" in lines[-1].getMessage()
        held = sum(int(r.args[1]) for r in lines if len(r.args or ()) == 2)  # type: ignore[arg-type]
        assert len(lines) + held == 201

    with caplog.at_level(logging.INFO, "kargo_bitbucket"):
        serve(tmp_path, scenario)


def test_every_log_field_is_cut(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("kargo_bitbucket.test")
    with caplog.at_level(logging.INFO, "kargo_bitbucket"):
        logger.info("m" * 100_000, extra={"delivery": "d" * 24_000_000, "status": 401})
    line = JsonFormatter().format(caplog.records[-1])
    assert len(line) < 10_000
    fields = json.loads(line)
    assert fields["delivery"].endswith("…[truncated, 24000000 chars]")
    assert fields["msg"].endswith("…[truncated, 100000 chars]")
    assert fields["status"] == 401


def big_records(count: int, size: int, prefix: str) -> list[DeliveryRecord]:
    return [delivery_record(f"{prefix}{i}", message="m" * size) for i in range(count)]


def file_size(path: Path) -> int:
    return path.stat().st_size


def test_state_file_shrinks_back_after_big_records_leave_the_history(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = StateFile(path)
    state.keep_history(50)
    for batch in range(4):  # 200 records of 256 KiB: 50 MB
        state.write_batch([], big_records(50, 256 * 1024, f"big{batch}-"), keep=50)
    state.checkpoint(wal_limit=0)
    grown = file_size(path)
    assert grown > 10 * 1024 * 1024
    for batch in range(10):  # normal ones push the big ones out
        state.write_batch([], big_records(64, 200, f"small{batch}-"), keep=50)
    for _ in range(100):
        state.vacuum()
        state.checkpoint(wal_limit=0)
        if file_size(path) < 2 * 1024 * 1024:
            break
    assert file_size(path) < 2 * 1024 * 1024, (grown, file_size(path))
    assert [r.delivery_id for r in state.deliveries(limit=1)] == ["small9-63"]
    state.close()


def test_a_file_made_before_auto_vacuum_is_converted_and_reclaimed_while_serving(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    old = StateFile(path)
    old._db.execute("PRAGMA auto_vacuum=NONE")
    old._db.execute("VACUUM")  # as files made by earlier versions are
    assert old._db.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    old.write_batch([], big_records(40, 512 * 1024, "big"), keep=1000)
    old._db.execute("DELETE FROM deliveries")
    old.close()
    grown = file_size(path)
    assert grown > 15 * 1024 * 1024

    async def scenario(served: Served) -> None:
        await until(
            lambda: file_size(path) <= 2 * 1024 * 1024,
            timeout=30,
            what="the checkpointer to hand the pages back",
        )
        status, _ = await served.signed(push("main"))
        assert status == 200

    serve(tmp_path, scenario)
    reader = StateFile(path, create=False)
    assert reader._db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    reader.close()


def test_a_refusal_while_its_body_was_awaited_stays_out_of_the_answer_latency(
    tmp_path: Path,
) -> None:
    """A 408 or 499 lasts as long as its sender holds the body (up to --body-timeout): an
    unsigned sender must not fill the latency histogram's 10 s bucket, which is the time
    from a body being read to its answer. The refusal is still counted and recorded."""

    async def scenario(served: Served) -> None:
        deliveries = served.app.receivers.deliveries
        route = served.store.indexes.route(served.path)
        assert route is not None
        answer = Answer.error(408, Result.BODY_TIMEOUT, "request body not received in time")
        deliveries.refused(route, read_headers([]), answer, time.perf_counter() - 9.5)
        status, _ = await served.post(b"{}")  # a 401, timed from its body being read
        assert status == 401
        scraped = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(served.metrics.exposition().decode())
            for sample in family.samples
        }
        refused_label = (("event", "other"), ("result", "body-timeout"))
        assert scraped["kargo_bitbucket_deliveries_total", refused_label] == 1
        assert scraped["kargo_bitbucket_delivery_duration_seconds_count", ()] == 1
        assert scraped["kargo_bitbucket_delivery_duration_seconds_sum", ()] < 1
        (_, refused) = await served.store.deliveries()
        assert refused.status == 408 and refused.duration_ms >= 9500

    serve(tmp_path, scenario)
