"""``kargo-bitbucket lint``: what the receiver reads differently from what the objects say."""

from __future__ import annotations

import argparse

from kargo_bitbucket.cli.common import kubernetes_flags, read_indexes, state_flag
from kargo_bitbucket.core.text import printable
from kargo_bitbucket.lint import findings

DESCRIPTION = (
    "List what the receiver reads differently from what the objects say, one line each: the "
    "fields of Warehouses' Git subscriptions it does not know (a misspelt brnach:, which "
    "Kargo ignores and a cluster keeps) or cannot evaluate (the Warehouse is then refreshed "
    "on every push to its repository), the Git subscriptions without a repoURL (no push "
    "reaches them), the receivers a ProjectConfig or ClusterConfig left unpublished "
    "(its Ready condition, as serve last wrote it), and the configs Kargo ignores (a "
    "ProjectConfig not named after its namespace), whose receivers route nowhere. Exit 1 "
    "when there is any."
)


def register(parser: argparse.ArgumentParser) -> None:
    """Add lint's arguments."""
    parser.add_argument(
        "-n",
        "--namespace",
        help="only this namespace's Warehouses and receivers, and the ClusterConfig's, which "
        "serve every namespace (default: all)",
    )
    state_flag(parser)
    kubernetes_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per finding; say so when there is none."""
    indexes = read_indexes(args)
    lines = findings(indexes, args.namespace)
    for line in lines:
        print(printable(line))  # a Ready message is whatever the status says
    if lines:
        return 1
    count = len(indexes.warehouses(args.namespace))
    print(f"nothing to report: {count} Warehouse(s) read as written, no receiver left out")
    return 0
