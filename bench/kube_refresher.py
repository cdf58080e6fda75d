"""Receiver CPU per refresh PATCH and Event against a real kube-apiserver, against a floor.

Starts etcd + kube-apiserver from ``$KUBEBUILDER_ASSETS`` (tests/kube/apiserver.py), creates
``--fan`` Warehouses, then alternates rounds of: ``wire`` (``Refresher.refresh`` over the lean
path ``open_wire`` gives, as ``serve`` runs it), ``lightkube`` (the same Refresher through
lightkube's httpx client: the fallback path, and what every PATCH went through before wire.py)
and ``floor`` (the same merge PATCHes as pre-built bytes over 64 raw keep-alive TLS
connections, httptools parsing, nothing else: what any Python client must cost at least, and
the wall time the API server itself needs for them). The Refresher rounds write one Event per
Warehouse after the answer; their CPU and time are measured apart. CPU is this process's
``time.process_time``; the API server runs in its own processes. Everything is on 127.0.0.1.

``KUBEBUILDER_ASSETS=../shared/kube/bin .venv/bin/python bench/kube_refresher.py``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httptools

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from tests.kube.apiserver import KubeApiServer  # noqa: E402

from kargo_bitbucket.store.base import Target  # noqa: E402
from kargo_bitbucket.store.kubernetes.client import USER_AGENT, connect  # noqa: E402
from kargo_bitbucket.store.kubernetes.refresher import PATCH_CONCURRENCY, Refresher  # noqa: E402
from kargo_bitbucket.store.kubernetes.wire import open_wire  # noqa: E402

KARGO = "kargo.akuity.io/v1alpha1"
NAMESPACE = "fan"


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self.answer is not None
        self.answer.set_result(self.parser.get_status_code())

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.answer


async def floor_round(server: KubeApiServer, names: list[str]) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context(cafile=str(server.admin.ca_file))
    connections = [
        (await loop.create_connection(Connection, "127.0.0.1", server.port, ssl=context))[1]
        for _ in range(PATCH_CONCURRENCY)
    ]
    body = b'{"metadata":{"annotations":{"kargo.akuity.io/refresh":"%d"}}}' % time.time_ns()
    head = (
        f"Host: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {server.admin.token}\r\n"
        f"User-Agent: {USER_AGENT}\r\nContent-Type: application/merge-patch+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    queue = list(names)

    async def worker(connection: Connection) -> None:
        while queue:
            path = f"/apis/{KARGO}/namespaces/{NAMESPACE}/warehouses/{queue.pop()}"
            line = f"PATCH {path}?fieldManager=kargo-bitbucket HTTP/1.1\r\n".encode()
            status = await connection.send(line + head + body)
            assert status == 200, status

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker(c) for c in connections))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    for connection in connections:
        assert connection.transport is not None
        connection.transport.close()
    return cpu, wall


Round = tuple[float, float, float, float]
"""CPU and wall seconds of the PATCHes, then of the Events (0, 0 for the floor)."""


async def refresher_round(kubeconfig: Path, names: list[str], *, lean: bool) -> Round:
    client = connect(str(kubeconfig), None)
    wire = open_wire(client.config, USER_AGENT) if lean else None
    assert (wire is not None) is lean
    refresher = Refresher(client, "bench", wire=wire)
    await refresher.refresh([Target("Warehouse", NAMESPACE, names[0])], "warm-up")
    targets = [Target("Warehouse", NAMESPACE, name) for name in names]
    cpu, wall = time.process_time(), time.monotonic()
    note = "Bitbucket repo:push (delivery bench) to https://bitbucket.org/acme/app: {}".format
    reason = 'branch "main" matches subscription branch "main"'
    result = await refresher.refresh(targets, str(time.time_ns()), lambda target: note(reason))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    assert len(result.refreshed) == len(names), result
    events_cpu, events_wall = time.process_time(), time.monotonic()
    while refresher._event_tasks:
        await asyncio.gather(*refresher._event_tasks)
    events_cpu, events_wall = time.process_time() - events_cpu, time.monotonic() - events_wall
    await refresher.close()
    await client.close()
    return cpu, wall, events_cpu, events_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fan", type=int, default=1000, help="Warehouses per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each variant")
    args = parser.parse_args()
    server = KubeApiServer(Path(os.environ["KUBEBUILDER_ASSETS"]).resolve()).start()
    try:
        kube = server.admin
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        names = [f"w{i:04d}" for i in range(args.fan)]
        subscription = {"git": {"repoURL": "https://bitbucket.org/acme/app", "branch": "main"}}
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda name: kube.create(
                        {
                            "apiVersion": KARGO,
                            "kind": "Warehouse",
                            "metadata": {"name": name, "namespace": NAMESPACE},
                            "spec": {"subscriptions": [subscription]},
                        }
                    ),
                    names,
                )
            )
        kubeconfig = kube.kubeconfig(server.workdir / "kubeconfig", namespace=NAMESPACE)
        figures: dict[str, list[Round]] = {"wire": [], "lightkube": [], "floor": []}
        order = list(figures)
        for round_ in range(args.rounds):
            for variant in order[round_ % 3 :] + order[: round_ % 3]:
                if variant == "floor":
                    figure: Round = (*asyncio.run(floor_round(server, names)), 0.0, 0.0)
                else:
                    lean = variant == "wire"
                    figure = asyncio.run(refresher_round(kubeconfig, names, lean=lean))
                figures[variant].append(figure)
                print(
                    f"round {round_} {variant}: {1000 * figure[0] / args.fan:.3f} ms CPU per "
                    f"PATCH, {figure[1]:.2f} s; {1000 * figure[2] / args.fan:.3f} ms per Event, "
                    f"{figure[3]:.2f} s; load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                )
        for variant, rounds in figures.items():
            per = [statistics.median(r[i] for r in rounds) for i in range(4)]
            print(
                f"{variant}: median {per[0] * 1000 / args.fan:.3f} ms receiver CPU per PATCH, "
                f"{per[1]:.2f} s for {args.fan}; Events {per[2] * 1000 / args.fan:.3f} ms CPU "
                f"each, {per[3]:.2f} s"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
