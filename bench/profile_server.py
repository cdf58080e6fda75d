"""cProfile of ``kargo-bitbucket serve`` under the wrk load of bench/run.py figure 1.

Builds a state with ``--warehouses`` Warehouses, runs the real server under
``python -m cProfile`` (pinned like run.py), drives it with wrk for ``--duration``
seconds, stops it with SIGTERM and prints the costliest functions per delivery.
cProfile sees the event-loop thread only and slows Python calls down; read the
shares, not the absolute times. Run: ``.venv/bin/python bench/profile_server.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import pstats
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import run


def main() -> int:
    """Profile one server under load and print the top functions."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payload", type=Path, default=run.DEFAULT_PAYLOAD)
    parser.add_argument("--warehouses", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--log-level", default="info", help="serve's --log-level")
    parser.add_argument("--cli", type=Path, default=Path(sys.executable).parent / "kargo-bitbucket")
    args = parser.parse_args()
    try:
        run.preflight(args)
    except run.BenchError as error:
        print(f"profile: {error}", file=sys.stderr)
        return 2
    server_cpu, client_cpu = run.cpus(no_pin=False)
    body = args.payload.read_bytes()
    secret = secrets.token_hex(16)
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-profile-"))
    server = None
    try:
        state = run.build_state(args.cli, workdir, args.warehouses, 10_000, secret)
        port = run.free_port()
        output = workdir / "serve.prof"
        command = [
            sys.executable, "-m", "cProfile", "-o", str(output),
            "-m", "kargo_bitbucket", "--log-level", args.log_level, "serve",
            "--state", str(state.path), "--listen", f"{run.HOST}:{port}",
            "--base-url", f"http://{run.HOST}:{port}",
        ]  # fmt: skip
        if "--admin-listen" in run.serve_help(args.cli):
            command += ["--admin-listen", f"{run.HOST}:{run.free_port()}"]
        log = workdir / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                run.pinned(server_cpu, command),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=run.clean_env(),
            )
        server = run.Server("profiled", process, port, log)
        run.wait_ready(server)
        server.target = run.receiver_target(args.cli, state, port)
        run.check_delivery(server, body, signature)
        result = run.wrk(
            server, args.connections, args.duration, client_cpu, args.payload, signature
        )
        print(f"{result.requests} deliveries, {result.rps:.0f} req/s under cProfile")
        run.stop(server)
        if server.process.returncode != 0:
            raise run.BenchError(f"server exited {server.process.returncode}")
        text = io.StringIO()
        stats = pstats.Stats(str(output), stream=text)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(text.getvalue().replace(str(Path(sys.prefix)), "<venv>"))
    except run.BenchError as error:
        print(f"profile: FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            run.stop(server)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
