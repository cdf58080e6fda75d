"""Every use of another library's private or undocumented API, in one place.

``USES`` names each (library, object, what of it we rely on); tests/edges/test_compat.py
checks every one and fails naming the library and its version when an upgrade removes
or changes it.

- uvicorn's ``HttpToolsProtocol``/``RequestResponseCycle``: connections.py subclasses the
  protocol for SPEC §4's connection limits, which uvicorn lacks.
- uvicorn's ``Server.capture_signals``/``handle_exit``: server.py drains on SIGTERM and
  exits 0 where uvicorn re-raises the signal.
- lightkube's ``AsyncClient._client``: reflector.py builds watches with bookmarks, which
  the public ``watch`` cannot ask for; ``verify_cluster``: client.py builds its own pooled
  transport with the kubeconfig's TLS settings; ``user_auth``: wire.py takes the
  ``Authorization`` header from lightkube's own httpx Auth for the user; ``GenericAsyncClient
  ._client``: where that lean path cannot apply, refreshes go through lightkube's own httpx
  client; ``lightkube.core.decoders``: depth.py replaces its decode helpers (which
  lightkube's clients look up at each call) with ones that read an object nested deeper
  than Python decodes. Imported when used: embedded mode never loads lightkube.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from uvicorn import Server as UvicornServer
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

if TYPE_CHECKING:
    import httpx2 as httpx
    from lightkube import AsyncClient
    from lightkube.core.generic_client import GenericAsyncClient

__all__ = [
    "USES",
    "HttpToolsProtocol",
    "RequestResponseCycle",
    "UvicornServer",
    "decoders",
    "generic_client",
    "http_client",
    "user_auth",
    "verify_cluster",
]

USES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "uvicorn",
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol",
        (
            "connection_made",
            "connection_lost",
            "data_received",
            "eof_received",
            "pause_writing",
            "resume_writing",
            "on_message_begin",
            "on_header",
            "on_headers_complete",
            "on_body",
            "on_message_complete",
            "on_response_complete",
            "send_400_response",
        ),
    ),
    ("uvicorn", "uvicorn.protocols.http.httptools_impl:RequestResponseCycle", ()),
    ("uvicorn", "uvicorn:Server", ("capture_signals", "handle_exit")),
    ("lightkube", "lightkube.core.generic_client:GenericAsyncClient", ("prepare_request", "watch")),
    ("lightkube", "lightkube.config.client_adapter:verify_cluster", ()),
    ("lightkube", "lightkube.config.client_adapter:user_auth", ()),
    ("lightkube", "lightkube.core.decoders:decode_list", ()),
    ("lightkube", "lightkube.core.decoders:decode_object", ()),
    ("lightkube", "lightkube.core.decoders:decode_watch_event", ()),
)
"""(library, module:object, methods). What instances carry (the protocol's loop, transport,
headers, cycle and pipeline; the cycle's scope, more_body, response_complete,
disconnected and message_event; AsyncClient's _client and its _client) is checked on live
objects by tests/edges/test_compat.py."""


def generic_client(client: AsyncClient) -> GenericAsyncClient:
    """lightkube's generic client under ``client``: it can build a watch with bookmarks."""
    inner: GenericAsyncClient = client._client
    return inner


def decoders() -> Any:
    """lightkube's decode helpers module, whose functions its clients look up at each call."""
    from lightkube.core import decoders as module

    return module


def verify_cluster(cluster: Any, user: Any, abs_file: Any) -> ssl.SSLContext | bool | str:
    """The TLS verification lightkube would use for ``cluster`` and ``user``."""
    from lightkube.config.client_adapter import verify_cluster as verify

    result: ssl.SSLContext | bool | str = verify(cluster, user, abs_file)
    return result


def http_client(client: AsyncClient) -> httpx.AsyncClient:
    """The httpx client lightkube sends through (base URL, credentials, TLS, pool)."""
    inner: httpx.AsyncClient = generic_client(client)._client
    return inner


def user_auth(user: Any) -> httpx.Auth | None:
    """lightkube's httpx Auth for a kubeconfig user: token, token file, exec plugin or basic."""
    from lightkube.config.client_adapter import user_auth as auth_for

    auth: httpx.Auth | None = auth_for(user)
    return auth
