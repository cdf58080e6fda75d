"""Helpers for the embedded store's tests (not fixtures): resources as ``apply`` stores them,
and a started store."""

from __future__ import annotations

from pathlib import Path

from kargo_bitbucket.core.manifests import Resource
from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.sqlite import SqliteStore
from kargo_bitbucket.store.state_file import StateFile
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
