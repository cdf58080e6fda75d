"""Fixtures of the hooks tests: a fake Bitbucket Cloud and a fake Data Center on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hooks.fake_bitbucket import FakeBitbucket, running


@pytest.fixture
def cloud() -> Iterator[FakeBitbucket]:
    with running(FakeBitbucket(cloud=True)) as fake:
        yield fake


@pytest.fixture
def server() -> Iterator[FakeBitbucket]:
    with running(FakeBitbucket(cloud=False)) as fake:
        yield fake
