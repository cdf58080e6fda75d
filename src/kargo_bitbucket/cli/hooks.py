"""``kargo-bitbucket hooks check|sync``: read the receivers and repositories, then ``hooks``."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from kargo_bitbucket import hooks
from kargo_bitbucket.cli.common import (
    OUTPUT_HELP,
    CommandParser,
    UsageError,
    connect,
    from_cluster,
    http_url,
    kubernetes_flags,
    state_flag,
    system_namespace_flag,
)
from kargo_bitbucket.config import env
from kargo_bitbucket.core.receivers import BaseURL, BaseURLError
from kargo_bitbucket.credentials import Credentials, parse, read_file
from kargo_bitbucket.inventory import inventory, load_cluster, load_state

if TYPE_CHECKING:
    from lightkube import AsyncClient


def register(parser: argparse.ArgumentParser, parents: list[CommandParser]) -> None:
    """Add ``check`` and ``sync`` with their arguments."""
    commands = parser.add_subparsers(
        title="hooks commands", required=True, metavar="COMMAND", parser_class=CommandParser
    )
    for name, what in (
        ("check", "one line per repository: ok or what is off (exit 1 when anything is)"),
        ("sync", "show the webhooks to create, update or delete (--apply does it)"),
    ):
        command = commands.add_parser(name, parents=parents, help=what, description=what)
        command.set_defaults(run=run, hooks_command=name)
        _flags(command)
        if name == "sync":
            command.add_argument(
                "--apply", action="store_true", help="make the changes (default: dry run)"
            )
            command.add_argument(
                "--prune",
                action="store_true",
                help="also delete our hooks in the workspace's/project's repositories "
                "that no Warehouse or Promotion needs any more",
            )


def _flags(parser: argparse.ArgumentParser) -> None:
    state_flag(parser)
    kubernetes_flags(parser)
    parser.add_argument(
        "--credentials",
        default=env("CREDENTIALS"),
        metavar="FILE",
        help="YAML/JSON file mapping Bitbucket hosts to API tokens "
        "(env KARGO_BITBUCKET_CREDENTIALS; see docs/bitbucket-setup.md)",
    )
    parser.add_argument(
        "--credentials-secret",
        default=f"{os.environ.get('POD_NAMESPACE') or 'kargo'}/kargo-bitbucket-credentials",
        metavar="NAMESPACE/NAME",
        help="Kubernetes mode: Secret whose key credentials.yaml holds that document "
        "(default $POD_NAMESPACE or kargo, /kargo-bitbucket-credentials)",
    )
    parser.add_argument(
        "--api-url",
        action="append",
        default=[],
        metavar="HOST=URL",
        help="REST API base URL of a Bitbucket host, where it is not the default (repeatable)",
    )
    parser.add_argument(
        "--base-url",
        default=env("BASE_URL"),
        metavar="URL",
        help="the server's public base URL (env KARGO_BITBUCKET_BASE_URL; "
        "default: taken from the receiver URLs published in status)",
    )
    parser.add_argument(
        "--scope",
        choices=["repository", "workspace"],
        default="repository",
        help="one hook per repository (default), or one per Cloud workspace / Data Center project",
    )
    parser.add_argument(
        "--mirrors",
        action="store_true",
        help="Data Center hooks also get mirror:repo_synchronized (repositories behind mirrors)",
    )
    system_namespace_flag(parser)
    parser.add_argument(
        "-o", "--output", choices=["table", "json"], default="table", help=OUTPUT_HELP
    )


def run(args: argparse.Namespace) -> int:
    """Read the inventory and credentials the flags name, then check or sync."""
    base = _base_url(args.base_url)
    api_urls = _api_urls(args.api_url)
    document = None
    if args.kubernetes:

        def client() -> AsyncClient:
            return connect(args)

        secret_ref = None if args.credentials else _secret_ref(args.credentials_secret)
        indexes, document = from_cluster(load_cluster(client, args.system_namespace, secret_ref))
    else:
        indexes = load_state(args.state, args.system_namespace)
    if args.credentials:
        credentials = read_file(args.credentials)
    elif document is not None:
        credentials = parse(document, f"Secret {args.credentials_secret}")
    else:
        credentials = Credentials()
    return hooks.run(
        inventory(indexes, base),
        credentials,
        api_urls,
        command=args.hooks_command,
        output=args.output,
        scope=args.scope,
        mirrors=args.mirrors,
        apply_changes=args.hooks_command == "sync" and args.apply,
        prune=args.hooks_command == "sync" and args.prune,
    )


def _base_url(text: str | None) -> BaseURL | None:
    if not text:
        return None
    try:
        return BaseURL.parse(text)
    except BaseURLError as error:
        raise UsageError(f"--base-url: {error}") from error


def _api_urls(pairs: list[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        host, sep, url = pair.partition("=")
        if not sep or not host or not url.startswith(("http://", "https://")):
            raise UsageError(f"--api-url {pair!r}: expected HOST=http(s)://URL")
        found[host] = http_url("--api-url", url)
    return found


def _secret_ref(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name:
        raise UsageError(f"--credentials-secret {text!r}: expected NAMESPACE/NAME")
    return namespace, name
