"""Delivery history: what arrived, what we answered, and why each candidate was (not) refreshed."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

DEFAULT_HISTORY_SIZE = 1000
MAX_HISTORY_SIZE = 1_000_000
"""The most deliveries a history may keep (``--history-size``) or a reader ask for."""
UNSIGNED_HISTORY_SIZE = 100
"""Requests answered before a signature was verified (ping, 401, 405, 408, 413, 499) kept apart,
in a ring of their own: anyone can send them, and they must not push signed deliveries
out of the history."""


def unsigned_size(size: int) -> int:
    """How many unsigned requests are kept beside a history of ``size`` deliveries."""
    return min(size, UNSIGNED_HISTORY_SIZE)


class Candidate(msgspec.Struct, kw_only=True):
    """One object a delivery considered, and the sentence saying what happened to it."""

    kind: str
    namespace: str
    name: str
    outcome: str
    """An ``Outcome`` when this version made it; any text when read back (see ``from_json``)."""
    reason: str


class DeliveryRecord(msgspec.Struct):
    """One delivery, without secrets or payload: enough to answer "why didn't it refresh?".

    A msgspec Struct: ``to_json`` and ``from_json`` are its codec, and it is built and
    serialised in a quarter of a slotted dataclass's time with orjson (2.7 → 0.7 µs, in
    process). Every field is bounded (``bounds``): lists keep their first items and count
    the others.
    """

    time: str
    receiver: str
    namespace: str
    event: str
    delivery_id: str
    attempt: str
    status: int
    result: str
    """A ``Result`` when this version made it; any text when read back (see ``from_json``)."""
    message: str
    duration_ms: float
    repository: list[str] = msgspec.field(default_factory=list)
    refs: list[str] | None = None
    pr_url: str = ""
    candidates: list[Candidate] = msgspec.field(default_factory=list)
    detail: str = ""
    """What was wrong with the body of a 400, as the answer said."""
    omitted_refs: int = 0
    omitted_candidates: int = 0
    signed: bool = True
    """False for a request answered before its signature was verified."""

    @classmethod
    def from_json(cls, data: bytes | str) -> DeliveryRecord:
        """Rebuild a record from its JSON form (``to_json``); ``msgspec.DecodeError`` if it
        is not one.

        Result and outcomes stay text, and fields this version does not know are skipped:
        a state file or /deliveries.json may hold records another version wrote.
        """
        return _DECODE(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeliveryRecord:
        """A record from one already-decoded item of ``/deliveries.json``."""
        return msgspec.convert(data, cls)


def to_json(records: DeliveryRecord | list[DeliveryRecord]) -> bytes:
    """The JSON form of one record, or of a list of them."""
    return _ENCODE(records)


class _DeliveryId(msgspec.Struct):
    delivery_id: str = ""


def delivery_id_of(data: bytes) -> str:
    """The delivery id in a record's JSON form, without building the record: a lookup by id
    reads every record it passes."""
    return _DECODE_ID(data).delivery_id


_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder(DeliveryRecord).decode
_DECODE_ID = msgspec.json.Decoder(_DeliveryId).decode


def newest_first(*streams: Iterable[DeliveryRecord]) -> Iterable[DeliveryRecord]:
    """Merge streams that are each newest first (times are RFC 3339 UTC: they sort as text)."""
    return heapq.merge(*streams, key=lambda record: record.time, reverse=True)


def select(
    records: Iterable[DeliveryRecord],
    namespace: str | None = None,
    receiver: str | None = None,
    limit: int | None = None,
    delivery_id: str | None = None,
) -> list[DeliveryRecord]:
    """Newest-first records, filtered by owner namespace (``cluster`` for the ClusterConfig),
    receiver name and delivery id (or its start)."""
    chosen = []
    for record in records:
        if namespace is not None and record.namespace != namespace:
            continue
        if receiver is not None and record.receiver.rpartition("/")[2] != receiver:
            continue
        if delivery_id is not None and not record.delivery_id.startswith(delivery_id):
            continue
        chosen.append(record)
        if limit is not None and len(chosen) >= limit:
            break
    return chosen


class MemoryHistory:
    """The last ``size`` deliveries of this process (Kubernetes mode keeps one per replica),
    and apart from them the last ``UNSIGNED_HISTORY_SIZE`` unsigned requests."""

    def __init__(self, size: int = DEFAULT_HISTORY_SIZE) -> None:
        size = max(size, 0)
        self._records: deque[DeliveryRecord] = deque(maxlen=size)
        self._unsigned: deque[DeliveryRecord] = deque(maxlen=unsigned_size(size))

    def record(self, record: DeliveryRecord) -> None:
        """Remember a delivery, forgetting the oldest of its ring past the bound."""
        ring = self._records if record.signed else self._unsigned
        if ring.maxlen:
            ring.append(record)

    async def deliveries(
        self,
        namespace: str | None = None,
        receiver: str | None = None,
        limit: int | None = None,
        delivery_id: str | None = None,
    ) -> list[DeliveryRecord]:
        """Newest first, signed and unsigned together."""
        merged = newest_first(reversed(self._records), reversed(self._unsigned))
        return select(merged, namespace, receiver, limit, delivery_id)

    def __len__(self) -> int:
        return len(self._records) + len(self._unsigned)
