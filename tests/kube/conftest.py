"""Fixtures for Kubernetes-mode tests: a fake API server per test, and a kubeconfig for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.fakeapi import FakeKubernetes


@pytest.fixture
def fake_kube() -> Iterator[FakeKubernetes]:
    """A started :class:`FakeKubernetes` (bookmarks every 0.5 s), stopped after the test."""
    with FakeKubernetes(bookmark_interval=0.5) as fake:
        yield fake


@pytest.fixture
def kubeconfig(fake_kube: FakeKubernetes, tmp_path: Path) -> Path:
    """A kubeconfig for ``fake_kube`` (TLS listener, bearer token) in the test's tmp dir."""
    return fake_kube.kubeconfig(tmp_path / "kubeconfig")
