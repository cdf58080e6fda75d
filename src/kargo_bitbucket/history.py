"""Delivery history: what arrived, what we answered, and why each candidate was (not) refreshed."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_HISTORY_SIZE = 1000


@dataclass(slots=True)
class Candidate:
    """One object a delivery considered, and the sentence saying what happened to it."""

    kind: str
    namespace: str
    name: str
    outcome: str
    reason: str


@dataclass(slots=True)
class DeliveryRecord:
    """One delivery, without secrets or payload: enough to answer "why didn't it refresh?".

    ``orjson.dumps`` serialises it (and its candidates) directly, field by field.
    """

    time: str
    receiver: str
    namespace: str
    event: str
    delivery_id: str
    attempt: str
    status: int
    result: str
    message: str
    duration_ms: float
    repository: list[str] = field(default_factory=list)
    refs: list[str] | None = None
    pr_url: str = ""
    candidates: list[Candidate] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliveryRecord:
        """Rebuild a record from its JSON form (``orjson.dumps`` of a record)."""
        fields = dict(data)
        fields["candidates"] = [Candidate(**c) for c in fields.get("candidates") or []]
        return cls(**fields)


def select(
    records: Iterable[DeliveryRecord],
    namespace: str | None = None,
    receiver: str | None = None,
    limit: int | None = None,
) -> list[DeliveryRecord]:
    """Newest-first records, filtered by owner namespace (``cluster`` for the ClusterConfig)."""
    chosen = []
    for record in records:
        if namespace is not None and record.namespace != namespace:
            continue
        if receiver is not None and record.receiver.rpartition("/")[2] != receiver:
            continue
        chosen.append(record)
        if limit is not None and len(chosen) >= limit:
            break
    return chosen


class MemoryHistory:
    """The last ``size`` deliveries of this process (Kubernetes mode keeps one per replica)."""

    def __init__(self, size: int = DEFAULT_HISTORY_SIZE) -> None:
        self._records: deque[DeliveryRecord] = deque(maxlen=max(size, 0))

    def record(self, record: DeliveryRecord) -> None:
        """Remember a delivery, forgetting the oldest past the bound."""
        if self._records.maxlen:
            self._records.append(record)

    async def deliveries(
        self, namespace: str | None = None, receiver: str | None = None, limit: int | None = None
    ) -> list[DeliveryRecord]:
        """Newest first."""
        return select(reversed(self._records), namespace, receiver, limit)

    def __len__(self) -> int:
        return len(self._records)
