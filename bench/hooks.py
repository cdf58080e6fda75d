"""``hooks check`` against a slow Bitbucket: how much the concurrent listing saves.

The fake Bitbucket of the test suite (loopback) holds ``--repositories`` Cloud
repositories and holds each answer back ``--latency`` seconds, a WAN round trip to
api.bitbucket.org; one survey (every repository's hooks listed and compared) is timed
with one call in flight and with ``hooks.CONCURRENCY``, alternating, and the medians and
their ratio are printed.

Run: ``.venv/bin/python bench/hooks.py [--repositories 200] [--latency 0.1] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hooks.fake_bitbucket import FakeBitbucket, running

from kargo_bitbucket import hooks
from kargo_bitbucket.core.webhooks import Receiver
from kargo_bitbucket.credentials import Credential, Credentials
from kargo_bitbucket.inventory import Inventory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    concurrent = hooks.CONCURRENCY
    fake = FakeBitbucket(cloud=True, page_size=100, latency=args.latency)
    with running(fake):
        for i in range(args.repositories):
            fake.add_repository("acme", f"r{i}")
        found = Inventory(
            receivers=[Receiver("demo", "bb", "https://k.example.com/x", b"s", "demo")],
            warehouses=[
                ("demo", f"w{i}", f"https://bitbucket.org/acme/r{i}")
                for i in range(args.repositories)
            ],
        )
        credentials = Credentials({"bitbucket.org": Credential("t0ken", api_url=fake.url)})

        async def survey() -> None:
            result = await hooks.survey(
                found, credentials, {}, scope="repository", mirrors=False, prune=False
            )
            for client in result.clients.values():
                await client.close()

        times: dict[int, list[float]] = {1: [], concurrent: []}
        for round_ in range(args.rounds):
            order = (1, concurrent) if round_ % 2 == 0 else (concurrent, 1)
            for limit in order:
                hooks.CONCURRENCY = limit
                started = time.monotonic()
                asyncio.run(survey())
                times[limit].append(time.monotonic() - started)
    for limit, seconds in times.items():
        rounded = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"{limit} in flight: median {statistics.median(seconds):.2f} s ({rounded})")
    ratio = statistics.median(times[1]) / statistics.median(times[concurrent])
    print(f"{args.repositories} repositories, {args.latency * 1000:.0f} ms per call: {ratio:.1f}x")


if __name__ == "__main__":
    main()
