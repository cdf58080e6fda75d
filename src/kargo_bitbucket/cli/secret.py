"""``kargo-bitbucket secret``: a new random webhook secret and its Secret manifest."""

from __future__ import annotations

import argparse
import secrets
import sys

import yaml

from kargo_bitbucket.cli.common import UsageError
from kargo_bitbucket.core.manifests.names import dns_label, dns_subdomain

EXAMPLE_NAMESPACE = "kargo-demo"


def register(parser: argparse.ArgumentParser) -> None:
    """Add secret's arguments."""
    parser.add_argument(
        "--name", default="bitbucket-webhook", help="Secret name (default bitbucket-webhook)"
    )
    parser.add_argument(
        "-n",
        "--namespace",
        help=f"Secret namespace: the Project's (default {EXAMPLE_NAMESPACE}, the example's)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the secret as a comment, then a manifest ``apply`` accepts."""
    if args.namespace is None:
        args.namespace = EXAMPLE_NAMESPACE
        print(
            f"note: no -n: the Secret is for namespace {EXAMPLE_NAMESPACE} (the example "
            "project); pass -n with your Project's namespace",
            file=sys.stderr,
        )
    for flag, problem in (
        ("--name", dns_subdomain(args.name)),
        ("-n", dns_label(args.namespace)),
    ):
        if problem:
            raise UsageError(f"{flag}: {problem}")
    value = secrets.token_urlsafe(32)
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": args.name,
            "namespace": args.namespace,
            "labels": {"kargo.akuity.io/cred-type": "generic"},
        },
        "stringData": {"secret": value},
    }
    print(f"# Paste this secret into the Bitbucket webhook's Secret field: {value}")
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
    return 0
