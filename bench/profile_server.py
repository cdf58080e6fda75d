"""Profile ``kargo-bitbucket serve`` under the wrk load of bench/run.py figure 1.

Builds a state with ``--warehouses`` Warehouses, starts the real server (pinned like
run.py), drives it with wrk for ``--duration`` seconds and prints where its time goes:

* ``--profiler py-spy`` (the default when ``py-spy`` is found): samples the unmodified
  server from outside, every thread, ``--rate`` times a second (pausing it for each
  sample, so that stacks are consistent; ``--nonblocking`` tears them). Prints the
  functions by own time (the innermost Python frame of each sample: time in C code
  counts for the Python function that called it; add ``--native`` to see C frames
  too), by inclusive time, and own time per module.
  py-spy is not a project dependency; install it anywhere, e.g. ``python3 -m venv
  /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy``, and pass ``--py-spy
  /tmp/pyspy/bin/py-spy``.
* ``--profiler cprofile``: runs the server under ``python -m cProfile``. It sees the
  event-loop thread only and slows every Python call down; read the shares, not the
  absolute times. It counts every step of a generator as a call.

``--observability off`` profiles ``serve --history-size 0 --admin-listen off`` instead
of the defaults. Run: ``.venv/bin/python bench/profile_server.py --help``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures.thread
import hashlib
import hmac
import inspect
import io
import json
import pstats
import re
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import run

from kargo_bitbucket.store.sqlite import DatabaseThread

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def idle_lines() -> set[tuple[str, int]]:
    """(file, line) of Python frames that wait for work: in blocking mode py-spy samples them
    (the executors' workers and the embedded store's database thread).

    The server runs on the same interpreter as this script, so the line numbers match.
    """
    waits = set()
    for function, call in (
        (concurrent.futures.thread._worker, "work_queue.get("),
        (DatabaseThread._serve, "self._calls.get("),
    ):
        lines, first = inspect.getsourcelines(function)
        path = short_path(inspect.getfile(function))
        waits |= {(path, first + i) for i, text in enumerate(lines) if call in text}
    return waits


def short_path(path: str) -> str:
    """A file path without the site-packages or standard-library prefix."""
    for prefix in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]):
        if path.startswith(prefix + "/"):
            return path[len(prefix) + 1 :]
    return path.replace(str(run.PROJECT / "src") + "/", "").replace(str(run.PROJECT) + "/", "")


def frame_key(frame: str) -> tuple[str, str]:
    """(``function (file)``, module) of one py-spy frame, the line number dropped."""
    match = FRAME.match(frame)
    if match is None:
        return frame, frame
    path = short_path(match["file"])
    if path.endswith(".py"):
        module = path.removesuffix(".py").removesuffix("/__init__")
        module = module.split("/site-packages/")[-1].replace("/", ".")
    else:
        module = path  # a native frame: the library it is in
    return f"{match['function']} ({path})", module


def summarise_pyspy(raw: Path, top: int, requests: int) -> str:
    """Own time by function and module, inclusive time by function, from py-spy raw output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    idle = collections.Counter[str]()
    waits = idle_lines()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread (") else "?"
        thread = re.sub(r"_\d+$", "", thread)
        leaf = FRAME.match(frames[-1])
        if leaf and leaf["line"] and (short_path(leaf["file"]), int(leaf["line"])) in waits:
            idle[thread] += count
            continue
        threads[thread] += count
        keys = [frame_key(frame) for frame in frames[1:]] or [("(no Python frame)", "?")]
        own[keys[-1][0]] += count
        modules[keys[-1][1]] += count
        for key in {key for key, _ in keys}:
            inclusive[key] += count
        total += count
    if total == 0:
        return "py-spy recorded no sample\n"

    def table(title: str, counter: collections.Counter[str], limit: int) -> list[str]:
        lines = [f"\n{title}", f"{'share':>7}  {'samples':>8}  what"]
        for key, count in counter.most_common(limit):
            lines.append(f"{count / total:7.1%}  {count:8d}  {key}")
        return lines

    out = [
        f"{total} samples of busy threads ({requests} deliveries in the sampled window); "
        f"left out, waiting for work: {dict(idle) or 'none'}. Runner.run's own time is "
        "uvloop's C code (socket I/O, callbacks, waiting in epoll)."
    ]
    out += table("busy samples by thread", threads, 10)
    out += table("own time by function (innermost frame)", own, top)
    out += table("own time by module", modules, top)
    out += table("inclusive time by function", inclusive, top)
    return "\n".join(out) + "\n"


def start_server(
    args: argparse.Namespace, state: run.State, workdir: Path, cpu: int | None
) -> run.Server:
    """The server, under cProfile or as the plain console script for py-spy."""
    port = run.free_port()
    serve = [
        "serve", "--state", str(state.path), "--listen", f"{run.HOST}:{port}",
        "--base-url", f"http://{run.HOST}:{port}",
    ]  # fmt: skip
    if args.observability == "off":
        serve += run.OBSERVABILITY_OFF
    elif "--admin-listen" in run.serve_help(args.cli):
        serve += ["--admin-listen", f"{run.HOST}:{run.free_port()}"]
    if args.profiler == "cprofile":
        command = [
            sys.executable, "-m", "cProfile", "-o", str(workdir / "serve.prof"),
            "-m", "kargo_bitbucket", "--log-level", args.log_level, *serve,
        ]  # fmt: skip
    else:
        command = [str(args.cli), "--log-level", args.log_level, *serve]
    log = workdir / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            run.pinned(cpu, command), stdout=out, stderr=subprocess.STDOUT, env=run.clean_env()
        )
    server = run.Server("profiled", process, port, log, state=state)
    run.wait_ready(server)
    server.target = run.receiver_target(args.cli, state, port)
    return server


def profile_pyspy(
    args: argparse.Namespace,
    server: run.Server,
    client_cpu: int | None,
    signature: str,
    workdir: Path,
) -> str:
    """Sample the server with py-spy during a wrk run that covers the whole window."""
    raw = workdir / "pyspy.txt"
    command = [
        str(args.py_spy), "record", "--pid", str(server.process.pid), "--rate", str(args.rate),
        "--duration", str(args.duration), "--format", "raw", "--threads", "--output", str(raw),
    ]  # fmt: skip
    if args.nonblocking:
        command.append("--nonblocking")
    if args.native:
        command.append("--native")
    cpu_before = server.cpu_seconds()
    load_command = [
        "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration + 2}s",
        "--timeout", "5s", "-s", str(run.LUA), server.target,
    ]  # fmt: skip
    load = subprocess.Popen(  # wrk in the background, longer than the sampled window
        run.pinned(client_cpu, load_command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=run.clean_env(BENCH_BODY_FILE=str(args.payload), BENCH_SIGNATURE=signature),
    )
    time.sleep(1)
    spy = subprocess.run(
        run.pinned(client_cpu, command), capture_output=True, text=True, check=False
    )
    output, _ = load.communicate(timeout=args.duration + 60)
    cpu = server.cpu_seconds() - cpu_before
    if spy.returncode != 0 or not raw.exists():
        raise run.BenchError(f"py-spy failed ({spy.returncode}): {spy.stderr.strip()}")
    line = next((x for x in output.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if load.returncode != 0 or line is None:
        raise run.BenchError(f"wrk failed ({load.returncode}):\n{output}")
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    rps = result["requests"] / (result["duration_us"] / 1e6)
    header = (
        f"{result['requests']} deliveries, {rps:.0f} req/s while sampled with py-spy "
        f"({args.rate} Hz{', nonblocking' if args.nonblocking else ''}), "
        f"server CPU {cpu / result['requests'] * 1e6:.0f} us per delivery\n"
    )
    if args.raw:
        shutil.copyfile(raw, args.raw)
    return header + summarise_pyspy(raw, args.top, round(rps * args.duration))


def profile_cprofile(
    args: argparse.Namespace, server: run.Server, client_cpu: int | None, signature: str
) -> str:
    """The classic: cProfile statistics after a wrk run and a clean shutdown."""
    result = run.wrk(server, args.connections, args.duration, client_cpu, args.payload, signature)
    run.stop(server)
    if server.process.returncode != 0:
        raise run.BenchError(f"server exited {server.process.returncode}")
    text = io.StringIO()
    stats = pstats.Stats(str(server.log.parent / "serve.prof"), stream=text)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    header = f"{result.requests} deliveries, {result.rps:.0f} req/s under cProfile\n"
    return header + text.getvalue().replace(str(Path(sys.prefix)), "<venv>")


def main() -> int:
    """Profile one server under load and print the top functions."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    found = shutil.which("py-spy")
    parser.add_argument("--profiler", choices=["py-spy", "cprofile"])
    parser.add_argument("--py-spy", type=Path, default=Path(found) if found else None)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy: C frames too")
    parser.add_argument(
        "--nonblocking",
        action="store_true",
        help="py-spy: do not pause the server to sample (less overhead, torn stacks)",
    )
    parser.add_argument("--raw", type=Path, help="py-spy: keep its raw (collapsed) stacks here")
    parser.add_argument("--observability", choices=["on", "off"], default="on")
    parser.add_argument("--payload", type=Path, default=run.DEFAULT_PAYLOAD)
    parser.add_argument("--warehouses", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--log-level", default="info", help="serve's --log-level")
    parser.add_argument("--rev", help="profile this commit (git archive on PYTHONPATH)")
    parser.add_argument("--cli", type=Path, default=Path(sys.executable).parent / "kargo-bitbucket")
    args = parser.parse_args()
    args.profiler = args.profiler or ("py-spy" if args.py_spy else "cprofile")
    if args.profiler == "py-spy" and (args.py_spy is None or not args.py_spy.exists()):
        parser.error("py-spy not found: pass --py-spy PATH (see --help) or --profiler cprofile")
    revision = None
    try:
        run.preflight(args)
        rev_hash = None
        if args.rev:
            revision, rev_hash = run.snapshot(args.rev)
        print(f"code: {run.code_version(rev_hash)}")
    except run.BenchError as error:
        print(f"profile: {error}", file=sys.stderr)
        if revision is not None:
            shutil.rmtree(revision, ignore_errors=True)
        return 2
    server_cpu, client_cpu = run.cpus(no_pin=False)
    body = args.payload.read_bytes()
    secret = secrets.token_hex(16)
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-profile-"))
    server = None
    try:
        state = run.build_state(args.cli, workdir, args.warehouses, 10_000, secret)
        server = start_server(args, state, workdir, server_cpu)
        run.check_delivery(server, body, signature)
        run.wrk(server, args.connections, 2, client_cpu, args.payload, signature)  # warm-up
        variant = "defaults" if args.observability == "on" else "history and metrics off"
        print(
            f"serve ({variant}), {args.warehouses} Warehouses, {args.connections} connections, "
            f"{args.duration} s; event loop {server.loop}"
        )
        if args.profiler == "py-spy":
            print(profile_pyspy(args, server, client_cpu, signature, workdir))
        else:
            print(profile_cprofile(args, server, client_cpu, signature))
    except run.BenchError as error:
        print(f"profile: FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            run.stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
        if revision is not None:
            shutil.rmtree(revision, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
