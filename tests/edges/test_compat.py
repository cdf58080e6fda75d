"""Each private or undocumented API compat.py relies on is still there (issue 12).

A failure names the library and its installed version: read compat.py's docstring for
what the use is for before upgrading past it.
"""

from __future__ import annotations

import asyncio
import importlib
from importlib.metadata import version
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from kargo_bitbucket import compat
from tests.support import MemoryTransport


def gone(library: str, what: str) -> str:
    return f"{library} {version(library)}: {what} is gone or changed; see kargo_bitbucket/compat.py"


@pytest.mark.parametrize(("library", "target", "methods"), compat.USES, ids=lambda v: str(v))
def test_every_object_and_method_compat_uses_exists(
    library: str, target: str, methods: tuple[str, ...]
) -> None:
    module, name = target.split(":")
    found = getattr(importlib.import_module(module), name, None)
    assert callable(found), gone(library, target)
    for method in methods:
        assert callable(getattr(found, method, None)), gone(library, f"{target}.{method}")


def test_uvicorn_protocol_and_cycle_carry_the_attributes_the_front_door_reads() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        config = uvicorn.Config(app, http="httptools", lifespan="off", log_config=None)
        config.load()
        protocol = compat.HttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
        transport = MemoryTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        for attribute in ("loop", "transport", "headers", "cycle", "pipeline"):
            assert hasattr(protocol, attribute), gone("uvicorn", f"HttpToolsProtocol.{attribute}")
        cycle = protocol.cycle
        assert isinstance(cycle, compat.RequestResponseCycle), gone("uvicorn", "cycle's type")
        for attribute in (
            "scope",
            "more_body",
            "response_complete",
            "disconnected",
            "message_event",
        ):
            assert hasattr(cycle, attribute), gone("uvicorn", f"RequestResponseCycle.{attribute}")
        for _ in range(100):
            if cycle.response_complete:
                break
            await asyncio.sleep(0.01)
        assert transport.written.startswith(b"HTTP/1.1 204"), gone("uvicorn", "the answer")

    asyncio.run(scenario())


def test_uvicorn_answers_a_parser_callback_that_raises_with_send_400_response() -> None:
    """The front door stops the parser at a header past its count by raising in on_header."""
    refused: list[str] = []

    class Raising(compat.HttpToolsProtocol):
        def on_header(self, name: bytes, value: bytes) -> None:
            raise RuntimeError

        def send_400_response(self, msg: str) -> None:
            refused.append(msg)

    async def scenario() -> None:
        config = uvicorn.Config(None, http="httptools", lifespan="off", log_config=None)  # type: ignore[arg-type]
        config.load()
        protocol = Raising(config=config, server_state=ServerState(), app_state={})
        protocol.connection_made(MemoryTransport())  # type: ignore[arg-type]
        protocol.data_received(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")

    asyncio.run(scenario())
    assert len(refused) == 1, gone("uvicorn", "send_400_response for a raising parser callback")


def test_lightkube_client_holds_a_generic_client_that_builds_bookmark_watches() -> None:
    from lightkube import AsyncClient, KubeConfig
    from lightkube.resources.core_v1 import ConfigMap

    config = KubeConfig.from_dict(
        {
            "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )
    client = AsyncClient(config)
    try:
        inner = compat.generic_client(client)
    except AttributeError:
        pytest.fail(gone("lightkube", "AsyncClient._client"))
    request = inner.prepare_request(
        "list", res=ConfigMap, namespace="ns", watch=True, params={"allowWatchBookmarks": "true"}
    )
    assert request.params.get("allowWatchBookmarks") == "true", gone("lightkube", "watch params")
    assert request.params.get("watch") == "true", gone("lightkube", "prepare_request(watch)")


def test_lightkube_sends_through_an_httpx_client_and_gives_the_user_s_auth() -> None:
    import httpx2 as httpx
    from lightkube import AsyncClient, KubeConfig
    from lightkube.config.models import User

    config = KubeConfig.from_dict(
        {
            "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1/prefix"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )
    try:
        inner = compat.http_client(AsyncClient(config))
    except AttributeError:
        pytest.fail(gone("lightkube", "GenericAsyncClient._client"))
    assert isinstance(inner, httpx.AsyncClient), gone("lightkube", "its httpx client")
    assert str(inner.base_url) == "http://127.0.0.1:1/prefix/", gone("lightkube", "base_url")

    async def header() -> str | None:
        auth = compat.user_auth(User(token="s3cret"))
        assert auth is not None, gone("lightkube", "user_auth for a token")
        flow = auth.async_auth_flow(httpx.Request("GET", "https://kube.test/"))
        request = await anext(flow)
        await flow.aclose()
        return request.headers.get("Authorization")

    assert asyncio.run(header()) == "Bearer s3cret", gone("lightkube", "user_auth's header")
