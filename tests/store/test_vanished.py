"""The embedded store notices its state file replaced under it (in process; e2e has rm)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from kargo_bitbucket.store.base import REFRESH_ANNOTATION, StoreUnavailable, Target
from kargo_bitbucket.store.state_file import StateFile
from tests.store.support import config, started, warehouse
from tests.support import until


def test_garbage_moved_over_the_file_is_refused_then_a_good_file_is_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    first = StateFile(path)
    first.apply([*config("a"), warehouse("a", "w1")])
    first.close()
    good = tmp_path / "good" / "state.db"
    second = StateFile(good)
    second.apply([*config("a"), warehouse("a", "w2")])
    second.close()
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a database, " * 1000)
    w1, w2 = Target("Warehouse", "a", "w1"), Target("Warehouse", "a", "w2")

    async def scenario() -> None:
        store = await started(path)
        try:
            assert (await store.refresh([w1], "v1")).refreshed == [w1]
            os.replace(garbage, path)
            with pytest.raises(StoreUnavailable):  # the write batch sees it at once
                await store.refresh([w1], "v2")
            assert not store.can_refresh("Warehouse")
            await until(lambda: "refused" in caplog.text)  # SQLite's words vary: whose journal
            assert not store.can_refresh("Warehouse")
            os.replace(good, path)
            await until(lambda: store.can_refresh("Warehouse"))
            assert [e.name for e in store.indexes.warehouses("a")] == ["w2"]
            assert (await store.refresh([w2], "v3")).refreshed == [w2]
        finally:
            await store.close()

    with caplog.at_level(logging.INFO, "kargo_bitbucket"):
        asyncio.run(scenario())
    assert caplog.text.count("was deleted, replaced or made unreadable while serving") == 1
    assert caplog.text.count("refused") == 1  # once, not at every poll
    reader = StateFile(path, create=False)
    (stored,) = reader.get("Warehouse", "a", "w2")
    assert stored["metadata"]["annotations"][REFRESH_ANNOTATION] == "v3"
    reader.close()


def test_a_state_file_that_cannot_be_looked_at_answers_unavailable_then_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stat that fails with anything but "not found" once left the delivery waiting
    forever for its commit; now the file counts as gone until it can be seen again."""
    path = tmp_path / "state.db"
    StateFile(path).apply([*config("a"), warehouse("a", "w1")])
    w1 = Target("Warehouse", "a", "w1")
    real_stat = os.stat
    denied = True

    def stat(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if denied and os.fspath(target) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(target))
        return real_stat(target, *args, **kwargs)

    async def scenario() -> None:
        nonlocal denied
        store = await started(path)
        monkeypatch.setattr(os, "stat", stat)
        try:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.refresh([w1], "v1"), 5)
            assert not store.can_refresh("Warehouse")
            denied = False
            await until(lambda: store.can_refresh("Warehouse"))
            assert (await store.refresh([w1], "v2")).refreshed == [w1]
        finally:
            await store.close()

    asyncio.run(scenario())
