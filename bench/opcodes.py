"""Python bytecodes executed per delivery, ours against the floor's: a measure without noise.

CPU time on a shared machine varies by more than most single changes; the number of
bytecodes the interpreter runs for one delivery does not. This runs the stack of
bench/in_process.py (the front door protocol, the real ``App``, a ``SqliteStore`` over
10,000 Warehouses, the signed 10 KB push on 16 kept-alive connections), warms it up,
then counts with ``sys.settrace`` the opcodes of one round of 16 deliveries, by function.
The floor and floor-observed apps are counted the same way. Opcodes are not time: a call
into C is one opcode however long it runs, and fewer opcodes can still be slower (the
reverted ``b9badf5``: 20 fewer, 0.27 µs slower), so time a change with in_process.py too;
over the hot path as a whole they averaged 14 ns each.

    .venv/bin/python bench/opcodes.py            # totals and ours' 40 busiest functions
    .venv/bin/python bench/opcodes.py --top 0    # totals only
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import in_process  # noqa: E402
import run  # noqa: E402
from common import CORPUS, clean_env  # noqa: E402

WARM_UP = 20
Counts = collections.Counter[str]


def counting(counts: Counts) -> Callable[[FrameType, str, Any], Any]:
    """A trace function adding one to ``counts[function]`` per opcode executed."""

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_qualname} ({Path(code.co_filename).name}:{code.co_firstlineno})"] += 1
        return local

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    return trace


def count_one_round(counts: Counts) -> Callable[..., Any]:
    """A stand-in for ``in_process.cpu_per_delivery``: warm up, then count one round."""

    async def measure(connect: Callable[[], Any], request: bytes, rounds: int) -> float:
        if counts:  # in_process runs its measure more than once: count the first only
            return 0.0
        one_round = in_process.connections(connect, request)
        for _ in range(WARM_UP):
            await one_round()
        sys.settrace(counting(counts))
        try:
            await one_round()
        finally:
            sys.settrace(None)
        return 0.0

    return measure


def worker(variant: str, workdir: Path, body: bytes) -> Counts:
    """Count one variant in this process."""
    import uvloop

    counts: Counts = collections.Counter()
    in_process.cpu_per_delivery = count_one_round(counts)  # type: ignore[assignment]
    if variant == "ours":
        state = run.copy_state(run.State(10_000, workdir / "state.db", 0, 0), "opcodes")
        uvloop.run(in_process.ours(state.path, workdir / "opcodes.log", [], 1, body))
        state.path.unlink()
    else:
        uvloop.run(in_process.floor(workdir, 1, body, variant == "floor-observed"))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=40, help="ours' busiest functions to list")
    parser.add_argument(
        "--payload", type=Path, default=CORPUS / "cloud_repo_push_branch_update.json"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        counts = worker(args.worker, Path(args.workdir), args.payload.read_bytes())
        print(json.dumps(counts))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-opcodes-"))
    try:
        return _count(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _count(args: argparse.Namespace, workdir: Path) -> int:
    """Count each variant's opcodes in a process of its own; print them."""
    cli = run.PROJECT / ".venv" / "bin" / "kargo-bitbucket"
    built = run.build_state(cli, workdir, 10_000, 10_000, in_process.SECRET)
    built.path.rename(workdir / "state.db")
    env = clean_env(PYTHONPATH=str(run.PROJECT / "src"))
    per_delivery: dict[str, float] = {}
    ours: Counts = collections.Counter()
    for variant in ("floor", "floor-observed", "ours"):
        command = [
            sys.executable, __file__, "--worker", variant, "--workdir", str(workdir),
            "--payload", str(args.payload),
        ]  # fmt: skip
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        counts: Counts = collections.Counter(json.loads(output.stdout.splitlines()[-1]))
        per_delivery[variant] = sum(counts.values()) / in_process.CONNECTIONS
        if variant == "ours":
            ours = counts
    floor = per_delivery["floor"]
    print("Python opcodes per delivery (one round of 16 deliveries, counted):")
    for variant, count in per_delivery.items():
        print(f"  {variant:16} {count:7.0f}   this/floor {count / floor:.2f}")
    if args.top:
        print(f"ours, the {args.top} functions running the most opcodes per delivery:")
        for function, count in ours.most_common(args.top):
            print(f"  {count / in_process.CONNECTIONS:7.1f}  {function}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
