"""A/B: ``serve`` of one commit against another (or the working tree), in the same rounds.

Whole runs of bench/run.py an hour apart differ by more than most single changes on a
shared machine, so a change is measured against the code before it: both servers run
on copies of one state (figure 1's set-up: 10,000 Warehouses, the signed 10 KB push,
``serve`` pinned to one CPU and wrk to the other), and wrk drives them in turn, the
order reversed every other round. Prints each server's median req/s, CPU per delivery
and p99, and B's CPU per delivery over A's in every round and their median.

Run: ``.venv/bin/python bench/ab.py HEAD~1 [--b HEAD] [--connections 1]``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import run


def start(setup: run.Setup, state: run.State, source: Path, label: str) -> run.Server:
    """``serve`` importing the package under ``source`` (PYTHONPATH is what run.py passes on)."""
    os.environ["PYTHONPATH"] = str(source)
    return setup.start_ours(state, (), f"-{label}")


def source_of(rev: str | None, snapshots: list[Path]) -> Path:
    """``src`` of ``rev`` (a git archive, added to ``snapshots``), or the working tree's."""
    if rev is None:
        return run.PROJECT / "src"
    directory, _ = run.snapshot(rev)
    os.environ.pop("PYTHONPATH", None)
    snapshots.append(directory)
    return directory / "src"


def main(argv: Sequence[str] | None = None) -> int:
    """Alternate wrk rounds over A and B; print the medians and the per-round CPU ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a", help="commit A (the code before the change)")
    parser.add_argument("--b", help="commit B (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    options = parser.parse_args(argv)
    args = run.parse_args(
        ["--rounds", str(options.rounds), "--duration", str(options.duration), "--warmup", "2"]
    )
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-ab-"))
    body = args.payload.read_bytes()
    secret = secrets.token_hex(16)
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    server_cpu, client_cpu = run.cpus(False)
    setup = run.Setup(
        args, args.cli, workdir, body, args.payload, signature, secret, server_cpu, client_cpu
    )
    snapshots: list[Path] = []
    try:
        sources = {"A": source_of(options.a, snapshots), "B": source_of(options.b, snapshots)}
        state = run.build_state(args.cli, workdir, 10_000, 10_000, secret)
        copy = run.copy_state(state, "b")
        servers = {
            "A": start(setup, state, sources["A"], "A"),
            "B": start(setup, copy, sources["B"], "B"),
        }
        for server in servers.values():
            run.check_delivery(server, body, signature)
        runs = run.alternate(setup, list(servers.values()), options.connections, options.duration)
        run.finish_checks(setup, list(servers.values()), runs)  # every delivery refreshed one
    except run.BenchError as error:
        print(f"ab: {error}", file=sys.stderr)
        return 2
    finally:
        setup.stop_all()
        for directory in [workdir, *snapshots]:
            shutil.rmtree(directory, ignore_errors=True)
    names = {"A": options.a, "B": options.b or "working tree"}
    for key, server in servers.items():
        rounds = runs[server.label]
        print(
            f"{key} = {names[key]}: {run.median([r.rps for r in rounds]):.0f} req/s, "
            f"CPU {run.median([r.cpu_us for r in rounds]):.0f} us per delivery, "
            f"p99 {run.median([r.p99_ms for r in rounds]):.2f} ms"
        )
    ratios = [
        b.cpu_us / a.cpu_us
        for a, b in zip(runs[servers["A"].label], runs[servers["B"].label], strict=True)
    ]
    print(
        "B/A CPU per delivery by round: "
        + " ".join(f"{r:.2f}" for r in ratios)
        + f"; median {run.median(ratios):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
