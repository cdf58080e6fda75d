"""Helpers for the embedded store's tests (not fixtures): resources as ``apply`` stores them,
a started store, and waiting on a condition with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from kargo_bitbucket.core.manifests import Resource
from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.sqlite import SqliteStore, StateFile
from tests import builders

KEY = b"key"  # the shared secret of the receiver ``config`` makes


def warehouse(
    namespace: str, name: str, repo: str = builders.REPO, branch: str = "main"
) -> Resource:
    """A Warehouse on ``branch`` of ``repo``."""
    (found,) = builders.resources(builders.warehouse(namespace, name, branch, repo))
    return found


def config(namespace: str, secret: str = "s") -> list[Resource]:
    """Secret ``secret`` holding :data:`KEY` and the ProjectConfig of ``namespace`` with
    receiver ``r`` on it."""
    return builders.resources(
        builders.secret(namespace, secret, KEY.decode()), builders.project(namespace, ("r", secret))
    )


async def started(path: Path) -> SqliteStore:
    """A started store on the state file at ``path``."""
    store = SqliteStore(StateFile(path), Indexes(BaseURL.parse("https://k.example.com"), "sys"))
    await store.start()
    return store


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``seconds`` (the store polls
    its file every second: the rest is for a loaded machine)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
