"""``kargo-bitbucket urls``: the published receivers, one tab-separated line each."""

from __future__ import annotations

import argparse
import sys

from kargo_bitbucket.cli.common import connect, from_cluster, kubernetes_flags, state_flag
from kargo_bitbucket.core.receivers import published
from kargo_bitbucket.store.sqlite import StateFile


def register(parser: argparse.ArgumentParser) -> None:
    """Add urls' arguments."""
    state_flag(parser)
    kubernetes_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print namespace (or cluster), receiver name and URL of every published receiver."""
    if args.kubernetes:
        from kargo_bitbucket.store.kubernetes import published_receivers

        for owner, name, url in from_cluster(published_receivers(connect(args))):
            print(f"{owner}\t{name}\t{url}")
        return 0
    state = StateFile(args.state, create=False)
    try:
        lines = [
            "\t".join(entry)
            for kind in ("ClusterConfig", "ProjectConfig")
            for obj in state.get(kind)
            for entry in published(obj)
        ]
    finally:
        state.close()
    for line in lines:
        print(line)
    if not lines:
        print(
            f"kargo-bitbucket: no receiver published in {args.state} yet "
            "(`kargo-bitbucket serve` publishes them)",
            file=sys.stderr,
        )
    return 0
