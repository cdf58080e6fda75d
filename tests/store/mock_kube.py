"""A lightkube client whose requests a test answers (httpx's MockTransport), and Status errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx2 as httpx
from lightkube import AsyncClient, KubeConfig

from kargo_bitbucket.store.kubernetes.client import UserAgentTransport

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]

CONFIG = {
    "clusters": [{"name": "test", "cluster": {"server": "http://kube.test"}}],
    "users": [{"name": "test", "user": {"token": "t0ken"}}],
    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    "current-context": "test",
}


def mock_client(handler: Handler) -> AsyncClient:
    """A client as ``connect`` builds one (User-Agent included), sending to ``handler``."""
    return AsyncClient(
        KubeConfig.from_dict(CONFIG),
        transport=UserAgentTransport(httpx.MockTransport(handler)),
        trust_env=False,
    )


def status(code: int, headers: dict[str, str] | None = None) -> httpx.Response:
    """A Status error as the API server sends it."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": f"refused with {code}",
        "code": code,
    }
    return httpx.Response(code, json=body, headers=headers)
