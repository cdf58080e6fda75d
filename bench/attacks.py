"""The connection attacks of issue 9 on ``kargo-bitbucket serve``, before and after a change.

Each attack runs against a fresh server (one Warehouse, open-file limit 1024 as in the
issue, loopback only) for a bounded number of connections and seconds, while a prober
sends one signed delivery every 100 ms on a new connection. Reported per attack: the
connections the server still held when the attack was about to let go, the server's
peak RSS, the prober's deliveries answered 200 and the slowest of them (the stall of
real deliveries), and the tracebacks in the server's log.

Attacks of the other parts of issue 9 plug into ``ATTACKS``: an async function of the
``Target`` that returns when its traffic is done, calling ``target.mark()`` just before
it lets go of what it holds.

Run: ``.venv/bin/python bench/attacks.py main [--b REV] [--only NAME ...]``
(A = main, B = the working tree unless ``--b``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import run
from common import HOST, BenchError, clean_env, free_port, terminate

SERVER_FILES = 1024  # the open-file limit of the lock-out
SECRET = "attack-bench-secret"
MANIFESTS = f"""
apiVersion: v1
kind: Secret
metadata: {{name: bb, namespace: demo}}
stringData: {{secret: "{SECRET}"}}
---
apiVersion: kargo.akuity.io/v1alpha1
kind: ProjectConfig
metadata: {{name: demo, namespace: demo}}
spec:
  webhookReceivers:
    - name: bb
      bitbucket: {{secretRef: {{name: bb}}}}
---
apiVersion: kargo.akuity.io/v1alpha1
kind: Warehouse
metadata: {{name: app, namespace: demo}}
spec:
  subscriptions:
    - git: {{repoURL: "https://bitbucket.org/acme/app.git", branch: main}}
"""
PUSH = json.dumps(
    {
        "push": {"changes": [{"new": {"type": "branch", "name": "main"}, "old": None}]},
        "repository": {"links": {"html": {"href": "https://bitbucket.org/acme/app"}}},
    }
).encode()
SIGNATURE = "sha256=" + hmac.new(SECRET.encode(), PUSH, hashlib.sha256).hexdigest()
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Target:
    """A running ``serve`` under attack, and what was seen of it."""

    process: subprocess.Popen[bytes]
    port: int
    path: str
    log: Path
    baseline_sockets: int = 0
    held: int | None = None

    def delivery(self, extra: str = "") -> bytes:
        """One signed Cloud push to the receiver as raw HTTP/1.1."""
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(PUSH)}\r\n"
            f"X-Event-Key: repo:push\r\nX-Hub-Signature: {SIGNATURE}\r\n{extra}\r\n"
        ).encode() + PUSH

    def sockets(self) -> int:
        """Sockets the server process has open now."""
        fds = Path(f"/proc/{self.process.pid}/fd")
        count = 0
        for fd in fds.iterdir():
            try:
                count += os.readlink(fd).startswith("socket:")
            except OSError:
                continue
        return count

    def mark(self) -> None:
        """Record the connections held now (the attack is about to let go)."""
        self.held = self.sockets() - self.baseline_sockets

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


@dataclass
class Probes:
    """Signed deliveries sent while an attack runs: latency of each, and failures."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0

    def run(self, target: Target, stop: threading.Event) -> None:
        url = f"http://{HOST}:{target.port}{target.path}"
        headers = {"X-Event-Key": "repo:push", "X-Hub-Signature": SIGNATURE}
        while not stop.is_set():
            started = time.monotonic()
            try:
                request = urllib.request.Request(url, PUSH, headers, method="POST")
                with HTTP.open(request, timeout=10) as answer:
                    ok = answer.status == 200
            except OSError:
                ok = False
            if ok:
                self.latencies.append(time.monotonic() - started)
            else:
                self.failures += 1
            stop.wait(0.1)


async def _hold_early_answered(target: Target, count: int = 1100, hold: float = 8.0) -> None:
    """Problem 3: POST to an unknown path with a body due, read the 404, send one byte, wait."""
    gate = asyncio.Semaphore(200)
    held: list[asyncio.StreamWriter] = []

    async def one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, target.port), 3
                )
                writer.write(b"POST /anything HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
                await asyncio.wait_for(reader.readuntil(b"}"), 3)
                writer.write(b"x")
                held.append(writer)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                return

    await asyncio.gather(*(one() for _ in range(count)))
    await asyncio.sleep(hold)
    target.mark()
    for writer in held:
        writer.close()


async def _send_huge(
    target: Target, make: Callable[[], Sequence[bytes]], parallel: int = 8
) -> None:
    """Problem 4: ``parallel`` connections each streaming a huge head; 20 s at most."""

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(HOST, target.port)
            for piece in make():
                writer.write(piece)
                await writer.drain()
            await asyncio.wait_for(reader.read(4096), 5)
        except (OSError, TimeoutError):
            return
        writer.close()

    tasks = [asyncio.create_task(one()) for _ in range(parallel)]
    await asyncio.wait(tasks, timeout=20)
    target.mark()
    for task in tasks:
        task.cancel()


def _stream(start: bytes, chunk: bytes, chunks: int) -> Callable[[], Sequence[bytes]]:
    return lambda: [start, *(chunk for _ in range(chunks))]


async def _huge_line(target: Target) -> None:
    """8 parallel 64 MB request lines to an unknown path."""
    await _send_huge(target, _stream(b"GET /", b"a" * 65536, 1024))


async def _huge_header(target: Target) -> None:
    """8 parallel requests with a 64 MB header value."""
    await _send_huge(target, _stream(b"GET /x HTTP/1.1\r\nX-Big: ", b"b" * 65536, 1024))


async def _many_headers(target: Target) -> None:
    """8 parallel requests with a million headers (about 12 MB each)."""
    block = b"".join(b"X-%05d: 1\r\n" % i for i in range(5000))
    await _send_huge(target, _stream(b"GET /x HTTP/1.1\r\n", block, 200))


async def _half_closed_pipelined(target: Target, count: int = 200) -> None:
    """Problem 7: 5 pipelined signed deliveries, then a half-close; read what comes back."""
    answered = 0

    async def one() -> None:
        nonlocal answered
        try:
            reader, writer = await asyncio.open_connection(HOST, target.port)
            writer.write(target.delivery() * 5)
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 10)
            answered += data.count(b"HTTP/1.1 200 ")
            writer.close()
        except (OSError, TimeoutError):
            return

    await asyncio.gather(*(one() for _ in range(count)))
    target.mark()
    print(f"    half-closed: {answered} of {count * 5} pipelined deliveries answered 200")


async def _endless_trailers(target: Target) -> None:
    """2 parallel chunked requests to an unknown path: an empty body, then 60 MB of trailers
    each (uvicorn kept every field: 8 would take gigabytes)."""
    start = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    await _send_huge(target, _stream(start, b"a: b\r\n" * 10_000, 1000), parallel=2)


async def _deep_pipeline(target: Target, count: int = 10, requests: int = 20_000) -> None:
    """``count`` connections, each 20,000 pipelined requests in one write, answers unread."""
    writers = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(HOST, target.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * requests)
            writers.append(writer)
    await asyncio.sleep(10)
    target.mark()
    for writer in writers:
        writer.close()


async def _silent_flood(target: Target, count: int = 1000, seconds: float = 20) -> None:
    """``count`` connections that send one byte of a head, each reopened once closed."""
    deadline = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(HOST, target.port)
                writer.write(b"G")
                await asyncio.wait_for(reader.read(), deadline - time.monotonic())
                writer.close()
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)

    await asyncio.gather(*(one() for _ in range(count)))
    target.mark()


async def _body_hoard(target: Target, count: int = 400) -> None:
    """``count`` unsigned bodies of 2 MiB less one byte to the receiver, held to their 408."""
    limit = 2 * 1024 * 1024
    head = f"POST {target.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {limit}\r\n\r\n"

    async def one() -> None:
        with contextlib.suppress(OSError, TimeoutError):
            reader, writer = await asyncio.open_connection(HOST, target.port)
            writer.write(head.encode() + b" " * (limit - 1))
            await writer.drain()
            await asyncio.wait_for(reader.read(), 15)
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    target.mark()


ATTACKS: dict[str, Callable[[Target], Awaitable[None]]] = {
    "early-answer-hold": _hold_early_answered,
    "huge-request-line": _huge_line,
    "huge-header": _huge_header,
    "many-headers": _many_headers,
    "half-closed-pipelined": _half_closed_pipelined,
    "endless-trailers": _endless_trailers,
    "deep-pipeline": _deep_pipeline,
    "silent-flood": _silent_flood,
    "body-hoard": _body_hoard,
}


def start(source: Path, workdir: Path, label: str) -> Target:
    """``serve`` from ``source`` on a fresh one-Warehouse state, with 1024 open files."""
    env = clean_env(PYTHONPATH=str(source), KARGO_BITBUCKET_STATE=str(workdir / f"{label}.db"))
    command = [sys.executable, "-m", "kargo_bitbucket"]
    subprocess.run([*command, "apply", "-f", "-"], input=MANIFESTS.encode(), env=env, check=True,
                   capture_output=True)  # fmt: skip
    port = free_port()
    log = workdir / f"{label}.log"

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_FILES, SERVER_FILES))

    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "serve", "--listen", f"{HOST}:{port}",
             "--admin-listen", f"{HOST}:{free_port()}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=limit_files,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            with HTTP.open(f"http://{HOST}:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            terminate(process)
            raise BenchError(f"{label}: serve not ready:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    urls = subprocess.run([*command, "urls"], env=env, capture_output=True, text=True, check=True)
    path = "/" + urls.stdout.split("\t")[2].strip().split("/", 3)[3]
    target = Target(process, port, path, log)
    target.baseline_sockets = target.sockets()
    return target


def attack(source: Path, workdir: Path, label: str, name: str) -> dict[str, object]:
    """One attack on a fresh server; its figures."""
    target = start(source, workdir, f"{label}-{name}")
    probes = Probes()
    stop = threading.Event()
    prober = threading.Thread(target=probes.run, args=(target, stop), daemon=True)
    try:
        rss_before = target.peak_rss_mib()
        prober.start()
        asyncio.run(ATTACKS[name](target))
        time.sleep(1)
        stop.set()
        prober.join()
        peak = target.peak_rss_mib()
    finally:
        terminate(target.process)
    text = target.log.read_text(errors="replace")
    latencies = sorted(probes.latencies)
    return {
        "held": target.held,
        "rss_mib": f"{rss_before:.0f}->{peak:.0f}",
        "probes_ok": f"{len(latencies)}/{len(latencies) + probes.failures}",
        "worst_ms": f"{latencies[-1] * 1000:.0f}" if latencies else "-",
        "median_ms": f"{statistics.median(latencies) * 1000:.1f}" if latencies else "-",
        "tracebacks": text.count("Traceback"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Every chosen attack on A, then on B; one table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a", help="commit A (the code before the change)")
    parser.add_argument("--b", help="commit B (default: the working tree)")
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS), default=list(ATTACKS))
    options = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-attacks-"))
    snapshots: list[Path] = []
    try:
        sources = {}
        for key, rev in (("A", options.a), ("B", options.b)):
            if rev is None:
                sources[key] = run.PROJECT / "src"
            else:
                directory, _ = run.snapshot(rev)
                snapshots.append(directory)
                sources[key] = directory / "src"
        os.environ.pop("PYTHONPATH", None)
        print(f"{'attack':22} side  held  RSS MiB    probes ok  worst ms  median ms  tracebacks")
        for name in options.only:
            for key in ("A", "B"):
                figures = attack(sources[key], workdir, key, name)
                row = (figures["probes_ok"], figures["worst_ms"], figures["median_ms"])
                print(
                    f"{name:22} {key:4} {figures['held']!s:>5}  {figures['rss_mib']:9} "
                    f"{row[0]:>10} {row[1]:>9} {row[2]:>10} {figures['tracebacks']:>11}",
                    flush=True,
                )
    except BenchError as error:
        print(f"attacks: {error}", file=sys.stderr)
        return 2
    finally:
        for directory in [workdir, *snapshots]:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
