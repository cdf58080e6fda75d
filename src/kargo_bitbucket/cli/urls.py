"""``kargo-bitbucket urls``: the published receivers, one tab-separated line each."""

from __future__ import annotations

import argparse
import sys

from kargo_bitbucket.cli.common import connect, from_cluster, kubernetes_flags, state_flag
from kargo_bitbucket.core.receivers import publications
from kargo_bitbucket.store.state_file import StateFile


def register(parser: argparse.ArgumentParser) -> None:
    """Add urls' arguments."""
    state_flag(parser)
    kubernetes_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print namespace (or cluster), receiver name and URL of every published receiver;
    on stderr, why a ProjectConfig or ClusterConfig left a receiver out (its ``Ready``
    condition), so that a missing line does not send people looking for the wrong cause."""
    if args.kubernetes:
        from kargo_bitbucket.store.kubernetes import published_receivers

        lines, problems = from_cluster(published_receivers(connect(args)))
        where = "the cluster"
    else:
        state = StateFile(args.state, create=False)
        try:
            configs = [*state.get("ClusterConfig"), *state.get("ProjectConfig")]
        finally:
            state.close()
        lines, problems = publications(configs)
        where = str(args.state)
    for owner, name, url in lines:
        print(f"{owner}\t{name}\t{url}")
    for owner, problem in problems:
        print(f"kargo-bitbucket: {owner}: not published: {problem}", file=sys.stderr)
    if not lines and not problems:
        print(
            f"kargo-bitbucket: no receiver published in {where} yet "
            "(`kargo-bitbucket serve` publishes them)",
            file=sys.stderr,
        )
    return 0
