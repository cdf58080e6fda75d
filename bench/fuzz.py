"""Fuzz ``serve`` (issue 9): a million signed, mutated Bitbucket deliveries, never a 5xx.

Starts ``kargo-bitbucket serve`` on 127.0.0.1 with a receiver and a Warehouse (plus a
waiting Promotion) on every URL the shared payload corpus names, so that intact
deliveries refresh. Client processes then send ``--count`` deliveries over many
keep-alive connections: a corpus payload with one value replaced (invalid or cut
UTF-8, UTF-8-encoded or escaped lone surrogates, NUL, wrong types, nulls, 5,000-deep
nesting, duplicate keys, 5,000-digit or overflowing numbers, huge strings) and, for
one in four, one byte of it overwritten or the body cut short; signed with the
receiver's secret, under the payload's event key or another. Everything is drawn
from ``--seed``; the run stops at ``--count`` or ``--duration``, whichever comes first.

Reports answers by status, p50/p99 latency, the server's RSS and state file size
over the run, and fails (exit 1) on any 5xx, lost connection, or ``Traceback`` /
``ERROR`` in the server log.

    .venv/bin/python bench/fuzz.py                       # 1,000,000 deliveries
    .venv/bin/python bench/fuzz.py --count 20000 --duration 60   # a quick look
    .venv/bin/python bench/fuzz.py --rev 97c0255 --count 20000   # a commit, for "before"
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import run
import yaml
from common import CORPUS, HOST, BenchError, clean_env, machine

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from tests.builders import CORPUS_EVENTS  # noqa: E402

EVENTS = {p: e for p, e in CORPUS_EVENTS.items() if e != "diagnostics:ping"}
OTHER_EVENTS = [*sorted(set(EVENTS.values())), "repo:fork", "diagnostics:ping", "PR:MERGED"]
ODD_VALUES: list[bytes] = [
    b'"\x80"', b'"ok\xc3"', b'"\xed\xa0\x80"', b'"\\ud800"', b'"\\udc00x"', b'"\\u0000"',
    b'"refs/heads/\x80"', b'"https://bitbucket.org/\xff/x"', b"null", b"0", b"-1", b"1.5",
    b"true", b'""', b'" "', b"[]", b"{}", b"[null]", b'{"href": null}', b'"refs/heads/main"',
    b"1" + b"0" * 5000, b"1e999", b"[" * 5000 + b"]" * 5000,
    b'{"a": 1, "a": {"href": 2}, "href": "x", "href": null}', b'"' + b"x" * 100_000 + b'"',
]  # fmt: skip
HOLES_PER_PAYLOAD = 200
MARK = "\x00hole\x00"


def corpus_payloads(corpus: Path) -> list[tuple[str, Any]]:
    """(event key, payload) of every handled corpus file."""
    found = []
    for path in sorted(corpus.glob("*.json")):
        events = [e for prefix, e in EVENTS.items() if path.name.startswith(prefix)]
        if events:
            found.append((events[0], json.loads(path.read_bytes())))
    if not found:
        raise BenchError(f"no handled payloads in {corpus}")
    return found


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from json_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from json_paths(child, (*prefix, index))


def holes(payloads: list[tuple[str, Any]], seed: int) -> list[tuple[str, bytes, bytes]]:
    """(event, text before, text after) of a value to replace: up to HOLES_PER_PAYLOAD each."""
    rng = random.Random(seed)
    found = []
    for event, payload in payloads:
        paths = list(json_paths(payload))
        for path in rng.sample(paths, min(len(paths), HOLES_PER_PAYLOAD)):
            document = json.loads(json.dumps(payload))
            parent = document
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = MARK
            before, _, after = json.dumps(document).encode().partition(json.dumps(MARK).encode())
            found.append((event, before, after))
    return found


def manifests(payloads: list[tuple[str, Any]], secret: str) -> str:
    """A receiver; a Warehouse and a waiting Promotion on every URL in the corpus."""

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for child in value.values():
                yield from strings(child)
        elif isinstance(value, list):
            for child in value:
                yield from strings(child)

    urls = sorted(
        {s for _, p in payloads for s in strings(p) if s.startswith(("https://", "ssh://"))}
    )
    documents = list(run.manifest_documents(1))[:2]
    for i, url in enumerate(urls):
        git = {"repoURL": url}
        tags = {**git, "commitSelectionStrategy": "SemVer", "semverConstraint": ">=0.1"}
        documents.append(
            yaml.safe_dump({
                "apiVersion": "kargo.akuity.io/v1alpha1", "kind": "Warehouse",
                "metadata": {"name": f"w{i}", "namespace": run.NAMESPACE},
                "spec": {"subscriptions": [{"git": git}, {"git": tags}]},
            })
        )  # fmt: skip
        documents.append(
            yaml.safe_dump({
                "apiVersion": "kargo.akuity.io/v1alpha1", "kind": "Promotion",
                "metadata": {"name": f"p{i}", "namespace": run.NAMESPACE},
                "spec": {"stage": "s", "freight": "f",
                         "steps": [{"uses": "git-wait-for-pr", "as": "w"}]},
                "status": {"phase": "Running", "currentStep": 0,
                           "state": {"w": {"pr": {"url": url}}}},
            })
        )  # fmt: skip
    return "---\n".join(documents).replace("{secret}", secret)


@dataclass
class Client:
    """What one client process needs: where to send, what to send, how much."""

    port: int
    path: str
    secret: bytes
    holes: list[tuple[str, bytes, bytes]]
    count: int
    connections: int
    deadline: float
    seed: int


def delivery(rng: random.Random, client: Client, number: int) -> bytes:
    """One signed, mutated delivery as raw HTTP/1.1 request bytes."""
    event, before, after = rng.choice(client.holes)
    body = before + rng.choice(ODD_VALUES) + after
    if rng.random() < 0.25:
        at = rng.randrange(len(body))
        if rng.random() < 0.3:
            body = body[:at]
        else:
            body = body[:at] + bytes([rng.choice(b'\x80\xff"{[\\')]) + body[at + 1 :]
    if rng.random() < 0.1:
        event = rng.choice(OTHER_EVENTS)
    signature = hmac.new(client.secret, body, hashlib.sha256).hexdigest()
    head = (
        f"POST {client.path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Event-Key: {event}\r\n"
        f"X-Hub-Signature: sha256={signature}\r\nX-Request-UUID: fuzz-{client.seed}-{number}\r\n"
        "\r\n"
    )
    return head.encode() + body


async def connection(
    client: Client, rng: random.Random, shared: dict[str, int], statuses: Counter[int],
    latencies: array[float], lost: list[str],
) -> None:  # fmt: skip
    """Send deliveries one after another on one keep-alive connection (reconnect if closed)."""
    reader, writer = await asyncio.open_connection(HOST, client.port)
    while shared["sent"] < client.count and time.monotonic() < client.deadline:
        shared["sent"] += 1
        request = delivery(rng, client, shared["sent"])
        started = time.perf_counter()
        try:
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = int(head.split(b" ", 2)[1])
            length = 0
            close = False
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                elif line.startswith(b"connection:") and b"close" in line:
                    close = True
            await asyncio.wait_for(reader.readexactly(length), 30)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            lost.append(f"{type(error).__name__}: {error}")
            writer.close()
            reader, writer = await asyncio.open_connection(HOST, client.port)
            continue
        latencies.append(time.perf_counter() - started)
        statuses[status] += 1
        if close:
            writer.close()
            reader, writer = await asyncio.open_connection(HOST, client.port)
    writer.close()


def client_process(client: Client) -> tuple[Counter[int], bytes, list[str]]:
    """One process's share: its connections, its seed; returns statuses, latencies, losses."""

    async def main() -> tuple[Counter[int], array[float], list[str]]:
        statuses: Counter[int] = Counter()
        latencies: array[float] = array("d")
        lost: list[str] = []
        shared = {"sent": 0}
        await asyncio.gather(
            *(
                connection(
                    client, random.Random(client.seed * 1000 + i), shared, statuses,
                    latencies, lost,
                )
                for i in range(client.connections)
            )
        )  # fmt: skip
        return statuses, latencies, lost

    statuses, latencies, lost = asyncio.run(main())
    return statuses, latencies.tobytes(), lost[:20] + [f"... {len(lost)} in all"] * bool(lost)


class Watcher(threading.Thread):
    """Samples the server's RSS and state file size every second."""

    def __init__(self, server: run.Server, state: Path) -> None:
        super().__init__(daemon=True)
        self.server, self.state = server, state
        self.samples: list[tuple[float, int, int, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.halt.wait(1.0):
            wal = self.state.with_name(self.state.name + "-wal")
            size = self.state.stat().st_size
            try:
                rss = self.server.rss_kib()
                wal_size = wal.stat().st_size if wal.exists() else 0
            except (OSError, BenchError):
                return
            self.samples.append((time.monotonic() - started, rss, size, wal_size))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds, at most")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16, help="per process")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--rev", help="fuzz this commit's src/ (git archive), not the tree")
    parser.add_argument("--cli", type=Path, default=Path(sys.executable).parent / "kargo-bitbucket")
    return parser.parse_args(argv)


def log_problems(log: Path) -> list[str]:
    """Lines of the server's JSON log that mean something went wrong on our side."""
    problems = []
    with log.open("rb") as lines:
        for line in lines:
            if b"Traceback" in line or b'"level":"error"' in line or b'"level":"critical"' in line:
                problems.append(line.decode(errors="replace").strip()[:300])
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-fuzz-"))
    cleanup = [workdir]
    if args.rev:
        cleanup.append(run.snapshot(args.rev)[0])
    server = None
    try:
        print(machine())
        print(f"measuring {run.code_version(args.rev)}")
        payloads = corpus_payloads(args.corpus)
        secret = secrets.token_hex(16)
        manifest = workdir / "manifests.yaml"
        manifest.write_text(manifests(payloads, secret))
        state = workdir / "state.db"
        done = subprocess.run(
            [str(args.cli), "apply", "-f", str(manifest), "--state", str(state)],
            capture_output=True, text=True, env=clean_env(), check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"apply failed: {done.stderr.strip()}")
        server = run.start_ours(
            args.cli, run.State(0, state, 0.0, 1), None, workdir, ("--log-level", "warning")
        )
        path = server.target.split(f":{server.port}", 1)[1]
        spots = holes(payloads, args.seed)
        print(
            f"{len(payloads)} corpus payloads, {len(spots)} values to replace, "
            f"{len(ODD_VALUES)} replacements; {args.processes} processes x "
            f"{args.connections} connections; seed {args.seed}"
        )
        watcher = Watcher(server, state)
        watcher.start()
        started = time.monotonic()
        share = -(-args.count // args.processes)
        clients = [
            Client(
                server.port, path, secret.encode(), spots, share, args.connections,
                started + args.duration, args.seed * 100 + i,
            )
            for i in range(args.processes)
        ]  # fmt: skip
        with multiprocessing.get_context("fork").Pool(args.processes) as pool:
            results = pool.map(client_process, clients)
        elapsed = time.monotonic() - started
        watcher.halt.set()
        watcher.join()
        statuses: Counter[int] = Counter()
        latencies: array[float] = array("d")
        lost: list[str] = []
        for counted, raw, losses in results:
            statuses.update(counted)
            latencies.frombytes(raw)
            lost += losses
        total = sum(statuses.values())
        ordered = sorted(latencies)
        p99 = ordered[int(len(ordered) * 0.99)] if ordered else 0.0
        print(f"{total} deliveries answered in {elapsed:.0f} s ({total / elapsed:.0f}/s)")
        print("by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
        print(
            f"latency: p50 {statistics.median(ordered) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, worst {ordered[-1] * 1000:.1f} ms"
        )
        samples = watcher.samples
        tenth = samples[len(samples) // 10] if samples else (0, 0, 0, 0)
        peak = max((s[1] for s in samples), default=0)
        last = samples[-1] if samples else (0, 0, 0, 0)
        print(
            f"server RSS: {tenth[1] / 1024:.0f} MiB at 10 % of the run, peak "
            f"{peak / 1024:.0f} MiB, {last[1] / 1024:.0f} MiB at the end; state file "
            f"{tenth[2] / 2**20:.1f} MiB at 10 %, {last[2] / 2**20:.1f} MiB at the end "
            f"(its WAL {tenth[3] / 2**20:.1f} and {last[3] / 2**20:.1f} MiB, largest "
            f"{max((s[3] for s in samples), default=0) / 2**20:.1f} MiB)"
        )
        problems = log_problems(server.log)
        server_errors = sum(n for s, n in statuses.items() if s >= 500)
        failed = server_errors or problems or lost or total < min(args.count, 1)
        for line in problems[:10]:
            print(f"  server log: {line}")
        for line in lost[:10]:
            print(f"  lost: {line}")
        print(f"5xx: {server_errors}; server log problems: {len(problems)}; lost: {len(lost)}")
        print("FAILED" if failed else "no 5xx, no traceback")
        return 1 if failed else 0
    except BenchError as error:
        print(f"fuzz: {error}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            run.stop(server)
        for directory in cleanup:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
