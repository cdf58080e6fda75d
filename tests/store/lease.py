"""A Lease API the leader elector can run against, and an event loop whose clock only moves
when every task waits, so Lease timing is tested exactly however loaded the machine is."""

from __future__ import annotations

import asyncio
import copy
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from lightkube.resources.coordination_v1 import Lease

DURATION = 0.6  # seconds; leadership lasts 0.4 s past the start of a renewal that held
T = TypeVar("T")


class LeaseAPI:
    """The three Lease calls the elector makes, against one stored Lease; can hang or fail."""

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.hanging = False
        self.failures = 0

    async def _maybe_hang(self) -> None:
        while self.hanging:
            await asyncio.sleep(0.01)
        if self.failures:
            self.failures -= 1
            raise ApiError(status=Status(code=500, message="etcd timeout"))

    async def get(self, resource: Any, name: str, namespace: str) -> Lease:
        await self._maybe_hang()
        if self.lease is None:
            raise ApiError(status=Status(code=404, message="not found"))
        return copy.deepcopy(self.lease)

    async def create(self, lease: Lease) -> None:
        await self._maybe_hang()
        self.lease = copy.deepcopy(lease)

    async def replace(self, lease: Lease) -> None:
        await self._maybe_hang()
        self.lease = copy.deepcopy(lease)


class _Selector(selectors.DefaultSelector):
    """Never blocks on a timeout: it moves the virtual clock to the next timer instead."""

    now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0 if timeout is not None else None)
        if not ready and timeout:
            self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` is virtual: CPU stalls take no time, sleeps take no real time."""

    def __init__(self) -> None:
        self._virtual = _Selector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_in_virtual_time(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` on a :class:`VirtualTimeLoop`; pass ``clock()`` to what it tests."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def clock() -> float:
    """The running loop's clock (virtual under :func:`run_in_virtual_time`)."""
    return asyncio.get_running_loop().time()
