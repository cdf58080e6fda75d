"""Machine instructions per delivery, counted by valgrind: an A/B that the machine's noise
does not move.

CPU time on these shared machines moves by ±10 % from round to round, more than most
changes to the hot path are worth. This runs bench/in_process.py's variants (the front
door protocol, the real ``App``, a ``SqliteStore`` over 10,000 Warehouses, the signed
10 KB push on 16 connections; the floor apps on the same protocol) under ``valgrind
--tool=cachegrind --cache-sim=no``, which counts every instruction the process executes:
the interpreter, uvloop, msgspec, OpenSSL and SQLite alike. Each variant runs twice, with
few and with many deliveries after the same warm-up; the difference over the number of
deliveries between them is one delivery's count, without the start-up. Two runs of the
same code agree within 0.1 % on a quiet machine and within 1 % under load (how many
deliveries share a commit follows the clock): compare the variants of one run.
Instructions are not time (a cache miss costs more than an add), so the figure to quote
stays the timed one; this decides between versions.

    .venv/bin/python bench/instructions.py --rev HEAD~1      # floors, HEAD~1 and the tree
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import in_process  # noqa: E402
import run  # noqa: E402
from common import clean_env  # noqa: E402

FEW, MANY = 16, 1616
"""``--deliveries`` of the two runs: in_process measures 3 times that many."""
COUNTED = 3 * (MANY - FEW)
REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(
    worker: str, env: dict[str, str], parts: str, workdir: Path, label: str, n: int
) -> int:
    """Instructions executed by one in_process worker delivering ``3 * n`` after warm-up."""
    own = workdir / label  # the floor apps' database is named alike for every run
    own.mkdir()
    (own / "state.db").symlink_to(workdir / "state.db")
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, str(HERE / "in_process.py"), "--worker", worker,
        "--workdir", str(own), "--label", label, "--deliveries", str(n),
        "--ablate", parts,
    ]  # fmt: skip
    done = subprocess.run(
        command, env={**env, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=False
    )
    found = REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{label}: valgrind run failed\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_delivery(worker: str, env: dict[str, str], parts: str, workdir: Path, label: str) -> float:
    """One delivery's instructions: the two runs' difference over the deliveries between."""
    few = instructions(worker, env, parts, workdir, f"{label}-few", FEW)
    many = instructions(worker, env, parts, workdir, f"{label}-many", MANY)
    return (many - few) / COUNTED


def _count(args: argparse.Namespace, workdir: Path, snapshots: list[Path]) -> dict[str, float]:
    """Each variant's instructions per delivery, counted in ``workdir``; the ``--rev``
    sources it unpacks are added to ``snapshots``."""
    cli = run.PROJECT / ".venv" / "bin" / "kargo-bitbucket"
    built = run.build_state(cli, workdir, 10_000, 10_000, in_process.SECRET)
    built.path.rename(workdir / "state.db")
    tree = clean_env(PYTHONPATH=str(run.PROJECT / "src"))
    variants: dict[str, tuple[str, dict[str, str], str]] = {}
    if not args.no_floors:
        variants["floor"] = ("floor", clean_env(), "")
        variants["floor-observed"] = ("floor-observed", clean_env(), "")
    for rev in args.rev:
        directory, full = run.snapshot(rev)
        snapshots.append(directory)
        snapshot = clean_env(PYTHONPATH=str(directory / "src"))
        variants[f"{rev} ({full[:7]})"] = ("ours", snapshot, "")
    variants["tree"] = ("ours", tree, "")
    for parts in args.ablate:
        variants[f"tree without {parts}"] = ("ours", tree, parts)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        counts = {
            name: pool.submit(per_delivery, worker, env, parts, workdir, f"v{number}")
            for number, (name, (worker, env, parts)) in enumerate(variants.items())
        }
        return {name: future.result() for name, future in counts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    in_process.add_variant_arguments(parser)
    parser.add_argument("--no-floors", action="store_true", help="count ours only")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-instructions-"))
    snapshots: list[Path] = []
    try:
        figures = _count(args, workdir, snapshots)
    finally:
        for directory in [workdir, *snapshots]:
            shutil.rmtree(directory, ignore_errors=True)
    first = next(name for name in figures if not name.startswith("floor"))
    print(f"Instructions per delivery (valgrind, {COUNTED} deliveries counted):")
    for name, figure in figures.items():
        to_floor = f"   floor/this {figures['floor'] / figure:.3f}" if "floor" in figures else ""
        difference = f"this-{first.split()[0]} {figure - figures[first]:+9,.0f}"
        print(f"  {name:32} {figure:10,.0f}{to_floor}   {difference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
