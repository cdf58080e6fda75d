"""The baseline of bench/run.py: a bare ASGI app on the same HTTP server as ``serve``.

It reads the body, checks the HMAC-SHA256 ``X-Hub-Signature`` against the secret
in ``$BENCH_SECRET`` and answers 200 JSON (401 on a bad signature). ``GET``
answers 200 so the driver can wait for it. ``serve`` puts the product's front door
(connections.py) on uvicorn's httptools protocol, so the baselines do too. Run:
``python bare_app.py --port N``.
"""

from __future__ import annotations

import argparse
import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from kargo_bitbucket.connections import KEEP_ALIVE, Connections, front_door_protocol

OK = b'{"msg":"ok"}'
UNAUTHORIZED = b'{"error":"unauthorized"}'
READY = b'{"status":"ready"}'


Work = Callable[[bytes], Awaitable[bytes]]
"""What a baseline does with a body whose signature verified; returns the answer's body."""


async def answer_ok(body: bytes) -> bytes:
    """The bare app's work: none."""
    return OK


def make_app(secret: bytes, work: Work = answer_ok) -> Any:
    """The ASGI callable for ``secret``: ``work`` runs on each signed body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if body is None:
            return
        status, payload = 200, READY
        if scope["method"] != "GET":
            signature = next((v for k, v in scope["headers"] if k == b"x-hub-signature"), b"")
            expected = b"sha256=" + hmac.new(secret, body, "sha256").hexdigest().encode()
            if hmac.compare_digest(signature, expected):
                payload = await work(body)
            else:
                status, payload = 401, UNAUTHORIZED
        await answer(send, status, payload)

    return app


async def answer(send: Any, status: int, payload: bytes) -> None:
    """Send a complete JSON response."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def read_body(receive: Any) -> bytes | None:
    """The whole request body; None if the client went away."""
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def serve(app: Any, port: int) -> None:
    """Serve ``app`` on 127.0.0.1 as ``serve`` serves: uvloop, the front door on httptools,
    one worker, no access log, no proxy headers."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=front_door_protocol(Connections()),
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=int(KEEP_ALIVE),
    )
    uvicorn.Server(config).run()


def main() -> None:
    """Serve the bare app."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(make_app(os.environ["BENCH_SECRET"].encode()), args.port)


if __name__ == "__main__":
    main()
