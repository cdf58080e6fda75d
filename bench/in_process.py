"""CPU per delivery of ``serve``'s stack in one process, without sockets or wrk: A/B and ablations.

Figure 1 (bench/run.py) measures through real sockets on a pinned CPU; on a shared machine
its rounds vary by more than most single changes. This bench feeds the signed 10 KB push
to 16 connections of the real protocol at once (``serve``'s front door protocol, the real
``App``, a ``SqliteStore`` over 10,000 Warehouses, metrics and the JSON log line written
to an unbuffered file, as to stderr) through a fake transport, and measures the process's
CPU per delivery. The floor app (bench/floor_app.py on the same front door protocol) runs
the same way, bare and ``--observed`` (with the log line, history record and counter
hand-written).

Variants run in separate processes, in alternating order each round; it prints each one's
median and its ratio to the floor and to the first variant, round by round:

    .venv/bin/python bench/in_process.py                      # floor and the working tree
    .venv/bin/python bench/in_process.py --rev HEAD~1         # ... and a commit before
    .venv/bin/python bench/in_process.py --ablate log,history # ... and the tree without parts

``--ablate`` prices a part by taking it away (``ABLATIONS``): what the hot path would gain
from making that part free. Not a product configuration: some leave the server broken
for anything but this measure.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402
from common import CORPUS, clean_env, state_file_module  # noqa: E402

SECRET = "in-process-bench"
CONNECTIONS = 16
ABLATIONS = {
    "log": "the per-delivery log line",
    "history": "keeping the history record (queue and SQLite batches)",
    "record": "the answer's body, the history record, its metrics and log line (a fixed 200)",
    "metrics": "counting the delivery in metrics",
    "history-rows": "writing history records into the state file (they are still queued)",
    "writes": "every state-file write: refreshes and history rows (the refresh path stays)",
    "handle": "the whole delivery: every request is answered a fixed 200 after its body",
    "gc": "the cyclic garbage collector (off while measuring)",
}


class Transport(asyncio.Transport):
    """Swallows what the protocol writes; calls ``answered`` when an answer's body ends."""

    def __init__(self, answered: Callable[[], None]) -> None:
        super().__init__()
        self.answered = answered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(b"}"):
            self.answered()

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connections(connect: Callable[[], Any], request: bytes) -> Callable[[], Awaitable[None]]:
    """16 connections of ``connect``'s protocol, and a round: ``request`` on each, all answered."""
    loop = asyncio.get_running_loop()
    waiting = [0]
    done: list[asyncio.Future[None]] = []

    def answered() -> None:
        waiting[0] -= 1
        if waiting[0] == 0:
            done[-1].set_result(None)

    protocols = []
    for _ in range(CONNECTIONS):
        protocol = connect()
        protocol.connection_made(Transport(answered))
        protocols.append(protocol)

    async def one_round() -> None:
        waiting[0] = CONNECTIONS
        done.append(loop.create_future())
        for protocol in protocols:
            protocol.data_received(request)
        await done[-1]

    return one_round


async def cpu_per_delivery(connect: Callable[[], Any], request: bytes, rounds: int) -> float:
    """µs of CPU per delivery: ``rounds`` times, one request on each of 16 connections."""
    one_round = connections(connect, request)
    started = time.process_time()
    for _ in range(rounds):
        await one_round()
    return (time.process_time() - started) / (rounds * CONNECTIONS) * 1e6


def stderr_like(path: Path) -> io.TextIOWrapper:
    """A log file as Python opens stderr when it is not a terminal (where serve logs by
    default): each write of its bytes reaches the file at once."""
    raw = open(path, "ab", buffering=0)  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", write_through=True)


def request_bytes(path: str, body: bytes) -> bytes:
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Event-Key: repo:push\r\nX-Hub-Signature: {signature}\r\n"
        f"X-Request-UUID: 9f2c1d3e-0000-4000-8000-000000000000\r\nX-Attempt-Number: 1\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def ablate(parts: list[str]) -> None:
    """Make each named part of the delivery path free (monkeypatching the imported package)."""
    from kargo_bitbucket import app, delivery, logs, metrics
    from kargo_bitbucket.outcomes import Result
    from kargo_bitbucket.store import sqlite

    state_file = state_file_module()
    for part in parts:
        if part == "log":
            logs.line = lambda *args, **kwargs: None  # type: ignore[assignment]
        elif part == "history":
            sqlite.SqliteStore.record = lambda self, record: None  # type: ignore[method-assign]
        elif part == "record":

            def conclude_fixed(self: Any, *args: Any) -> Any:
                return delivery.Answer.message(Result.REFRESHED, "refreshed")

            delivery.Deliveries._finish = lambda self, *args: None  # type: ignore[method-assign]
            delivery.Deliveries._conclude = conclude_fixed  # type: ignore[method-assign]
        elif part == "metrics":
            for count in ("count_delivery", "count_refresh", "count_signature_failure"):
                setattr(metrics.Metrics, count, lambda self, *args: None)
        elif part == "history-rows":
            state_file._insert = lambda db, table, records, keep: None  # type: ignore[attr-defined]
        elif part == "writes":
            state_file.StateFile.write_batch = lambda self, batch, records=(), keep=0: {
                target for target, _ in batch
            }
        elif part == "handle":

            async def answer_fixed(self: Any, route: Any, headers: Any, body: bytes) -> Any:
                return delivery.Answer.message(Result.REFRESHED, "refreshed")

            delivery.Deliveries.handle = answer_fixed  # type: ignore[method-assign]
        elif part == "gc":
            app.gc.enable = lambda: None  # type: ignore[assignment]
        else:
            raise SystemExit(f"unknown ablation {part!r}: one of {', '.join(ABLATIONS)}")


async def ours(
    state: Path, log_file: Path, parts: list[str], rounds: int, body: bytes
) -> list[float]:
    """``serve``'s stack as cli/serve.py builds it, over a copy of ``state``."""
    import uvicorn
    from uvicorn.server import ServerState

    from kargo_bitbucket import logs
    from kargo_bitbucket.app import _load_without_gc, create_app
    from kargo_bitbucket.connections import Connections, front_door_protocol
    from kargo_bitbucket.core.receivers import BaseURL
    from kargo_bitbucket.metrics import Metrics
    from kargo_bitbucket.store.base import REFRESH_BUDGET
    from kargo_bitbucket.store.index import Indexes
    from kargo_bitbucket.store.sqlite import SqliteStore

    state_file = state_file_module()
    ablate(parts)
    logs.configure("info", stderr_like(log_file), json=True)
    indexes = Indexes(BaseURL.parse("http://127.0.0.1:8080"), "kargo")
    store = SqliteStore(state_file.StateFile(state, busy_timeout=REFRESH_BUDGET), indexes, 1000)
    connections = Connections(1000, 10.0)
    metrics = Metrics(
        indexes.counts,
        lambda: store.watch_restarts,
        lambda: store.api_failures,
        connections.dropped.items,
    )
    protocol = front_door_protocol(connections)
    config = uvicorn.Config(
        create_app(store, metrics=metrics),
        http=protocol,
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    config.load()
    await _load_without_gc(store)
    (path,) = [p for p in vars(indexes)["_routes"]]
    loop = asyncio.get_running_loop()
    server_state = ServerState()
    request = request_bytes(path, body)
    await cpu_per_delivery(lambda: protocol(config, server_state, {}, loop), request, 50)
    figures = [
        await cpu_per_delivery(lambda: protocol(config, server_state, {}, loop), request, rounds)
        for _ in range(3)
    ]
    await store.close()
    return figures


async def floor(workdir: Path, rounds: int, body: bytes, observed: bool) -> list[float]:
    """bench/floor_app.py's work (``--observed`` or not) on ``serve``'s front door protocol."""
    import bare_app
    import floor_app
    import uvicorn
    from uvicorn.server import ServerState

    from kargo_bitbucket.connections import Connections, front_door_protocol

    writer = floor_app.Writer(str(workdir / "floor.db"))
    repository = json.loads(body)["repository"]["links"]["html"]["href"].lower()
    warehouses = {
        f"https://bitbucket.org/org/repo-{i}": (f"ns{i % 100}", f"wh{i}") for i in range(1, 10_000)
    }
    warehouses[repository] = ("ns0", "wh0")
    if observed:
        log = open(workdir / "floor-observed.log", "ab", buffering=0)  # noqa: SIM115
        app = floor_app.observed_app(SECRET.encode(), warehouses, writer, log)
    else:
        app = bare_app.make_app(SECRET.encode(), floor_app.refresh_work(warehouses, writer))
    protocol = front_door_protocol(Connections(1000, 10.0))
    config = uvicorn.Config(
        app, http=protocol, ws="none", lifespan="off", log_config=None, proxy_headers=False
    )
    config.load()
    loop = asyncio.get_running_loop()
    server_state = ServerState()
    request = request_bytes("/x", body)
    await cpu_per_delivery(lambda: protocol(config, server_state, {}, loop), request, 50)
    return [
        await cpu_per_delivery(lambda: protocol(config, server_state, {}, loop), request, rounds)
        for _ in range(3)
    ]


def worker(args: argparse.Namespace) -> None:
    """One variant in this process; prints its three figures as JSON."""
    import uvloop

    body = args.payload.read_bytes()
    workdir = Path(args.workdir)
    if args.worker != "ours":
        observed = args.worker == "floor-observed"
        figures = uvloop.run(floor(workdir, args.deliveries // CONNECTIONS, body, observed))
    else:
        state = run.copy_state(run.State(10_000, workdir / "state.db", 0, 0), args.label)
        parts = [p for p in ",".join(args.ablate).split(",") if p]
        log_file = workdir / f"{args.label}.log"
        figures = uvloop.run(
            ours(state.path, log_file, parts, args.deliveries // CONNECTIONS, body)
        )
        lines = log_file.read_text(encoding="utf-8").splitlines()
        if not {"log", "record", "handle"} & set(parts):
            bad = [line for line in lines if '"result":"refreshed"' not in line]
            if bad or not lines:
                raise SystemExit(f"{args.label}: a delivery did not refresh: {bad[:1] or 'no log'}")
        state.path.unlink()
    print(json.dumps(figures))


def add_variant_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rev`` and ``--ablate``: the variants measured beside the working tree."""
    parser.add_argument(
        "--rev", action="append", default=[], help="a commit to compare (repeatable)"
    )
    parser.add_argument(
        "--ablate",
        action="append",
        default=[],
        help=f"parts to take away, comma-separated (repeatable): {', '.join(ABLATIONS)}",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_variant_arguments(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deliveries", type=int, default=4800, help="per measure (3 per round)")
    parser.add_argument(
        "--payload", type=Path, default=CORPUS / "cloud_repo_push_branch_update.json"
    )
    workers = ("ours", "floor", "floor-observed")
    parser.add_argument("--worker", choices=workers, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-inproc-"))
    snapshots: list[Path] = []
    try:
        return _rounds(args, workdir, snapshots)
    finally:
        for directory in [workdir, *snapshots]:
            shutil.rmtree(directory, ignore_errors=True)


def _rounds(args: argparse.Namespace, workdir: Path, snapshots: list[Path]) -> int:
    """Every variant, ``args.rounds`` times in alternating order; print the medians."""
    cli = run.PROJECT / ".venv" / "bin" / "kargo-bitbucket"
    built = run.build_state(cli, workdir, 10_000, 10_000, SECRET)
    built.path.rename(workdir / "state.db")
    variants: dict[str, tuple[str, dict[str, str]]] = {
        "floor": ("", clean_env()),
        "floor-observed": ("", clean_env()),
    }
    for rev in args.rev:
        directory, full = run.snapshot(rev)
        snapshots.append(directory)
        os.environ.pop("PYTHONPATH", None)
        variants[f"{rev} ({full[:7]})"] = ("", clean_env(PYTHONPATH=str(directory / "src")))
    variants["tree"] = ("", clean_env(PYTHONPATH=str(run.PROJECT / "src")))
    for parts in args.ablate:
        variants[f"tree without {parts}"] = (parts, clean_env(PYTHONPATH=str(run.PROJECT / "src")))
    figures: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for number in range(args.rounds):
        for label_number, name in enumerate(names if number % 2 == 0 else names[::-1]):
            parts, env = variants[name]
            command = [
                sys.executable, __file__, "--worker", name if name.startswith("floor") else "ours",
                "--workdir", str(workdir), "--label", f"v{label_number}", "--ablate", parts,
                "--deliveries", str(args.deliveries), "--payload", str(args.payload),
            ]  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return 2
            figures[name].append(statistics.median(json.loads(done.stdout.splitlines()[-1])))
        print(
            f"round {number + 1}: " + ", ".join(f"{n} {figures[n][-1]:.1f}" for n in names),
            flush=True,
        )
    first = names[2]
    print(f"\nCPU per delivery, median of {args.rounds} rounds (µs); ratios by round, median:")
    for name in names:
        to_floor = statistics.median(
            f / b for f, b in zip(figures["floor"], figures[name], strict=True)
        )
        to_first = statistics.median(
            b / a for a, b in zip(figures[first], figures[name], strict=True)
        )
        print(
            f"  {name:32} {statistics.median(figures[name]):7.1f}   floor/this {to_floor:.3f}"
            f"   this/{first.split()[0]} {to_first:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
