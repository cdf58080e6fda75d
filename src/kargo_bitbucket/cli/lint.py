"""``kargo-bitbucket lint``: what the receiver reads differently from what the objects say."""

from __future__ import annotations

import argparse

from kargo_bitbucket.cli.common import (
    connect,
    from_cluster,
    kubernetes_flags,
    state_flag,
    system_namespace_flag,
)
from kargo_bitbucket.core.text import printable
from kargo_bitbucket.inventory import load_cluster, load_state
from kargo_bitbucket.lint import findings

DESCRIPTION = (
    "List what the receiver reads differently from what the objects say, one line each: the "
    "fields of Warehouses' Git subscriptions it does not know (a misspelt brnach:, which "
    "Kargo ignores and a cluster keeps) or cannot evaluate (the Warehouse is then refreshed "
    "on every push to its repository), the Git subscriptions without a repoURL (no push "
    "reaches them), the receivers a ProjectConfig or ClusterConfig leaves unpublished (a "
    "missing Secret or key, a path claimed twice: resolved now, from the Secrets they "
    "name), and the configs Kargo ignores (a ProjectConfig not named after its namespace), "
    "whose receivers route nowhere. Exit 1 when there is any."
)


def register(parser: argparse.ArgumentParser) -> None:
    """Add lint's arguments."""
    parser.add_argument(
        "-n",
        "--namespace",
        help="only this namespace's Warehouses and receivers, and the ClusterConfig's, which "
        "serve every namespace (default: all)",
    )
    system_namespace_flag(parser)
    state_flag(parser)
    kubernetes_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per finding; say so when there is none."""
    if args.kubernetes:
        load = load_cluster(lambda: connect(args), args.system_namespace, None)
        indexes, _ = from_cluster(load)
    else:
        indexes = load_state(args.state, args.system_namespace)
    lines = findings(indexes, args.namespace)
    for line in lines:
        print(printable(line))  # names in a config are whatever it says
    if lines:
        return 1
    count = len(indexes.warehouses(args.namespace))
    print(f"nothing to report: {count} Warehouse(s) read as written, no receiver left out")
    return 0
