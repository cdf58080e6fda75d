"""``kargo-bitbucket explain``: print the dry run of a push or pull request event."""

from __future__ import annotations

import argparse

from kargo_bitbucket.cli.common import (
    OUTPUT_HELP,
    UsageError,
    connect,
    from_cluster,
    kubernetes_flags,
    print_document,
    pushed_refs,
    qualified,
    state_flag,
)
from kargo_bitbucket.config import DEFAULT_SYSTEM_NAMESPACE
from kargo_bitbucket.core.identity import repository_identity
from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.dry_run import Explanation, explain_pull_request, explain_push
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.state_file import StateFile, load_indexes


def register(parser: argparse.ArgumentParser) -> None:
    """Add explain's arguments."""
    parser.add_argument("--repo", metavar="URL", help="pushed repository URL")
    parser.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="REF",
        help="pushed branch name or full refs/heads/… / refs/tags/… ref "
        "(repeatable; none = refs unknown)",
    )
    parser.add_argument("--pr", metavar="URL", help="merged or declined pull request URL")
    parser.add_argument(
        "-n",
        "--namespace",
        help="the receiver's project (default: all, as a ClusterConfig receiver sees them)",
    )
    parser.add_argument(
        "-o", "--output", choices=["table", "json", "yaml"], default="table", help=OUTPUT_HELP
    )
    state_flag(parser)
    kubernetes_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the objects, explain the event, print one line per candidate."""
    if args.repo and args.pr:
        raise UsageError("explain takes --repo (a push) or --pr (a pull request event), not both")
    if not args.repo and not args.pr:
        raise UsageError("explain needs --repo (a push) or --pr (a pull request event)")
    if args.pr and args.ref:
        raise UsageError("--ref goes with --repo")
    pushed_refs(args.ref)
    host, _, path = repository_identity(args.repo or "").partition("/")
    if args.repo and not (host and path):
        raise UsageError(
            f"--repo {args.repo!r}: not a repository URL "
            "(https://host/owner/repo, ssh://git@host/owner/repo or git@host:owner/repo)"
        )
    indexes = _load(args)
    if args.repo:
        explanation = explain_push(indexes, args.repo, args.ref, args.namespace)
    else:
        explanation = explain_pull_request(indexes, args.pr, args.namespace)
    if args.output != "table":
        print_document(
            [
                {
                    "kind": v.kind,
                    "namespace": v.namespace,
                    "name": v.name,
                    "refresh": v.refresh,
                    "reason": v.reason,
                    "warnings": list(v.warnings),
                    "notes": list(explanation.notes.get((v.namespace, v.name), ())),
                }
                for v in explanation.verdicts
            ],
            args.output,
        )
        return 0
    _print(explanation, args.namespace)
    return 0


def _load(args: argparse.Namespace) -> Indexes:
    indexes = Indexes(BaseURL.parse("http://explain.invalid"), DEFAULT_SYSTEM_NAMESPACE)
    if args.kubernetes:
        from kargo_bitbucket.store.kubernetes import load_indexes as load_cluster

        from_cluster(load_cluster(connect(args), indexes))
        return indexes
    state = StateFile(args.state, create=False)
    try:
        load_indexes(state, indexes)
    finally:
        state.close()
    return indexes


def _print(explanation: Explanation, namespace: str | None) -> None:
    if not explanation.verdicts:
        print(explanation.empty)
    for v in explanation.verdicts:
        verb = "would refresh" if v.refresh else "would not refresh"
        print(f"{verb:<17} {v.kind} {qualified(v.namespace, v.name)}: {v.reason}")
        for warning in v.warnings:
            print(f"  warning: {warning}")
        for note in explanation.notes.get((v.namespace, v.name), ()):
            print(f"  note: {note}")
    if explanation.would_refresh:
        print(
            "If a real event did not refresh one marked 'would refresh', look it up with "
            "`kargo-bitbucket deliveries`; if it is not there, it never reached this "
            "receiver: `kargo-bitbucket hooks check` shows each repository's webhook."
        )
        if namespace is None:
            print(
                "Without -n this covers every namespace, as a ClusterConfig receiver does; "
                "a ProjectConfig receiver refreshes only its own namespace (-n PROJECT)."
            )
