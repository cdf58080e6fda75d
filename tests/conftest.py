"""Session-wide fixtures: the payload corpus, a state file, servers, and the one real
kube-apiserver that tests/kube and tests/chart share (defined here so both see the same
session-scoped fixture; helpers live in tests/support.py and tests/kube/support.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builders import KARGO
from tests.kube.apiserver import KubeApiServer
from tests.kube.support import new_namespace
from tests.support import Server, corpus_dir


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The payload corpus folder; tests using it are skipped, with the reason, when absent."""
    folder = corpus_dir()
    if not (folder / "SOURCES.md").is_file():
        pytest.skip(f"shared Bitbucket payload corpus not found at {folder}")
    return folder


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def start(state: Path | None = None, *extra: str) -> Server:
        server = Server(state or tmp_path / "state.db", extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def kube_api() -> Iterator[KubeApiServer]:
    """The session's real kube-apiserver, with Kargo's CRDs; ``.admin`` is a system:masters
    client, ``.audit(since)`` the requests it logged."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        pytest.skip(
            "KUBEBUILDER_ASSETS is not set: no real kube-apiserver to test against "
            "(.ci/run sets it to ../shared/kube/bin)"
        )
    server = KubeApiServer(Path(assets).resolve())
    try:
        server.start()
    except Exception as error:
        pytest.fail(f"KUBEBUILDER_ASSETS={assets} but the API server did not start: {error}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kube_namespace(kube_api: KubeApiServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test. Namespaces cannot be deleted without a
    controller-manager, so its Kargo objects are deleted afterwards instead: a later test's
    receiver (which watches every namespace) then does not see them."""
    name = new_namespace(kube_api.admin, request.node.name.removeprefix("test_"))
    yield name
    for kind in ("ProjectConfig", "Warehouse", "Promotion"):
        kube_api.admin.delete_all(KARGO, kind, name)
