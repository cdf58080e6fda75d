"""Which HTTP server for ``serve`` (issue 9): the bare app of figure 1 on each candidate.

Candidates: uvicorn with httptools (what ``serve`` ran), uvicorn with h11, hypercorn
(h11) and granian (Rust, hyper; its embedded server, which runs inside our asyncio loop
beside the admin listener); ``front-door`` is uvicorn with httptools and the protocol
``serve`` now runs (src/kargo_bitbucket/connections.py), to price its limits alone. Each
serves bench/bare_app.py's app pinned to CPU 0 while
``wrk -c16`` (bench/post.lua, the signed 10 KB push) drives them in turn from CPU 1, the
order reversed every other round. Prints req/s, server CPU per request and p99, and each
candidate's req/s over uvicorn-httptools' by round.

Run (hypercorn and granian are not project dependencies)::

    .venv/bin/pip install granian==2.8.7 hypercorn==0.18.0
    .venv/bin/python bench/servers.py --rounds 5 --duration 5

``--in-process`` prices ``serve``'s protocol alone, without sockets or wrk: the bare app
behind uvicorn's httptools protocol and behind ours, fed the same request over a fake
transport in alternating rounds, CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bare_app import make_app, serve
from common import CORPUS, HOST, clean_env, free_port, terminate

HERE = Path(__file__).resolve().parent
PAYLOAD = CORPUS / "cloud_repo_push_branch_update.json"
KINDS = ("uvicorn-httptools", "uvicorn-h11", "hypercorn", "granian", "front-door")
SECRET = "servers-bench"


def run_server(kind: str, port: int) -> None:
    """Serve the bare app with ``kind`` (64 KiB head limits where the server has one)."""
    app = make_app(SECRET.encode())
    if kind == "uvicorn-httptools":
        serve(app, port)
    elif kind == "front-door":
        import uvicorn

        from kargo_bitbucket.connections import Connections, front_door_protocol

        config = uvicorn.Config(
            app, host=HOST, port=port, loop="uvloop", lifespan="off", access_log=False,
            log_config=None, server_header=False, timeout_keep_alive=5, ws="none",
            http=front_door_protocol(Connections()),
        )  # fmt: skip
        uvicorn.Server(config).run()
    elif kind == "uvicorn-h11":
        import uvicorn

        config = uvicorn.Config(
            app, host=HOST, port=port, loop="uvloop", http="h11", lifespan="off",
            access_log=False, log_config=None, server_header=False, timeout_keep_alive=5,
            h11_max_incomplete_event_size=65536,
        )  # fmt: skip
        uvicorn.Server(config).run()
    elif kind == "hypercorn":
        import uvloop
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"{HOST}:{port}"]
        config.accesslog = None
        config.h11_max_incomplete_size = 65536
        uvloop.run(hypercorn_serve(app, config))  # type: ignore[arg-type]
    else:
        import uvloop
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.server.embed import Server

        server = Server(
            app, address=HOST, port=port, interface=Interfaces.ASGINL, http=HTTPModes.http1,
            websockets=False,
            http1_settings=HTTP1Settings(header_read_timeout=10_000, max_buffer_size=65536),
        )  # fmt: skip
        uvloop.run(server.serve())


class Transport(asyncio.Transport):
    """Swallows what a protocol writes; completes ``answered`` when an answer has ended."""

    def __init__(self) -> None:
        super().__init__()
        self.answered: asyncio.Future[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(b"}") and self.answered is not None:
            self.answered.set_result(None)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": (HOST, 8080), "peername": (HOST, 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def protocol_cpu_us(protocol: Any, request: bytes, count: int) -> float:
    """CPU µs per request of ``count`` requests through one connection of ``protocol``."""
    import uvicorn
    from uvicorn.server import ServerState

    loop = asyncio.get_running_loop()
    config = uvicorn.Config(make_app(SECRET.encode()), lifespan="off", log_config=None, ws="none")
    config.load()
    connection = protocol(config, ServerState(), {}, loop)
    transport = Transport()
    connection.connection_made(transport)
    started = time.process_time()
    for _ in range(count):
        transport.answered = loop.create_future()
        connection.data_received(request)
        await transport.answered
    return (time.process_time() - started) / count * 1e6


def in_process(rounds: int, signature: str) -> None:
    """uvicorn's httptools protocol against serve's, in alternating rounds."""
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from kargo_bitbucket.connections import Connections, front_door_protocol

    body = PAYLOAD.read_bytes()
    head = (
        f"POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-Event-Key: repo:push\r\nX-Hub-Signature: {signature}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    protocols = {
        "uvicorn-httptools": HttpToolsProtocol,
        "front-door": front_door_protocol(Connections()),
    }
    figures: dict[str, list[float]] = {name: [] for name in protocols}

    async def measure() -> None:
        for number in range(rounds):
            order = list(protocols) if number % 2 == 0 else list(protocols)[::-1]
            for name in order:
                figures[name].append(
                    await protocol_cpu_us(protocols[name], head.encode() + body, 8000)
                )

    uvloop.run(measure())
    base = figures["uvicorn-httptools"]
    for name, values in figures.items():
        ratio = statistics.median(b / a for a, b in zip(base, values, strict=True))
        print(f"{name:18} {statistics.median(values):5.1f} us/req, ratio by round {ratio:.3f}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(port: int, seconds: int, env: dict[str, str]) -> dict[str, Any]:
    command = ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{seconds}s", "-s",
               str(HERE / "post.lua"), f"http://{HOST}:{port}/"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
    if any(v for k, v in result.items() if k.endswith("_errors")):
        raise SystemExit(f"wrk saw errors on port {port}: {result}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--in-process", action="store_true", help="price serve's protocol alone")
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve, args.port)
        return 0
    body = PAYLOAD.read_bytes()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    if args.in_process:
        in_process(args.rounds, signature)
        return 0
    env = clean_env(BENCH_BODY_FILE=str(PAYLOAD), BENCH_SIGNATURE=signature)
    kinds = args.kinds.split(",")
    servers = {}
    try:
        for kind in kinds:
            port = free_port()
            command = ["taskset", "-c", "0", sys.executable, __file__, "--serve", kind,
                       "--port", str(port)]  # fmt: skip
            servers[kind] = (subprocess.Popen(command, env=env), port)
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection((HOST, port), 0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{kind} did not start") from None
                    time.sleep(0.1)
        rounds: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in kinds}
        for number in range(args.rounds):
            for kind in kinds if number % 2 == 0 else kinds[::-1]:
                process, port = servers[kind]
                before = cpu_seconds(process.pid)
                result = drive(port, args.duration, env)
                rps = result["requests"] / (result["duration_us"] / 1e6)
                cpu_us = (cpu_seconds(process.pid) - before) / result["requests"] * 1e6
                rounds[kind].append((rps, cpu_us, result["p99_us"] / 1000))
                print(f"  round {number + 1} {kind:18} {rps:7.0f} req/s {cpu_us:5.0f} us/req")
    finally:
        for process, _ in servers.values():
            terminate(process)
    base = rounds[kinds[0]]
    for kind in kinds:
        mine = rounds[kind]
        ratio = statistics.median(a[0] / b[0] for a, b in zip(mine, base, strict=True))
        print(
            f"{kind:18} {statistics.median(r[0] for r in mine):7.0f} req/s, "
            f"CPU {statistics.median(r[1] for r in mine):4.0f} us/req, "
            f"p99 {statistics.median(r[2] for r in mine):6.2f} ms, req/s ratio {ratio:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
