"""Test helpers (not fixtures): the payload corpus, the CLI, HTTP requests (over the network or
through an ASGI app in process), a real server on a free loopback port, and waiting on a
condition with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools" / "bin"
"""Where ``.ci/get-helm`` puts helm and kubectl."""
PORT_TRIES = 3
PORT_TAKEN = "Address already in use"
"""What ``serve`` says when it cannot listen on a port another process took meanwhile."""


def corpus_dir() -> Path:
    """The shared Bitbucket deliveries: ``$KARGO_BITBUCKET_PAYLOADS``, else ``../shared``."""
    configured = os.environ.get("KARGO_BITBUCKET_PAYLOADS")
    return Path(configured) if configured else REPO.parent / "shared" / "bitbucket-payloads"


def free_ports(count: int) -> list[int]:
    """``count`` loopback ports free a moment ago, all different: each is held until all are
    chosen (ports chosen one after another can repeat: a listener and an admin listener were
    once given the same one)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def cli(
    *args: str,
    state: Path,
    stdin: str | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``kargo-bitbucket`` as a user would, against ``state``."""
    result = subprocess.run(
        [sys.executable, "-m", "kargo_bitbucket", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KARGO_BITBUCKET_STATE": str(state), **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"kargo-bitbucket {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    timeout: float = 15,
) -> Response:
    """One HTTP request; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, dict(error.headers), error.read())


class Server:
    """``kargo-bitbucket serve`` in a subprocess, stopped with SIGTERM.

    A port can be taken between being chosen and being listened on (by another test's
    client, whose ephemeral ports come from the same range): the server then exits saying
    so, and starts again on other ports, up to PORT_TRIES times.
    """

    def __init__(
        self, state: Path, extra: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> None:
        self.state = state
        for attempt in range(1, PORT_TRIES + 1):
            self._start(extra, env)
            try:
                self.wait_ready()
                return
            except BaseException:
                taken = self.process.poll() is not None and PORT_TAKEN in self.logs()
                self.stop()
                if not taken or attempt == PORT_TRIES:
                    raise

    def _start(self, extra: Sequence[str], env: dict[str, str] | None) -> None:
        self.port, self.admin_port = free_ports(2)
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.log = self.state.parent / f"serve-{self.port}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kargo_bitbucket",
                "--log-level",
                "debug",
                "serve",
                "--state",
                str(self.state),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--admin-listen",
                f"127.0.0.1:{self.admin_port}",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.logs()}")
            try:
                if request(self.base + "/readyz", method="GET", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        self._log_file.flush()
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


def serve_copy(template: Path, directory: Path, *flags: str) -> Server:
    """``serve`` on a copy of ``template`` (a state applied once per module) made in
    ``directory``: a server per test, so what one test delivers (refreshes, history,
    metrics, connections) no other test sees; a start costs ~0.8 s, an apply as much again."""
    state = directory / template.name
    shutil.copyfile(template, state)
    return Server(state, flags)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout
    fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def eventually(check: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    """The first truthy value of ``check()``, polled every 50 ms; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(0.05)


async def until(check: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    """:func:`eventually` inside a coroutine: polled every 10 ms of the running loop's clock
    (virtual in the Lease tests, so a loaded machine changes nothing there)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.01)


async def call(
    app: Callable[..., Awaitable[None]],
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, Any]:
    """One request through an ASGI app, in process (``path`` may carry a query string)."""
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop() if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], json.loads(payload)


class MemoryTransport:
    """Just enough of an asyncio transport for uvicorn's protocol: keeps what it writes and
    whether it was closed."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.aborted = False
        self.buffered = 0
        """What a real transport would still hold for a client that does not read."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8080) if name in ("sockname", "peername") else default

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def tool(name: str) -> str | None:
    """A command from ``TOOLS``, else from ``PATH``; None if neither has it."""
    local = TOOLS / name
    return str(local) if os.access(local, os.X_OK) else shutil.which(name)
