"""The Secret follower alone, against the fake API server: by name only, and only while named."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig

from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.kubernetes import secrets
from kargo_bitbucket.store.kubernetes.secrets import SecretFollower
from tests.builders import project, secret
from tests.kube.apiserver import fold_string_data
from tests.kube.fakeapi import FakeKubernetes
from tests.support import until


def problems(indexes: Indexes) -> list[str]:
    indexes.reroute()
    return [p for status in indexes.resolution.statuses.values() for p in status.problems]


def test_named_secrets_are_got_and_watched_by_name_and_dropped_when_no_longer_named(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    for name in ("a", "b"):
        fake_kube.create(fold_string_data(secret("demo", name, f"value-{name}")))
    indexes = Indexes(BaseURL.parse("https://h"), "kargo")
    indexes.apply("ProjectConfig", "demo", "demo", project("demo", ("ra", "a"), ("rb", "b")))
    changes: list[None] = []

    async def go() -> None:
        client = AsyncClient(KubeConfig.from_file(kubeconfig), trust_env=False)
        follower = SecretFollower(client, indexes, _feeder(indexes), lambda: changes.append(None))
        try:
            await follower.follow({("demo", "a"), ("demo", "b")}, wait=5)
            assert problems(indexes) == []
            assert len(indexes.resolution.routes) == 2
            await until(lambda: len(fake_kube.store.open_watches()) == 2, what="two watches")
            await follower.follow({("demo", "a")}, wait=5)
            assert problems(indexes) == ["receiver 'rb': Secret demo/b not found"]
            await until(lambda: len(fake_kube.store.open_watches()) == 1, what="b's watch to close")
            fake_kube.patch("v1", "Secret", "demo", "a", {"data": {"secret": "bmV3"}})
            await until(
                lambda: indexes.reroute().routes and _secret_of(indexes) == b"new",
                what="the rotated value",
            )
        finally:
            await follower.close()
            await client.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    verbs = {(r.verb, r.path) for r in fake_kube.requests if "/secrets" in r.path}
    assert {verb for verb, _ in verbs} == {"get", "watch"}
    assert all(path.endswith(("/secrets/a", "/secrets/b", "/secrets")) for _, path in verbs)
    watches = [r for r in fake_kube.requests if r.verb == "watch"]
    assert all(r.query.get("fieldSelector", "").startswith("metadata.name=") for r in watches)
    assert changes == []  # nothing unreadable to report


def test_a_forbidden_secret_is_named_in_ready_and_reported(
    fake_kube: FakeKubernetes, kubeconfig: Path
) -> None:
    fake_kube.create(fold_string_data(secret("demo", "c", "value-c")))
    fake_kube.fail("get", "/secrets/c", 403, times=1000)
    indexes = Indexes(BaseURL.parse("https://h"), "kargo")
    indexes.apply("ProjectConfig", "demo", "demo", project("demo", ("rc", "c")))
    changes: list[None] = []

    async def go() -> None:
        client = AsyncClient(KubeConfig.from_file(kubeconfig), trust_env=False)
        follower = SecretFollower(client, indexes, _feeder(indexes), lambda: changes.append(None))
        try:
            await follower.follow({("demo", "c")}, wait=5)
        finally:
            await follower.close()
            await client.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    (problem,) = problems(indexes)
    assert problem.startswith("receiver 'rc': Secret demo/c cannot be read (HTTP 403")
    assert changes


def test_a_namespace_naming_more_secrets_than_the_limit_gets_only_the_limit_followed(
    fake_kube: FakeKubernetes, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One ProjectConfig naming 2,000 absent Secrets opened 2,000 watches, and other projects'
    # deliveries failed in the 429s that followed.
    monkeypatch.setattr(secrets, "SECRETS_PER_NAMESPACE", 2)
    for namespace, name in (("demo", "a"), ("demo", "b"), ("other", "o")):
        fake_kube.create(fold_string_data(secret(namespace, name, f"value-{name}")))
    indexes = Indexes(BaseURL.parse("https://h"), "kargo")
    receivers = (("ra", "a"), ("rb", "b"), ("rc", "c"), ("rd", "d"))
    indexes.apply("ProjectConfig", "demo", "demo", project("demo", *receivers))
    indexes.apply("ProjectConfig", "other", "other", project("other", ("ro", "o")))
    wanted = {("demo", name) for _, name in receivers} | {("other", "o")}

    async def go() -> None:
        client = AsyncClient(KubeConfig.from_file(kubeconfig), trust_env=False)
        follower = SecretFollower(client, indexes, _feeder(indexes), lambda: None)
        try:
            await follower.follow(wanted, wait=5)
            assert follower.followed == {("demo", "a"), ("demo", "b"), ("other", "o")}
            await until(lambda: len(fake_kube.store.open_watches()) == 3, what="three watches")
            # A Secret named since, first by name, does not displace a working receiver.
            await follower.follow(wanted | {("demo", "0")}, wait=5)
            assert follower.followed == {("demo", "a"), ("demo", "b"), ("other", "o")}
            # Those no longer named are forgotten, followed or not.
            await follower.follow({("other", "o")}, wait=5)
            assert follower.followed == {("other", "o")}
            assert indexes._unreadable == {}  # nothing named past a limit is kept
            await follower.follow(wanted, wait=5)
        finally:
            await follower.close()
            await client.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    why = "only 2 receiver Secrets a namespace are followed"
    assert sorted(problems(indexes)) == [
        f"receiver 'rc': Secret demo/c cannot be read ({why})",
        f"receiver 'rd': Secret demo/d cannot be read ({why})",
    ]
    assert len(indexes.resolution.routes) == 3


def _feeder(indexes: Indexes) -> Callable[[str, str, str, Any], None]:
    def feed(kind: str, namespace: str, name: str, body: Any) -> None:
        indexes.apply(kind, namespace, name, body)

    return feed


def _secret_of(indexes: Indexes) -> bytes:
    (route,) = indexes.resolution.routes.values()
    return route.secret
