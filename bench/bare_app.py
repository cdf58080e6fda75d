"""The baseline of bench/run.py: a bare ASGI app on the same uvicorn settings as ``serve``.

It reads the body, checks the HMAC-SHA256 ``X-Hub-Signature`` against the secret
in ``$BENCH_SECRET`` and answers 200 JSON (401 on a bad signature). ``GET``
answers 200 so the driver can wait for it. Run: ``python bare_app.py --port N``.
"""

from __future__ import annotations

import argparse
import hmac
import os
from typing import Any

import uvicorn

OK = b'{"msg":"ok"}'
UNAUTHORIZED = b'{"error":"unauthorized"}'
READY = b'{"status":"ready"}'


def make_app(secret: bytes) -> Any:
    """The ASGI callable for ``secret``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if scope["method"] == "GET":
            status, payload = 200, READY
        else:
            body = b"".join(chunks)
            signature = next((v for k, v in scope["headers"] if k == b"x-hub-signature"), b"")
            expected = b"sha256=" + hmac.new(secret, body, "sha256").hexdigest().encode()
            ok = hmac.compare_digest(signature, expected)
            status, payload = (200, OK) if ok else (401, UNAUTHORIZED)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    """Serve the bare app on 127.0.0.1 with uvloop, httptools, one worker, no access log."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(
        make_app(os.environ["BENCH_SECRET"].encode()),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_keep_alive=15,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
