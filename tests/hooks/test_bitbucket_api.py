"""The Bitbucket REST client against the fake: shapes, pagination, errors, rate limits."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from kargo_bitbucket.bitbucket_api import BitbucketClient, BitbucketError
from kargo_bitbucket.core.webhooks import CLOUD_EVENTS, SERVER_EVENTS, Hook, Place
from kargo_bitbucket.credentials import Credential, CredentialsError, parse
from tests.hooks.fake_bitbucket import FakeBitbucket, running

T = TypeVar("T")
REPO = Place("bitbucket.org", "acme", "guestbook")
DC_REPO = Place("https://bitbucket.example.com", "PLAT", "deploy")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def client(fake: FakeBitbucket, token: str = "t0ken", **kwargs: Any) -> BitbucketClient:
    return BitbucketClient(fake.url, Credential(token=token), cloud=fake.cloud, **kwargs)


async def using(api: BitbucketClient, coro: Coroutine[Any, Any, T]) -> T:
    try:
        return await coro
    finally:
        await api.close()


def cloud_hook(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "url": f"https://h/{n}",
        "description": f"hook {n}",
        "active": True,
        "events": ["repo:push"],
        **extra,
    }


def test_cloud_listing_follows_next_across_pages(cloud: FakeBitbucket) -> None:
    cloud.add_repository(
        "acme", "guestbook", *(cloud_hook(n) for n in range(5)), cloud_hook(5, secret="s")
    )
    api = client(cloud)
    hooks = run(using(api, api.hooks(REPO)))
    assert [h.url for h in hooks] == [f"https://h/{n}" for n in range(6)]
    assert [h.secret_set for h in hooks] == [False] * 5 + [True]
    assert all(h.id.startswith("{") for h in hooks)
    assert len([c for c in cloud.calls if c.method == "GET"]) == 3


def test_server_listing_follows_next_page_start(server: FakeBitbucket) -> None:
    hooks = [
        {
            "name": f"h{n}",
            "url": f"https://h/{n}",
            "active": n != 2,
            "events": ["repo:refs_changed"],
        }
        for n in range(5)
    ]
    hooks[4]["configuration"] = {"secret": "s"}
    server.add_repository("PLAT", "deploy", *hooks)
    api = client(server)
    got = run(using(api, api.hooks(DC_REPO)))
    assert [(h.marker, h.active, h.secret_set) for h in got] == [
        ("h0", True, False),
        ("h1", True, False),
        ("h2", False, False),
        ("h3", True, False),
        ("h4", True, True),
    ]
    starts = [c.path for c in server.calls]
    assert any("start=2" in p for p in starts) and any("start=4" in p for p in starts)


async def create_update_delete(api: BitbucketClient, place: Place, hook: Hook) -> list[Hook]:
    """Create ``hook``, move it to https://k/2 with a new secret, list, delete, list."""
    hook_id = await api.create(place, hook, b"first")
    moved = Hook(hook.marker, "https://k/2", hook.events, True, True)
    await api.update(place, hook_id, moved, b"second")
    after_update = await api.hooks(place)
    await api.delete(place, hook_id)
    return [*after_update, *await api.hooks(place)]


@pytest.mark.parametrize("cloud_api", [True, False])
def test_create_update_delete_send_the_documented_bodies(cloud_api: bool) -> None:
    place = REPO if cloud_api else DC_REPO
    events = CLOUD_EVENTS if cloud_api else SERVER_EVENTS
    hook = Hook("kargo demo/bb", "https://k/1", frozenset(events), True, True)
    with running(FakeBitbucket(cloud=cloud_api)) as fake:
        fake.add_repository(place.owner, place.slug)
        api = client(fake)
        (updated,) = run(using(api, create_update_delete(api, place, hook)))
    assert (updated.url, updated.marker, updated.events) == (
        "https://k/2",
        "kargo demo/bb",
        frozenset(events),
    )
    assert fake.secrets[updated.id] == "second"
    post = next(c for c in fake.calls if c.method == "POST")
    name = "description" if cloud_api else "name"
    assert post.body[name] == "kargo demo/bb"
    assert post.body["active"] is True and sorted(post.body["events"]) == sorted(events)
    if cloud_api:
        assert post.body["secret"] == "first"
    else:
        assert post.body["configuration"] == {"secret": "first"}
    assert fake.hooks(place.owner, place.slug) == []


@pytest.mark.parametrize(
    ("cloud_api", "place"),
    [(True, Place("bitbucket.org", "acme")), (False, Place("https://x", "PLAT"))],
)
def test_workspace_and_project_level_paths(cloud_api: bool, place: Place) -> None:
    hook = Hook("kargo demo/bb", "https://k/1", frozenset({"e"}), True, True)
    with running(FakeBitbucket(cloud=cloud_api)) as fake:
        api = client(fake)
        (created,) = run(using(api, create_update_delete(api, place, hook)))
    assert created.url == "https://k/2"
    path = "/2.0/workspaces/acme/hooks" if cloud_api else "/rest/api/latest/projects/PLAT/webhooks"
    assert fake.calls[0].path == path


def test_repositories_of_a_workspace_and_a_project(
    cloud: FakeBitbucket, server: FakeBitbucket
) -> None:
    for name in ("a", "b", "c"):
        cloud.add_repository("acme", name)
        server.add_repository("PLAT", name)
    for fake, owner in ((cloud, Place("bitbucket.org", "acme")), (server, Place("x", "PLAT"))):
        api = client(fake)
        assert run(using(api, api.repositories(owner))) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("setup", "status", "words"),
    [
        (lambda f: None, 401, "Authentication required"),
        (lambda f: f.forbidden.add("acme/guestbook"), 403, "admin access"),
        (lambda f: f.repositories.pop("acme/guestbook"), 404, "not found"),
    ],
)
def test_errors_carry_status_and_bitbucket_message(
    cloud: FakeBitbucket, setup: Any, status: int, words: str
) -> None:
    cloud.add_repository("acme", "guestbook")
    setup(cloud)
    api = client(cloud, token="wrong" if status == 401 else "t0ken")
    with pytest.raises(BitbucketError) as caught:
        run(using(api, api.hooks(REPO)))
    assert caught.value.status == status
    assert words in str(caught.value) and "wrong" not in str(caught.value)


def test_rate_limit_waits_retry_after_then_succeeds(server: FakeBitbucket) -> None:
    server.add_repository("PLAT", "deploy", {"name": "x", "url": "u", "active": True})
    server.rate_limited, server.retry_after = 2, "0.2"
    api = client(server)
    started = time.monotonic()
    assert len(run(using(api, api.hooks(DC_REPO)))) == 1
    assert time.monotonic() - started >= 0.4
    assert len(server.calls) == 3


def test_rate_limit_longer_than_the_bound_is_reported_not_waited(server: FakeBitbucket) -> None:
    server.add_repository("PLAT", "deploy")
    server.rate_limited, server.retry_after = 5, "3600"
    api = client(server)
    started = time.monotonic()
    with pytest.raises(BitbucketError, match="rate limited") as caught:
        run(using(api, api.hooks(DC_REPO)))
    assert caught.value.status == 429 and time.monotonic() - started < 60  # an hour was asked
    assert len(server.calls) == 1


def test_rate_limit_gives_up_after_the_bounded_attempts(server: FakeBitbucket) -> None:
    server.add_repository("PLAT", "deploy")
    server.rate_limited = 100
    api = client(server)
    with pytest.raises(BitbucketError):
        run(using(api, api.hooks(DC_REPO)))
    assert len(server.calls) == 4


def test_a_silent_server_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        api = BitbucketClient(url, Credential(token="t"), cloud=True, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(BitbucketError, match="no answer") as caught:
            run(using(api, api.hooks(REPO)))
        assert caught.value.status == 0 and time.monotonic() - started < 5


def test_unreachable_server_is_an_error_not_a_traceback() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{spare.getsockname()[1]}"
    api = BitbucketClient(url, Credential(token="t"), cloud=True)
    with pytest.raises(BitbucketError, match="cannot reach"):
        run(using(api, api.hooks(REPO)))


def test_next_link_to_another_host_is_not_followed(cloud: FakeBitbucket) -> None:
    cloud.add_repository("acme", "guestbook", *(cloud_hook(n) for n in range(3)))
    cloud.url = "http://attacker.invalid"  # the fake now links its next pages elsewhere
    api = BitbucketClient(
        f"http://127.0.0.1:{cloud._server.server_address[1]}",  # type: ignore[union-attr]
        Credential(token="t0ken"),
        cloud=True,
    )
    with pytest.raises(BitbucketError, match="another host"):
        run(using(api, api.hooks(REPO)))
    assert len(cloud.calls) == 1


def test_cloud_api_token_is_basic_email_token(cloud: FakeBitbucket) -> None:
    cloud.authorization = "Basic bWVAZXhhbXBsZS5jb206dDBrZW4="  # me@example.com:t0ken
    cloud.add_repository("acme", "guestbook")
    api = BitbucketClient(cloud.url, Credential(token="t0ken", email="me@example.com"), True)
    assert run(using(api, api.hooks(REPO))) == []


def test_credentials_document_and_lookup() -> None:
    found = parse(
        "bitbucket.org: {email: me@example.com, token: ATATT}\n"
        "bitbucket.example.com: {token: dc, api_url: 'https://bitbucket.example.com/ctx'}\n"
        "'https://other.example.com/bb': {token: other}\n",
        "creds.yaml",
    )
    assert found.lookup("bitbucket.org") == Credential("ATATT", "me@example.com")
    assert found.lookup("https://bitbucket.example.com/ctx").token == "dc"  # type: ignore[union-attr]
    assert found.lookup("https://other.example.com/bb").token == "other"  # type: ignore[union-attr]
    assert found.lookup("https://unknown.example.com") is None
    assert found.api_url("bitbucket.org", {}) == "https://api.bitbucket.org"
    assert found.api_url("https://bitbucket.example.com", {}) == "https://bitbucket.example.com/ctx"
    assert found.api_url("bitbucket.org", {"bitbucket.org": "http://127.0.0.1:1/"}) == (
        "http://127.0.0.1:1"
    )
    assert found.api_url("https://nocreds.example.com", {}) == "https://nocreds.example.com"
    assert "ATATT" not in repr(found)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[a, b]", "creds.yaml: must map hosts to credentials"),
        ("bitbucket.org: SECRETVALUE", "creds.yaml: bitbucket.org: must be a mapping"),
        ("bitbucket.org: {email: x}", "creds.yaml: bitbucket.org.token: missing"),
        ("bitbucket.org: {token: SECRETVALUE, tokn: 1}", "unknown field 'tokn'"),
        ("bitbucket.org: {token: SECRETVALUE, api_url: ftp://x}", "api_url: must be an http"),
        ("bitbucket.org: {token: [SECRETVALUE]}", "bitbucket.org.token: must be a string"),
        ("bitbucket.org: {token: 'SECRETVALUE", "creds.yaml line"),
    ],
)
def test_bad_credentials_name_the_field_never_the_value(text: str, message: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        parse(text, "creds.yaml")
    assert message in str(caught.value)
    assert "SECRETVALUE" not in str(caught.value)


def test_a_request_that_cannot_be_sent_is_not_quoted(cloud: FakeBitbucket) -> None:
    # httpx's refusal quotes the header it refused: the token (credentials.py refuses such
    # a token first; this is the client's own guard).
    api = client(cloud, token="abc\nSECRETPART")
    with pytest.raises(BitbucketError, match="cannot send a request") as caught:
        run(using(api, api.hooks(REPO)))
    assert "SECRETPART" not in str(caught.value)
