"""``hooks --kubernetes``: objects and Secrets from the API server, credentials from a Secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.builders import project, secret, warehouse
from tests.hooks.fake_bitbucket import FakeBitbucket, running
from tests.hooks.support import BASE, SERVER_EVENTS, WAREHOUSES, receiver_url
from tests.kube.fakeapi import FakeKubernetes
from tests.kube.support import seed
from tests.support import cli


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[tuple[FakeKubernetes, Path]]:
    with FakeKubernetes(bookmark_interval=0.5) as fake:
        yield fake, fake.kubeconfig(tmp_path / "kubeconfig")


def test_sync_reads_the_cluster_and_the_credentials_secret(
    kube: tuple[FakeKubernetes, Path], tmp_path: Path
) -> None:
    fake_kube, kubeconfig = kube
    with running(FakeBitbucket(cloud=False)) as bitbucket:
        bitbucket.add_repository("PLAT", "deploy")
        document = json.dumps({"bb.example.com": {"token": "t0ken", "api_url": bitbucket.url}})
        credentials = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "kargo-bitbucket-credentials", "namespace": "kargo"},
            "stringData": {"credentials.yaml": document},
        }
        seed(
            fake_kube,
            [
                project("demo", ("bb", "bb-secret")),
                secret("demo", "bb-secret", "first-secret"),
                warehouse("demo", "deploy", repo=WAREHOUSES["deploy"]),
                credentials,
            ],
        )
        args = ("--kubernetes", "--kubeconfig", str(kubeconfig), "--base-url", BASE)
        env = {"POD_NAMESPACE": "kargo"}
        state = tmp_path / "unused.db"
        done = cli("hooks", "sync", "--apply", *args, state=state, env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[0] == "created"
        (hook,) = bitbucket.hooks("PLAT", "deploy")
        assert (hook["url"], set(hook["events"])) == (receiver_url("first-secret"), SERVER_EVENTS)
        assert bitbucket.secrets[str(hook["id"])] == "first-secret"
        checked = cli("hooks", "check", *args, state=state, env=env, check=False)
        assert checked.returncode == 0 and checked.stdout.startswith("ok")

        missing = cli(
            "hooks",
            "check",
            *args,
            "--credentials-secret",
            "kargo/absent",
            state=state,
            env=env,
            check=False,
        )
        assert missing.returncode == 2
        assert "Secret kargo/absent not found" in missing.stderr


def test_a_secret_the_commands_own_credentials_cannot_read_says_so(
    kube: tuple[FakeKubernetes, Path], tmp_path: Path
) -> None:
    """``lint``/``hooks --kubernetes`` read receiver Secrets with the caller's credentials:
    a user who may list Kargo's objects but not get Secrets got "receivers ... not all
    published: ... cannot be read (403 from the API)", while ``serve`` had published them.
    The line now says whose credentials were refused."""
    fake_kube, kubeconfig = kube
    seed(
        fake_kube,
        [
            project("demo", ("bb", "bb-secret")),
            secret("demo", "bb-secret", "first-secret"),
            warehouse("demo", "deploy", repo=WAREHOUSES["deploy"]),
        ],
    )
    fake_kube.fail("get", r"/secrets/bb-secret$", 403, times=2)
    args = ("--kubernetes", "--kubeconfig", str(kubeconfig))
    state = tmp_path / "unused.db"
    refused = (
        "receiver 'bb': Secret demo/bb-secret cannot be read (403 from the API: the "
        "credentials this command runs with may not get it)"
    )
    linted = cli("lint", *args, state=state, check=False)
    assert linted.returncode == 1, linted.stderr
    assert linted.stdout.splitlines() == [
        f"receivers of ProjectConfig demo not all published: {refused}"
    ]
    credentials = tmp_path / "credentials.yaml"
    credentials.write_text(json.dumps({"bb.example.com": {"token": "t0ken"}}))
    checked = cli(
        "hooks", "check", *args, "--credentials", str(credentials), "--base-url", BASE,
        state=state, check=False,
    )  # fmt: skip
    assert f"receiver problem in demo: {refused}" in checked.stderr, checked.stderr


def test_a_refused_read_keeps_the_api_servers_reason_in_its_one_line(
    kube: tuple[FakeKubernetes, Path], tmp_path: Path
) -> None:
    """A 403 says which user may not do what (``... is forbidden: User "alice" cannot list
    ...``); the one line of ``lint``/``hooks --kubernetes`` keeps it beside the request."""
    fake_kube, kubeconfig = kube
    args = ("--kubernetes", "--kubeconfig", str(kubeconfig))
    state = tmp_path / "unused.db"
    fake_kube.fail("list", r"/warehouses$", 403)
    linted = cli("lint", *args, state=state, check=False)
    assert linted.returncode == 1, linted.stderr
    (line,) = linted.stderr.splitlines()
    assert "injected fault (403)" in line and "HTTP 403 for GET /apis/" in line, line
    fake_kube.fail("get", r"/secrets/kargo-bitbucket-credentials$", 403)
    checked = cli(
        "hooks", "check", *args, "--base-url", BASE, state=state,
        env={"POD_NAMESPACE": "kargo"}, check=False,
    )  # fmt: skip
    assert checked.returncode == 1, checked.stderr
    (line,) = checked.stderr.splitlines()
    assert "injected fault (403)" in line and "/secrets/kargo-bitbucket-credentials" in line, line
