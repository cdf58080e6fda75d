"""Bounded deliveries (issue 9): one huge signed push against ``serve``, ``/healthz`` meanwhile.

Builds a state file with ``--warehouses`` Warehouses all subscribed to one repository
(``--shape branch``: each follows its own branch; ``mixed``: 80 % branches, 15 % SemVer
over 10 constraints, 5 % NewestTag over 5 allow regexes; ``tags``: each NewestTag with an
allow regex of its own, as services of a monorepo), none of which the push matches, and
sends ``--pushes`` signed Cloud ``repo:push`` deliveries of ``--refs`` refs (half
branches, half tags) one after the other, while another thread asks ``/healthz`` every
10 ms. Prints each push's answer time, the probes' median, p99 and worst latency while
pushes were in flight, the server's RSS and the state file's size. Goals: each answer
within 1 s, ``/healthz`` under 50 ms. Everything is on 127.0.0.1.

    .venv/bin/python bench/huge_push.py                      # the working tree
    .venv/bin/python bench/huge_push.py --rev 97c0255 --pushes 1   # a commit, for "before"
    .venv/bin/python bench/huge_push.py --shape tags --refs 40000 --warehouses 200
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import run
from common import HOST, BenchError, clean_env, machine

REPO = "https://bitbucket.org/bench-org/monorepo"
PROBE_INTERVAL = 0.010
ANSWER_GOAL = 1.0
HEALTHZ_GOAL = 0.050


def documents(warehouses: int, shape: str) -> Iterator[str]:
    """The Secret and ProjectConfig of run.py's receiver, then the Warehouses."""
    yield from list(run.manifest_documents(1))[:2]
    for i in range(warehouses):
        git = f"        repoURL: {REPO}\n        branch: release-{i}\n"
        if shape == "tags":
            git = (
                f"        repoURL: {REPO}\n        commitSelectionStrategy: NewestTag\n"
                f"        allowTagsRegexes: ['^svc-{i}/']\n"
            )
        if shape == "mixed" and i % 20 >= 16:
            if i % 20 == 19:
                git = (
                    f"        repoURL: {REPO}\n        commitSelectionStrategy: NewestTag\n"
                    f"        allowTagsRegexes: ['^app-{i % 5}-']\n"
                )
            else:
                git = (
                    f"        repoURL: {REPO}\n        commitSelectionStrategy: SemVer\n"
                    f"        semverConstraint: '^{1 + i % 10}.0.0'\n"
                )
        yield (
            f"apiVersion: kargo.akuity.io/v1alpha1\nkind: Warehouse\nmetadata:\n"
            f"  name: wh-{i:05d}\n  namespace: {run.NAMESPACE}\nspec:\n  subscriptions:\n"
            f"    - git:\n{git}"
        )


def build_state(cli: Path, workdir: Path, warehouses: int, shape: str, secret: str) -> run.State:
    """Apply the manifests with the CLI into a new state file."""
    manifests = workdir / "manifests.yaml"
    manifests.write_text("---\n".join(documents(warehouses, shape)).replace("{secret}", secret))
    path = workdir / "state.db"
    started = time.perf_counter()
    done = subprocess.run(
        [str(cli), "apply", "-f", str(manifests), "--state", str(path)],
        capture_output=True, text=True, env=clean_env(), check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"apply failed ({done.returncode}): {done.stderr.strip()}")
    return run.State(warehouses, path, time.perf_counter() - started, 1)


def push_body(refs: int) -> bytes:
    """A Cloud ``repo:push`` of ``refs`` changes, half branches and half tags, none wanted."""
    changes = [
        {"new": {"type": "branch", "name": f"feature-{i}"}}
        if i % 2 == 0
        else {"new": {"type": "tag", "name": f"v0.0.{i}"}}
        for i in range(refs)
    ]
    body = {"repository": {"links": {"html": {"href": REPO}}}, "push": {"changes": changes}}
    return json.dumps(body, separators=(",", ":")).encode()


class Prober(threading.Thread):
    """GET /healthz every PROBE_INTERVAL on a fresh connection; keeps (start, seconds)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.perf_counter()
            try:
                connection = http.client.HTTPConnection(HOST, self.port, timeout=10)
                connection.request("GET", "/healthz")
                ok = connection.getresponse().status == 200
                connection.close()
            except OSError:
                ok = False
            elapsed = time.perf_counter() - started
            if ok:
                self.samples.append((started, elapsed))
            else:
                self.failures += 1
            self.halt.wait(max(0.0, PROBE_INTERVAL - elapsed))


def deliver(port: int, path: str, body: bytes, secret: str) -> tuple[int, str, float]:
    """POST one signed delivery; status, msg or error, and seconds to the answer."""
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Event-Key": "repo:push",
        "X-Hub-Signature": signature,
        "X-Request-UUID": secrets.token_hex(8),
    }
    started = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=120)
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    answer = json.loads(response.read())
    elapsed = time.perf_counter() - started
    connection.close()
    return response.status, str(answer.get("msg") or answer.get("error")), elapsed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refs", type=int, default=10_000)
    parser.add_argument("--warehouses", type=int, default=1_000)
    parser.add_argument("--shape", choices=("branch", "mixed", "tags"), default="mixed")
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--rev", help="measure this commit's src/ (git archive), not the tree")
    parser.add_argument("--cli", type=Path, default=Path(sys.executable).parent / "kargo-bitbucket")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cleanup: list[Path] = []
    if args.rev:
        directory, _ = run.snapshot(args.rev)
        cleanup.append(directory)
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-huge-"))
    cleanup.append(workdir)
    server = None
    try:
        print(machine())
        print(f"measuring {run.code_version(args.rev)}")
        secret = secrets.token_hex(16)
        state = build_state(args.cli, workdir, args.warehouses, args.shape, secret)
        server = run.start_ours(args.cli, state, None, workdir)
        path = server.target.split(f":{server.port}", 1)[1]
        body = push_body(args.refs)
        print(
            f"{args.warehouses} Warehouses ({args.shape}) on one repository; push of "
            f"{args.refs} refs, {len(body) / 1024:.0f} KB; {args.pushes} pushes"
        )
        prober = Prober(server.port)
        prober.start()
        time.sleep(0.5)
        answers = []
        windows = []
        for _ in range(args.pushes):
            began = time.perf_counter()
            status, message, elapsed = deliver(server.port, path, body, secret)
            windows.append((began, began + elapsed))
            answers.append(elapsed)
            print(f"  push: {status} {message!r} in {elapsed * 1000:.0f} ms")
            if status != 200:
                raise BenchError(f"push answered {status} {message}\n{server.log_tail()}")
            time.sleep(0.3)
        prober.halt.set()
        prober.join()
        during = sorted(s for t, s in prober.samples if any(a <= t <= b for a, b in windows))
        idle = sorted(s for t, s in prober.samples if not any(a <= t <= b for a, b in windows))
        if not during or not idle:
            raise BenchError("no /healthz probe completed while a push was (not) in flight")
        p99 = during[min(len(during) - 1, int(len(during) * 0.99))]
        worst_answer, worst_probe = max(answers), during[-1]
        print(
            f"answer: median {statistics.median(answers) * 1000:.0f} ms, worst "
            f"{worst_answer * 1000:.0f} ms (goal < {ANSWER_GOAL * 1000:.0f} ms)"
        )
        print(
            f"/healthz while pushes were in flight: {len(during)} probes, median "
            f"{statistics.median(during) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, worst "
            f"{worst_probe * 1000:.1f} ms (goal < {HEALTHZ_GOAL * 1000:.0f} ms); "
            f"{prober.failures} failed; between pushes: median "
            f"{statistics.median(idle) * 1000:.1f} ms, worst {idle[-1] * 1000:.1f} ms"
        )
        print(
            f"server RSS {server.rss_kib() / 1024:.0f} MiB; state file "
            f"{sum(p.stat().st_size for p in workdir.glob('state.db*')) / 2**20:.1f} MiB"
        )
        met = worst_answer < ANSWER_GOAL and worst_probe < HEALTHZ_GOAL and not prober.failures
        print("goals met" if met else "GOALS NOT MET")
        return 0 if met else 1
    except BenchError as error:
        print(f"huge_push: {error}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            run.stop(server)
        for directory in cleanup:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
