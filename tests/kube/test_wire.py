"""The lean HTTP path (store/kubernetes/wire.py) against a tiny TLS server in the test: what
a real API server will not do on demand (chunked, oversized, cut or hung answers,
``Connection: close``, a 401 until the token file changes, 429 with Retry-After), alone and
under the Refresher; and when the receiver falls back to lightkube's client. Both event
loops run every test: asyncio's, and uvloop's, which ``serve`` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from lightkube import KubeConfig
from lightkube.config.models import User

from kargo_bitbucket.compat import user_auth
from kargo_bitbucket.store.base import Target
from kargo_bitbucket.store.kubernetes.refresher import Refresher
from kargo_bitbucket.store.kubernetes.wire import Answer, Wire, WireError, open_wire
from tests.kube.fakeapi import tls_files
from tests.store.mock_kube import mock_client
from tests.support import until

T = TypeVar("T")
USER_AGENT = "kargo-bitbucket/test"
PATCH = "/apis/kargo.akuity.io/v1alpha1/namespaces/demo/warehouses/app"


@dataclass
class Seen:
    """One request the server read, on its ``connection`` (numbered from 0)."""

    connection: int
    head: str
    body: bytes

    def header(self, name: str) -> str:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.lower() == name.lower():
                return value.strip()
        return ""


class Cut(bytes):
    """Bytes the server writes before it hangs up."""


Act = Callable[[Seen], Awaitable[bytes]]
"""What the server does with a request: the bytes to answer (a :class:`Cut`: then hang up)."""


def always(data: bytes) -> Act:
    """Answer every request with ``data``."""

    async def act(seen: Seen) -> bytes:
        return data

    return act


def answer(status: int, body: bytes = b"{}", *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 {status} X\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


def patched(uid: str = "uid-1") -> bytes:
    return answer(200, json.dumps({"metadata": {"name": "app", "uid": uid}}).encode())


class Peer:
    """A TLS server on 127.0.0.1 that reads HTTP/1.1 requests and acts on each."""

    def __init__(self, act: Act) -> None:
        self.act = act
        self.seen: list[Seen] = []
        self.hung_up: list[int] = []
        self.url = ""
        self._connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number, self._connections = self._connections, self._connections + 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                seen = Seen(number, head, b"")
                seen.body = await reader.readexactly(int(seen.header("Content-Length") or 0))
                self.seen.append(seen)
                data = await self.act(seen)
                writer.write(data)
                await writer.drain()
                if isinstance(data, Cut) or b"Connection: close" in data.split(b"\r\n\r\n")[0]:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up.append(number)  # the client closed its end
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def peer(act: Act, prefix: str = "") -> AsyncIterator[Peer]:
    files = tls_files()
    if files is None:
        pytest.skip("openssl is needed for a TLS certificate")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*files)
    running = Peer(act)
    server = await asyncio.start_server(running._serve, "127.0.0.1", 0, ssl=context)
    running.url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}{prefix}"
    try:
        yield running
    finally:
        server.close()


def client_context() -> ssl.SSLContext:
    files = tls_files()
    assert files is not None
    return ssl.create_default_context(cafile=str(files[0]))


def wire_to(server: Peer, user: User | None = None, **options: Any) -> Wire:
    auth = user_auth(user or User(token="t0ken"))
    return Wire(server.url, client_context(), auth, USER_AGENT, **options)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def go(coroutine: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(coroutine, 20))

    return go


def test_requests_carry_every_header_and_share_one_keep_alive_connection(run: Any) -> None:
    async def scenario() -> tuple[list[Answer], list[Seen], str]:
        async with peer(always(patched()), "/k8s/c1") as server:
            wire = wire_to(server)
            answers = [
                await wire.request("PATCH", PATCH + "?fieldManager=x", b'{"a":1}', "application/x")
                for _ in range(3)
            ]
            await wire.close()
            return answers, server.seen, server.url

    answers, seen, url = run(scenario())
    assert [a.status for a in answers] == [200, 200, 200]
    assert json.loads(answers[0].body)["metadata"]["uid"] == "uid-1"
    assert [s.connection for s in seen] == [0, 0, 0]
    first = seen[0]
    assert first.head.startswith(f"PATCH /k8s/c1{PATCH}?fieldManager=x HTTP/1.1\r\n")
    assert first.header("Host") == url.split("/")[2]
    assert first.header("Authorization") == "Bearer t0ken"
    assert first.header("User-Agent") == USER_AGENT
    assert first.header("Content-Type") == "application/x"
    assert first.body == b'{"a":1}'


def test_a_chunked_answer_is_read_whole(run: Any) -> None:
    parts = [b'{"met', b'adata":{"uid":', b'"chunked"}}']
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"

    async def scenario() -> tuple[Answer, Answer]:
        async with peer(always(chunked)) as server:
            wire = wire_to(server)
            first = await wire.request("PATCH", PATCH, b"{}", "application/json")
            second = await wire.request("PATCH", PATCH, b"{}", "application/json")
            await wire.close()
            assert [s.connection for s in server.seen] == [0, 0]
            return first, second

    first, second = run(scenario())
    assert json.loads(first.body) == {"metadata": {"uid": "chunked"}}
    assert second == first


def test_an_answer_over_the_cap_fails_and_its_connection_is_closed(run: Any) -> None:
    async def act(seen: Seen) -> bytes:
        return answer(200, b"x" * 5000) if seen.connection == 0 else patched()

    async def scenario() -> None:
        async with peer(act) as server:
            wire = wire_to(server, answer_limit=1000)
            with pytest.raises(WireError, match="larger than 1000"):
                await wire.request("PATCH", PATCH, b"{}", "application/json")
            await until(lambda: server.hung_up == [0], what="hang-up of the oversized answer")
            again = await wire.request("PATCH", PATCH, b"{}", "application/json")
            assert again.status == 200 and [s.connection for s in server.seen] == [0, 1]
            await wire.close()

    run(scenario())


@pytest.mark.parametrize(
    "part",
    [b"", b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"metadata"'],
    ids=["before-answering", "mid-answer"],
)
def test_a_connection_lost_before_the_answer_is_complete_is_a_retryable_failure(
    run: Any, part: bytes
) -> None:
    async def act(seen: Seen) -> bytes:
        return Cut(part) if seen.connection == 0 else patched()

    async def scenario() -> None:
        async with peer(act) as server:
            wire = wire_to(server)
            with pytest.raises(WireError, match="connection closed"):
                await wire.request("PATCH", PATCH, b"{}", "application/json")
            again = await wire.request("PATCH", PATCH, b"{}", "application/json")
            assert again.status == 200 and [s.connection for s in server.seen] == [0, 1]
            await wire.close()

    run(scenario())


def test_a_kept_alive_connection_the_server_closed_is_replaced_once_without_failing(
    run: Any,
) -> None:
    on_first: list[Seen] = []

    async def act(seen: Seen) -> bytes:
        if seen.connection == 0:
            on_first.append(seen)
            if len(on_first) == 2:  # the first connection met the server's idle timeout
                return Cut(b"")
        return patched()

    async def scenario() -> list[int]:
        async with peer(act) as server:
            wire = wire_to(server)
            for _ in range(3):
                assert (await wire.request("PATCH", PATCH, b"{}", "application/json")).status == 200
            await wire.close()
            return [s.connection for s in server.seen]

    assert run(scenario()) == [0, 0, 1, 1]


def test_connection_close_answers_are_honoured(run: Any) -> None:
    async def scenario() -> list[int]:
        closing = answer(200, b"{}", "Connection: close")
        async with peer(always(closing)) as server:
            wire = wire_to(server)
            for _ in range(3):
                assert (await wire.request("POST", "/x", b"{}", "application/json")).status == 200
            await wire.close()
            return [s.connection for s in server.seen]

    assert run(scenario()) == [0, 1, 2]


def test_a_401_rereads_the_token_file_once_and_retries(run: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old\n")
    accepted = {"Bearer old"}

    async def act(seen: Seen) -> bytes:
        return patched() if seen.header("Authorization") in accepted else answer(401)

    async def scenario() -> list[str]:
        async with peer(act) as server:
            wire = wire_to(server, User(token_file=str(token_file)))
            assert (await wire.request("PATCH", PATCH, b"{}", "application/json")).status == 200
            token_file.write_text("new\n")  # the kubelet rotated the token
            accepted.clear()
            accepted.add("Bearer new")
            again = await asyncio.gather(
                *(wire.request("PATCH", PATCH, b"{}", "application/json") for _ in range(3))
            )
            assert [a.status for a in again] == [200, 200, 200]
            await wire.close()
            return [s.header("Authorization") for s in server.seen]

    seen = run(scenario())
    assert seen[0] == "Bearer old"
    # Each refused request is retried once with the new token (none twice, none given up).
    assert seen[1:].count("Bearer new") == 3
    assert 1 <= seen[1:].count("Bearer old") <= 3


def test_a_token_file_that_cannot_be_read_fails_the_attempt_not_the_receiver(
    run: Any, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"

    async def scenario() -> int:
        async with peer(always(patched())) as server:
            wire = wire_to(server, User(token_file=str(token_file)))
            with pytest.raises(WireError, match="cannot get credentials"):
                await wire.request("PATCH", PATCH, b"{}", "application/json")
            token_file.write_text("fresh\n")  # mounted again: the next attempt works
            assert (await wire.request("PATCH", PATCH, b"{}", "application/json")).status == 200
            await wire.close()
            return len(server.seen)

    assert run(scenario()) == 1


def test_a_401_with_a_fixed_token_is_answered_as_it_is(run: Any) -> None:
    async def scenario() -> tuple[Answer, int]:
        async with peer(always(answer(401))) as server:
            wire = wire_to(server)
            refused = await wire.request("PATCH", PATCH, b"{}", "application/json")
            await wire.close()
            return refused, len(server.seen)

    refused, requests = run(scenario())
    assert refused.status == 401 and requests == 1


def test_a_hung_answer_times_out_and_its_connection_is_dropped(run: Any) -> None:
    async def act(seen: Seen) -> bytes:
        if seen.connection == 0:
            await asyncio.sleep(60)
        return patched()

    async def scenario() -> None:
        async with peer(act) as server:
            wire = wire_to(server)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await wire.request("PATCH", PATCH, b"{}", "application/json")
            again = await wire.request("PATCH", PATCH, b"{}", "application/json")
            assert again.status == 200 and [s.connection for s in server.seen] == [0, 1]
            await wire.close()

    run(scenario())


def refresher_on(server: Peer, **options: Any) -> Refresher:
    return Refresher(mock_client(never), "replica-a", wire=wire_to(server), **options)


async def never(request: Any) -> Any:
    raise AssertionError(f"lightkube's client was used for {request.method} {request.url}")


def test_the_refresher_honours_retry_after_and_writes_the_event_after_the_answer(
    run: Any,
) -> None:
    times: list[float] = []

    async def act(seen: Seen) -> bytes:
        if seen.head.startswith("POST"):
            return answer(201, seen.body)
        times.append(time.monotonic())
        return answer(429, b"{}", "Retry-After: 1") if len(times) == 1 else patched("uid-app")

    async def scenario() -> tuple[Any, list[Seen]]:
        async with peer(act) as server:
            refresher = refresher_on(server)
            app = Target("Warehouse", "demo", "app")
            result = await refresher.refresh([app], "v1", lambda target: "push")
            await until(lambda: any(s.head.startswith("POST") for s in server.seen), what="Event")
            await refresher.close()
            return result, server.seen

    result, seen = run(scenario())
    assert result.refreshed == [Target("Warehouse", "demo", "app")]
    assert times[1] - times[0] >= 1.0  # the backoff alone waits 0.1 s at most
    patches = [s for s in seen if s.head.startswith("PATCH")]
    assert patches[0].head.startswith(f"PATCH {PATCH}?fieldManager=kargo-bitbucket ")
    assert patches[0].header("Content-Type") == "application/merge-patch+json"
    assert json.loads(patches[0].body) == {
        "metadata": {"annotations": {"kargo.akuity.io/refresh": "v1"}}
    }
    (event,) = [s for s in seen if s.head.startswith("POST")]
    assert event.head.startswith("POST /api/v1/namespaces/demo/events?fieldManager=")
    body = json.loads(event.body)
    assert body["involvedObject"] == {
        "apiVersion": "kargo.akuity.io/v1alpha1",
        "kind": "Warehouse",
        "name": "app",
        "namespace": "demo",
        "uid": "uid-app",
    }
    assert (body["reason"], body["message"], body["reportingInstance"]) == (
        "WebhookRefresh",
        "push",
        "replica-a",
    )
    assert body["metadata"] == {"generateName": "app.", "namespace": "demo"}


def test_the_refresher_retries_a_hung_patch_on_a_new_connection_within_the_budget(
    run: Any,
) -> None:
    async def act(seen: Seen) -> bytes:
        if seen.connection == 0:
            await asyncio.sleep(60)
        return patched()

    async def scenario() -> tuple[Any, float]:
        async with peer(act) as server:
            refresher = refresher_on(server, budget=2.0, attempt_timeout=0.3, emit_events=False)
            started = time.monotonic()
            result = await refresher.refresh([Target("Warehouse", "demo", "app")], "v")
            took = time.monotonic() - started
            await refresher.close()
            return result, took

    result, took = run(scenario())
    assert result.refreshed == [Target("Warehouse", "demo", "app")]
    assert took < 2.0


def test_the_refresher_reports_gone_and_refused_as_before(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def act(seen: Seen) -> bytes:
        if "/gone" in seen.head.split("\r\n")[0]:
            return answer(404)
        return answer(422, b'{"kind":"Status","message":"no such field"}')

    async def scenario() -> Any:
        async with peer(act) as server:
            refresher = refresher_on(server)
            targets = [Target("Warehouse", "demo", "gone"), Target("Warehouse", "demo", "bad")]
            result = await refresher.refresh(targets, "v", lambda target: "push")
            await refresher.close()
            assert len(server.seen) == 2  # neither retried, no Event
            return result

    result = run(scenario())
    assert result.gone == [Target("Warehouse", "demo", "gone")]
    assert result.failed == [Target("Warehouse", "demo", "bad")]
    assert "refresh of Warehouse demo/bad refused: HTTP 422: no such field" in caplog.text


def kubeconfig(server: str) -> Any:
    files = tls_files()
    assert files is not None
    cluster = {"server": server, "certificate-authority": str(files[0])}
    return KubeConfig.from_dict(
        {
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": {"token": "t0ken"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    ).get()


@pytest.mark.parametrize(
    ("server", "environment", "lean"),
    [
        ("https://127.0.0.1:6443", {}, True),
        ("https://127.0.0.1:6443", {"HTTPS_PROXY": "http://proxy.test:3128"}, False),
        ("https://127.0.0.1:6443", {"ALL_PROXY": "http://proxy.test:3128"}, False),
        (
            "https://127.0.0.1:6443",
            {"HTTPS_PROXY": "http://proxy.test:3128", "NO_PROXY": "127.0.0.1"},
            True,
        ),
        ("http://127.0.0.1:8080", {}, False),
    ],
    ids=["direct", "https-proxy", "all-proxy", "no-proxy-bypass", "plain-http"],
)
def test_the_lean_path_is_chosen_once_where_it_applies(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    server: str,
    environment: dict[str, str],
    lean: bool,
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG, "kargo_bitbucket.store.kubernetes.wire")
    wire = open_wire(kubeconfig(server), USER_AGENT)
    assert isinstance(wire, Wire) is lean
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert ("go through lightkube" in lines[0]) is not lean
