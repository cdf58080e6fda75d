"""Storage attacks of issue 9 against two versions of ``serve``, side by side.

1. Big unsigned headers: ``--big`` unsigned POSTs to a receiver's path, each with an
   ``X-Request-UUID`` of ``--header-mb`` MB: how much the state file and the log grow.
2. Unsigned flood: 5 signed deliveries, then ``--flood`` small unsigned POSTs (more than
   the history holds): how many of the 5 signed deliveries the history still shows.
3. State file deleted while serving: ``rm state.db*``, then a signed delivery: its
   answer (a 200 there is a refresh lost), then ``apply -f`` makes a new file: how long
   until a delivery refreshes a Warehouse in it.

Everything runs on 127.0.0.1 in a temporary directory removed at the end. Run:
``.venv/bin/python bench/storage_attacks.py main`` (A = main, B = the working tree).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ab import source_of
from common import HOST, clean_env, free_port, terminate

REPO = "https://bitbucket.org/acme/app"
SECRET = "storage-attacks"
MANIFESTS = f"""
apiVersion: v1
kind: Secret
metadata: {{name: bb, namespace: demo}}
stringData: {{secret: {SECRET}}}
---
apiVersion: kargo.akuity.io/v1alpha1
kind: ProjectConfig
metadata: {{name: demo, namespace: demo}}
spec:
  webhookReceivers: [{{name: bb, bitbucket: {{secretRef: {{name: bb}}}}}}]
---
apiVersion: kargo.akuity.io/v1alpha1
kind: Warehouse
metadata: {{name: app, namespace: demo}}
spec:
  subscriptions: [{{git: {{repoURL: {REPO}, branch: main}}}}]
"""
PUSH = json.dumps(
    {
        "push": {"changes": [{"new": {"type": "branch", "name": "main"}, "old": None}]},
        "repository": {"links": {"html": {"href": REPO}}},
    }
).encode()


@dataclass
class Side:
    """One version of the code, its state file and its server."""

    label: str
    source: Path
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    admin: int = 0
    path: str = ""

    @property
    def state(self) -> Path:
        return self.workdir / "state.db"

    @property
    def log(self) -> Path:
        return self.workdir / "serve.log"

    def cli(self, *args: str, stdin: str | None = None) -> str:
        command = [sys.executable, "-m", "kargo_bitbucket", *args, "--state", str(self.state)]
        env = clean_env(PYTHONPATH=str(self.source))
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{self.label}: {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        self.cli("apply", "-f", "-", stdin=MANIFESTS)
        self.port, self.admin = free_port(), free_port()
        command = [
            sys.executable, "-m", "kargo_bitbucket", "serve", "--state", str(self.state),
            "--listen", f"{HOST}:{self.port}", "--admin-listen", f"{HOST}:{self.admin}",
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT,
                env=clean_env(PYTHONPATH=str(self.source)),
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/readyz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{self.label}: not ready:\n{self.log.read_text()}") from None
                time.sleep(0.1)
        (line,) = self.cli("urls").splitlines()
        self.path = "/" + line.split("\t")[2].split("/", 3)[3]

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)  # type: ignore[arg-type]

    def stored(self) -> int:
        """Bytes of the state file and its WAL."""
        return sum(p.stat().st_size for p in self.workdir.glob("state.db*"))

    def post(self, headers: dict[str, str], body: bytes = b"{}") -> int:
        """One POST on a fresh connection, written by hand (headers of any size); its status."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (
            f"POST {self.path} HTTP/1.1\r\nHost: {HOST}\r\n{head}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode() + body
        with socket.create_connection((HOST, self.port), timeout=60) as sock:
            sock.sendall(request)
            answer = sock.recv(64)
        return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0

    def signed(self, delivery: str) -> int:
        signature = "sha256=" + hmac.new(SECRET.encode(), PUSH, hashlib.sha256).hexdigest()
        headers = {"X-Event-Key": "repo:push", "X-Hub-Signature": signature}
        return self.post({**headers, "X-Request-UUID": delivery}, PUSH)

    def history(self) -> list[dict[str, object]]:
        url = f"http://{HOST}:{self.admin}/deliveries.json?limit=10000"
        with urllib.request.urlopen(url, timeout=30) as answer:
            return list(json.loads(answer.read()))


def settle(side: Side) -> None:
    """Wait until the state file stops growing (records are written within 50 ms)."""
    last, deadline = -1, time.monotonic() + 10
    while side.stored() != last and time.monotonic() < deadline:
        last = side.stored()
        time.sleep(0.3)


def big_headers(side: Side, count: int, megabytes: int) -> str:
    settle(side)
    stored, logged = side.stored(), side.log.stat().st_size
    began = time.monotonic()
    statuses = [
        side.post({"X-Event-Key": "repo:push", "X-Request-UUID": "u" * (megabytes * 10**6)})
        for _ in range(count)
    ]
    seconds = time.monotonic() - began
    settle(side)
    grown = (side.stored() - stored) / 1e6
    logs = (side.log.stat().st_size - logged) / 1e6
    return (
        f"{count} x {megabytes} MB header: answers {sorted(set(statuses))} in {seconds:.1f} s; "
        f"state file +{grown:.1f} MB, log +{logs:.1f} MB"
    )


def flood(side: Side, count: int) -> str:
    statuses = [side.signed(f"signed-{i}") for i in range(5)]
    began = time.monotonic()
    for _ in range(count):
        side.post({"X-Event-Key": "repo:push", "X-Request-UUID": "flood"})
    seconds = time.monotonic() - began
    settle(side)
    shown = {str(r["delivery_id"]) for r in side.history()}
    kept = sum(f"signed-{i}" in shown for i in range(5))
    logged = side.log.read_text(errors="replace").count('"delivery":"flood"')
    return (
        f"5 signed {sorted(set(statuses))}, then {count} unsigned in {seconds:.1f} s: "
        f"{kept} of 5 signed still in the history; {logged} log lines about the flood"
    )


def vanish(side: Side) -> str:
    for path in side.workdir.glob("state.db*"):
        path.unlink()
    after_rm = [side.signed(f"after-rm-{i}") for i in range(3)]
    time.sleep(0.5)  # what a user does meanwhile; the answers below are what is measured
    later = side.signed("after-rm-later")
    side.cli("apply", "-f", "-", stdin=MANIFESTS)
    began, status = time.monotonic(), 0
    while time.monotonic() - began < 5:
        status = side.signed("after-apply")
        refreshed = json.loads(side.cli("get", "warehouse", "app", "-n", "demo", "-o", "json"))
        if status == 200 and "annotations" in refreshed["metadata"]:
            break
        time.sleep(0.05)
    else:
        return (
            f"after rm: {after_rm} at once, {later} 0.5 s later; after apply -f: "
            f"no refresh reached the new file in 5 s (last answer {status})"
        )
    return (
        f"after rm: {after_rm} at once, {later} 0.5 s later; after apply -f: "
        f"refresh in the new file after {time.monotonic() - began:.2f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a", help="commit A (the code before the change), e.g. main")
    parser.add_argument("--b", help="commit B (default: the working tree)")
    parser.add_argument("--big", type=int, default=20, help="unsigned POSTs with a big header")
    parser.add_argument("--header-mb", type=int, default=24)
    parser.add_argument("--flood", type=int, default=1200, help="small unsigned POSTs")
    options = parser.parse_args(argv)
    snapshots: list[Path] = []
    workdir = Path(tempfile.mkdtemp(prefix="kargo-bitbucket-storage-"))
    sides = []
    try:
        for label, rev in (("A", options.a), ("B", options.b)):
            (workdir / label).mkdir()
            sides.append(Side(f"{label} ({rev or 'working tree'})", source_of(rev, snapshots),
                              workdir / label))  # fmt: skip
        for side in sides:
            side.start()
            try:
                print(f"{side.label}: {big_headers(side, options.big, options.header_mb)}")
                print(f"{side.label}: {flood(side, options.flood)}")
                print(f"{side.label}: {vanish(side)}", flush=True)
            finally:
                side.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for directory in snapshots:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
