"""Benchmark of Kubernetes mode on a real kube-apiserver (issue 10), beside the fake API server.

The same figures, measured the same way, through two API servers started by this script:
``real`` (etcd + kube-apiserver from ``$KUBEBUILDER_ASSETS`` with Kargo's CRDs; the receiver
runs with a TokenRequest token bound to deploy/base's RBAC) and ``fake``
(tests/kube/fakeapi.py, in this process). The two are measured in alternating rounds.

1. fan-out: a signed push refreshing 1,000 Warehouses: time to the answer, and until the last
   refresh annotation has been seen through a watch (goal: answered < 1 s);
2. one Warehouse: delivery-to-annotation latency through a watch, p50 and p99;
3. API requests per delivery, by verb and resource (real: the audit log; fake: its record),
   Lease renewals left out;
4. start-up (process start to ``/readyz`` 200) and RSS once ready, with 10,000 and 100,000
   Warehouses in the server (``--sizes``).

Warehouses for the fan-out and latency figures are created through the API. The bulk for the
start-up figure is written straight into etcd (one txn per 100, copies of a Warehouse the API
server created, managedFields and all): through the API, Kargo's CRD validation plus the audit
log let this 2-core machine create ~75 a second, 22 minutes for 100,000. The API server serves
those objects as it would any other (they reach its watch cache through its etcd watch).

With ``--baseline DIR`` (the ``src`` of another checkout, e.g. a ``git worktree`` of main),
a second ``serve`` runs that code beside this one on each server (``--no-publish``, pushes
sent to its own port), and the fan-out and latency figures alternate between the two:
before/after in the same rounds.

Everything listens on and is sent to 127.0.0.1. Run with the project's virtualenv python:
``KUBEBUILDER_ASSETS=../shared/kube/bin .venv/bin/python bench/kube_real.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from common import HOST, BenchError, clean_env, free_port, machine, terminate

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from tests.kube.apiserver import (  # noqa: E402
    KubeApiServer,
    make_receiver,
    path_of,
    render_rbac,
)
from tests.kube.fakeapi import FakeKubernetes  # noqa: E402

KARGO = "kargo.akuity.io/v1alpha1"
REFRESH = "kargo.akuity.io/refresh"
REPO_URL = "https://bitbucket.org/acme/app"
SECRET = "bench-secret"
PUSH = json.dumps(
    {
        "push": {"changes": [{"new": {"type": "branch", "name": "main"}, "old": None}]},
        "repository": {"links": {"html": {"href": REPO_URL}}},
    }
).encode()
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
COLUMNS = {
    "real": "real kube-apiserver",
    "fake": "fake API server",
    "real-baseline": "real, baseline",
    "fake-baseline": "fake, baseline",
}
STOPPING = threading.Event()
"""Set before the API servers stop: the annotation watches then end instead of resuming."""


def signed_headers() -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), PUSH, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-Event-Key": "repo:push",
        "X-Request-UUID": str(uuid.uuid4()),
        "X-Hub-Signature": f"sha256={digest}",
    }


def post(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=PUSH, headers=signed_headers(), method="POST")
    try:
        with HTTP.open(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def warehouse(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": KARGO,
        "kind": "Warehouse",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"subscriptions": [{"git": {"repoURL": REPO_URL, "branch": "main"}}]},
    }


def project(namespace: str) -> list[dict[str, Any]]:
    """A namespace, its webhook Secret and a ProjectConfig with one Bitbucket receiver."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "bb", "namespace": namespace},
            "data": {"secret": base64.b64encode(SECRET.encode()).decode()},
        },
        {
            "apiVersion": KARGO,
            "kind": "ProjectConfig",
            "metadata": {"name": namespace, "namespace": namespace},
            "spec": {
                "webhookReceivers": [{"name": "bb", "bitbucket": {"secretRef": {"name": "bb"}}}]
            },
        },
    ]


def proc_cpu_seconds(stat_path: str) -> float:
    """User + system CPU seconds from a /proc/.../stat file."""
    fields = Path(stat_path).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ------------------------------------------------------------------------ the two API servers


class Backend:
    """One API server: an admin HTTP client, the receiver's kubeconfig, request counting."""

    name = ""
    url = ""
    token = ""
    ca_file: Path
    kubeconfig: Path
    lease_namespace = "kargo"

    def http(self, read_timeout: float | None = 120) -> httpx2.Client:
        return httpx2.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            timeout=httpx2.Timeout(120, read=read_timeout),
        )

    def create(self, objects: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def bulk(self, namespace: str, count: int, start: int) -> None:
        raise NotImplementedError

    def mark(self) -> int:
        raise NotImplementedError

    def cpu_seconds(self) -> float:
        """CPU used so far by the API server (real: kube-apiserver and etcd)."""
        raise NotImplementedError

    def receiver_requests(self, since: int) -> list[tuple[str, str]]:
        """(verb, resource) of the receiver's non-watch requests since ``since``."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Real(Backend):
    name = "real"

    def __init__(self, assets: Path, workdir: Path) -> None:
        self.server = KubeApiServer(assets).start()
        self.url, self.token, self.ca_file = (
            self.server.url,
            self.server.token,
            self.server.admin.ca_file,
        )
        admin = self.server.admin
        admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kargo-bb"}})
        rbac = render_rbac(PROJECT / "deploy" / "base")
        self.receiver = make_receiver(self.server, rbac, "kargo-bb", workdir)
        self.kubeconfig = self.receiver.kubeconfig
        self.lease_namespace = "kargo-bb"
        self._template: dict[str, Any] | None = None

    def create(self, objects: list[dict[str, Any]]) -> None:
        """Through the API, 16 at a time (the order of ``objects`` is kept per kind)."""

        async def run() -> None:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            headers = {"Authorization": f"Bearer {self.token}"}
            async with httpx2.AsyncClient(
                base_url=self.url, verify=context, headers=headers, timeout=120
            ) as client:
                gate = asyncio.Semaphore(16)

                async def one(obj: dict[str, Any]) -> None:
                    meta = obj["metadata"]
                    path = path_of(obj["apiVersion"], obj["kind"], meta.get("namespace"))
                    async with gate:
                        answer = await client.post(path, json=obj)
                    if answer.status_code != 201:
                        raise BenchError(f"POST {path}: {answer.status_code} {answer.text}")

                for kind in ("Namespace", "Secret", "ProjectConfig", "Warehouse"):
                    await asyncio.gather(*(one(o) for o in objects if o["kind"] == kind))

        asyncio.run(run())

    def bulk(self, namespace: str, count: int, start: int) -> None:
        """``count`` Warehouses written straight into etcd, copies of one the API made."""
        admin = self.server.admin
        if self._template is None:
            admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            made = admin.create(warehouse(namespace, "template"))
            made["metadata"].pop("resourceVersion")
            self._template = made
        template = json.dumps(self._template)
        with httpx2.Client(base_url=self.server.etcd_url, timeout=120) as etcd:
            for first in range(start, start + count, 100):
                puts = []
                for i in range(first, min(first + 100, start + count)):
                    obj = json.loads(template)
                    obj["metadata"].update(name=f"w{i:06d}", uid=str(uuid.uuid4()))
                    key = f"/registry/kargo.akuity.io/warehouses/{namespace}/w{i:06d}"
                    puts.append(
                        {
                            "requestPut": {
                                "key": base64.b64encode(key.encode()).decode(),
                                "value": base64.b64encode(json.dumps(obj).encode()).decode(),
                            }
                        }
                    )
                answer = etcd.post("/v3/kv/txn", json={"success": puts})
                if answer.status_code != 200:
                    raise BenchError(f"etcd txn: {answer.status_code} {answer.text}")

    def mark(self) -> int:
        return self.server.audit_mark()

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(f"/proc/{p.pid}/stat") for p in self.server.processes)

    def receiver_requests(self, since: int) -> list[tuple[str, str]]:
        return [
            (e.verb, e.resource + (f"/{e.subresource}" if e.subresource else ""))
            for e in self.server.audit(since, user=self.receiver.user)
            if e.verb != "watch" and e.resource != "leases"
        ]

    def stop(self) -> None:
        self.server.stop()


class Fake(Backend):
    name = "fake"

    def __init__(self, workdir: Path) -> None:
        self.api = FakeKubernetes(bookmark_interval=1.0).start()
        assert self.api.ca_file is not None
        self.url, self.token, self.ca_file = self.api.https_url, self.api.token, self.api.ca_file
        self.kubeconfig = self.api.kubeconfig(workdir / "kubeconfig-fake")

    def create(self, objects: list[dict[str, Any]]) -> None:
        self.api.bulk_create(objects)

    def bulk(self, namespace: str, count: int, start: int) -> None:
        if start == 0:
            self.api.create(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            )
        self.api.bulk_create(warehouse(namespace, f"w{i:06d}") for i in range(start, start + count))

    def mark(self) -> int:
        return len(self.api.requests)

    def cpu_seconds(self) -> float:
        thread = self.api._thread
        assert thread is not None and thread.native_id is not None
        return proc_cpu_seconds(f"/proc/self/task/{thread.native_id}/stat")

    def receiver_requests(self, since: int) -> list[tuple[str, str]]:
        return [
            (r.verb, resource_of(r.path))
            for r in self.api.requests[since:]
            if r.verb and not r.is_watch and "/leases" not in r.path
        ]

    def stop(self) -> None:
        self.api.stop()


# ------------------------------------------------------------------------ measuring tools


def resource_of(path: str) -> str:
    """``warehouses``, ``projectconfigs/status``... of an API path, as the audit log names it."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    return rest[0] + ("/status" if len(rest) == 3 else "")


def settled(backend: Backend, since: int) -> collections.Counter[tuple[str, str]]:
    """The receiver's requests since ``since`` once no new one came for 0.5 s (its Events
    are sent after the answer)."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    quiet_since = time.monotonic()
    deadline = quiet_since + 30
    while time.monotonic() < deadline:
        now = collections.Counter(backend.receiver_requests(since))
        if now != counts:
            counts, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > 0.5:
            break
        time.sleep(0.05)
    return counts


class AnnotationWatch:
    """Watches the Warehouses of a namespace from ``resourceVersion`` in a daemon thread, for
    the whole run, and records when each (name, refresh annotation) was first seen."""

    def __init__(self, backend: Backend, namespace: str, version: str) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.changed = threading.Condition()
        self.open = threading.Event()
        self.restarts = 0
        self._thread = threading.Thread(
            target=self._run, args=(backend, namespace, version), daemon=True
        )
        self._thread.start()
        if not self.open.wait(30):
            raise BenchError(f"watch of {namespace} did not open")

    def _run(self, backend: Backend, namespace: str, version: str) -> None:
        """Watch, and when the stream breaks (the API server drops a watcher that falls
        behind, or it stops at the end) watch again from the last version seen."""
        path = path_of(KARGO, "Warehouse", namespace)
        while True:
            params = {"watch": "1", "resourceVersion": version, "timeoutSeconds": "1800"}
            try:
                with (
                    backend.http(read_timeout=None) as http,
                    http.stream("GET", path, params=params) as stream,
                ):
                    self.open.set()
                    for line in stream.iter_lines():
                        if line:
                            version = self._record(json.loads(line)) or version
            except httpx2.HTTPError:
                self.restarts += 1
                if STOPPING.is_set() or self.restarts > 100:
                    return
                time.sleep(0.1)

    def _record(self, event: dict[str, Any]) -> str | None:
        meta = event["object"].get("metadata") or {}
        value = (meta.get("annotations") or {}).get(REFRESH)
        if value is not None:
            with self.changed:
                self.seen.setdefault((meta["name"], value), time.monotonic())
                self.changed.notify_all()
        return meta.get("resourceVersion")

    def wait(self, done: Callable[[dict[tuple[str, str], float]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(self.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"annotations not seen in time ({self.restarts} restarts)")
                self.changed.wait(left)

    def new_since(self, before: set[tuple[str, str]]) -> dict[tuple[str, str], float]:
        with self.changed:
            return {key: t for key, t in self.seen.items() if key not in before}

    def keys(self) -> set[tuple[str, str]]:
        with self.changed:
            return set(self.seen)


@dataclass
class Receiver:
    """``serve --kubernetes`` in a subprocess: start-up time and RSS once ready."""

    backend: Backend
    workdir: Path
    started: float = 0.0
    ready_after: float = 0.0
    rss_mib: float = 0.0
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    source: Path | None = None
    """Another checkout's ``src`` to run (a baseline: it does not publish)."""

    def __enter__(self) -> Receiver:
        admin = free_port()
        log = (self.workdir / f"serve-{self.backend.name}-{self.port}.log").open("wb")
        command = [
            sys.executable, "-m", "kargo_bitbucket", "serve", "--kubernetes",
            "--kubeconfig", str(self.backend.kubeconfig), "--listen", f"{HOST}:{self.port}",
            "--admin-listen", f"{HOST}:{admin}", "--lease-namespace", self.backend.lease_namespace,
        ]  # fmt: skip
        env = clean_env(POD_NAME="bench")
        if self.source is not None:
            command.append("--no-publish")
            env.update(POD_NAME="bench-baseline", PYTHONPATH=str(self.source))
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
        log.close()
        while True:
            if self.process.poll() is not None:
                raise BenchError(f"serve exited {self.process.returncode}; see {log.name}")
            with (
                contextlib.suppress(OSError),
                HTTP.open(f"http://{HOST}:{self.port}/readyz", timeout=2) as answer,
            ):
                if answer.status == 200:
                    break
            if time.monotonic() - self.started > 900:
                raise BenchError("serve not ready in 900 s")
            time.sleep(0.02)
        self.ready_after = time.monotonic() - self.started
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        self.rss_mib = int(rss.split()[1]) / 1024
        return self

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return proc_cpu_seconds(f"/proc/{self.process.pid}/stat")

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            terminate(self.process)


def published(backend: Backend, namespace: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    with backend.http() as http:
        while time.monotonic() < deadline:
            config = http.get(path_of(KARGO, "ProjectConfig", namespace, namespace)).json()
            for item in (config.get("status") or {}).get("webhookReceivers") or []:
                if item.get("url"):
                    return str(item["url"])
            time.sleep(0.05)
    raise BenchError(f"no receiver URL published for {namespace}")


def list_version(backend: Backend, namespace: str) -> str:
    with backend.http() as http:
        listing = http.get(path_of(KARGO, "Warehouse", namespace), params={"limit": "1"})
        return str(listing.json()["metadata"]["resourceVersion"])


# ------------------------------------------------------------------------ the figures


@dataclass
class Figures:
    answer: list[float] = field(default_factory=list)
    last_seen: list[float] = field(default_factory=list)
    fan_requests: list[collections.Counter[tuple[str, str]]] = field(default_factory=list)
    fan_api_cpu: list[float] = field(default_factory=list)
    fan_receiver_cpu: list[float] = field(default_factory=list)
    fan_receiver_cpu_answer: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    one_requests: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    deliveries: int = 0
    startup: dict[int, list[tuple[float, float]]] = field(default_factory=dict)


def fan_out_round(
    backend: Backend,
    receiver: Receiver,
    watch: AnnotationWatch,
    url: str,
    fan: int,
    figures: Figures,
) -> None:
    before = watch.keys()
    mark = backend.mark()
    cpu = backend.cpu_seconds(), receiver.cpu_seconds()
    started = time.monotonic()
    status, body = post(url)
    answered = time.monotonic() - started
    figures.fan_receiver_cpu_answer.append(receiver.cpu_seconds() - cpu[1])
    if status != 200:
        raise BenchError(f"{backend.name}: fan-out push: HTTP {status} {body[:200]!r}")

    def all_new(seen: dict[tuple[str, str], float]) -> bool:
        return len({name for name, _ in seen.keys() - before}) >= fan

    watch.wait(all_new, 120)
    figures.answer.append(answered)
    figures.last_seen.append(max(watch.new_since(before).values()) - started)
    figures.fan_requests.append(settled(backend, mark))
    figures.fan_api_cpu.append(backend.cpu_seconds() - cpu[0])
    figures.fan_receiver_cpu.append(receiver.cpu_seconds() - cpu[1])


def latency_rounds(
    backend: Backend, watch: AnnotationWatch, url: str, count: int, figures: Figures
) -> None:
    mark = backend.mark()
    for _ in range(count):
        before = watch.keys()
        started = time.monotonic()
        status, body = post(url)
        if status != 200:
            raise BenchError(f"{backend.name}: push: HTTP {status} {body[:200]!r}")
        watch.wait(lambda seen, b=before: bool(seen.keys() - b), 30)
        figures.latency.append(max(watch.new_since(before).values()) - started)
    figures.one_requests.update(settled(backend, mark))
    figures.deliveries += count


def at(url: str, receiver: Receiver) -> str:
    """``url`` (published by the receiver that holds the Lease) sent to ``receiver``."""
    path = url.split("/", 3)[3]
    return f"http://{HOST}:{receiver.port}/{path}"


def report(figures: dict[str, Figures], args: argparse.Namespace) -> str:
    lines = [f"machine: {machine()}", ""]
    lines.append("| figure | " + " | ".join(COLUMNS[name] for name in figures) + " |")
    lines.append("|---" * (len(figures) + 1) + "|")

    def both(label: str, value: Callable[[Figures], str]) -> None:
        cells = [value(f) if f.answer or f.startup else "-" for f in figures.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def med_ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.0f} ms" if values else "-"

    both(
        f"push to {args.fan} Warehouses: answered (median of {args.rounds})",
        lambda f: med_ms(f.answer) + f" (max {max(f.answer) * 1000:.0f})",
    )
    both(f"push to {args.fan}: last annotation seen through a watch", lambda f: med_ms(f.last_seen))
    both(
        f"push to {args.fan}: CPU per delivery, API server / receiver (until the answer)",
        lambda f: (
            f"{statistics.median(f.fan_api_cpu):.2f} s / "
            f"{statistics.median(f.fan_receiver_cpu):.2f} s "
            f"({statistics.median(f.fan_receiver_cpu_answer):.2f} s)"
        ),
    )
    both(
        f"push to {args.fan}: receiver requests per delivery",
        lambda f: ", ".join(
            f"{v} {verb} {res}" for (verb, res), v in sorted(f.fan_requests[-1].items())
        ),
    )
    both(
        f"one Warehouse: delivery to annotation, p50 / p99 of {args.deliveries}",
        lambda f: f"{pct(f.latency, 0.5) * 1000:.1f} / {pct(f.latency, 0.99) * 1000:.1f} ms",
    )
    both(
        "one Warehouse: receiver requests per delivery",
        lambda f: ", ".join(
            f"{v / f.deliveries:g} {verb} {res}"
            for (verb, res), v in sorted(f.one_requests.items())
        ),
    )

    def startup(f: Figures, size: int) -> str:
        if size not in f.startup:
            return "-"
        ready = statistics.median(r for r, _ in f.startup[size])
        rss = statistics.median(m for _, m in f.startup[size])
        return f"{ready:.2f} s / {rss:.0f} MiB"

    for size in args.sizes:
        both(
            f"start with {size:,} Warehouses: ready / RSS (median of {args.starts})",
            lambda f, s=size: startup(f, s),
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fan", type=int, default=1000, help="Warehouses one push refreshes")
    parser.add_argument("--rounds", type=int, default=5, help="fan-out pushes per server")
    parser.add_argument("--deliveries", type=int, default=200, help="one-Warehouse pushes")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--starts", type=int, default=3, help="start-ups per size and server")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout's src: its serve alternates with ours"
    )
    args = parser.parse_args()
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        raise SystemExit("KUBEBUILDER_ASSETS is not set (../shared/kube/bin)")
    figures = {"real": Figures(), "fake": Figures()}
    if args.baseline:
        figures.update({"real-baseline": Figures(), "fake-baseline": Figures()})
    with tempfile.TemporaryDirectory(prefix="kube-real-bench-") as tmp:
        workdir = Path(tmp)
        started = time.monotonic()
        backends: list[Backend] = [Real(Path(assets).resolve(), workdir), Fake(workdir)]
        print(f"API servers up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        try:
            for backend in backends:
                objects = project("bench-fan") + [
                    warehouse("bench-fan", f"fan-{i:04d}") for i in range(args.fan)
                ]
                objects += [*project("bench-one"), warehouse("bench-one", "app")]
                started = time.monotonic()
                backend.create(objects)
                print(
                    f"{backend.name}: {len(objects)} objects through the API in "
                    f"{time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                )
            receivers = {b.name: Receiver(b, workdir).__enter__() for b in backends}
            if args.baseline:
                for b in backends:
                    baseline = Receiver(b, workdir, source=args.baseline.resolve())
                    receivers[f"{b.name}-baseline"] = baseline.__enter__()
            runs = [name for name in figures if name in receivers]
            try:
                watches = {
                    b.name: (
                        AnnotationWatch(b, "bench-fan", list_version(b, "bench-fan")),
                        AnnotationWatch(b, "bench-one", list_version(b, "bench-one")),
                    )
                    for b in backends
                }
                urls = {
                    b.name: (published(b, "bench-fan"), published(b, "bench-one")) for b in backends
                }
                by_name = {b.name: b for b in backends}
                for round_ in range(args.rounds):
                    for run in runs if round_ % 2 == 0 else runs[::-1]:
                        backend = by_name[run.removesuffix("-baseline")]
                        fan_out_round(
                            backend,
                            receivers[run],
                            watches[backend.name][0],
                            at(urls[backend.name][0], receivers[run]),
                            args.fan,
                            figures[run],
                        )
                for half in range(2):
                    for run in runs if half == 0 else runs[::-1]:
                        backend = by_name[run.removesuffix("-baseline")]
                        latency_rounds(
                            backend,
                            watches[backend.name][1],
                            at(urls[backend.name][1], receivers[run]),
                            args.deliveries // 2,
                            figures[run],
                        )
            finally:
                for receiver in receivers.values():
                    receiver.__exit__()
            print("fan-out and latency done", file=sys.stderr)
            have = 0
            for size in args.sizes:
                for backend in backends:
                    started = time.monotonic()
                    backend.bulk("bench-bulk", size - have, have)
                    print(
                        f"{backend.name}: {size - have} Warehouses seeded in "
                        f"{time.monotonic() - started:.1f} s",
                        file=sys.stderr,
                    )
                have = size
                for start in range(args.starts):
                    for backend in backends if start % 2 == 0 else backends[::-1]:
                        with Receiver(backend, workdir) as receiver:
                            figures[backend.name].startup.setdefault(size, []).append(
                                (receiver.ready_after, receiver.rss_mib)
                            )
                print(f"start-up at {size} done", file=sys.stderr)
        finally:
            STOPPING.set()
            for backend in backends:
                backend.stop()
    print(report(figures, args))


if __name__ == "__main__":
    main()
