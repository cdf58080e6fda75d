"""``kargo-bitbucket get KIND [NAME]``: show objects of the state file, Secret data redacted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from kargo_bitbucket.cli.common import (
    KIND_HELP,
    OUTPUT_HELP,
    UsageError,
    kind,
    print_document,
    state_flag,
)
from kargo_bitbucket.cli.delete import namespace_of
from kargo_bitbucket.core.manifests import ACCEPTED_KINDS
from kargo_bitbucket.core.subscriptions import git_subscriptions
from kargo_bitbucket.store.base import REFRESH_ANNOTATION
from kargo_bitbucket.store.state_file import StateFile

REDACTED = "<redacted>"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
"""Where kubectl keeps the manifest it applied: a Secret's whole data."""
DESCRIPTION = f"Show objects of the state file. Kinds: {ACCEPTED_KINDS}."
_COLUMNS = {
    "Warehouse": ["REPOSITORIES", "LAST REFRESH"],
    "Promotion": ["PHASE", "LAST REFRESH"],
    "ProjectConfig": ["RECEIVERS", "READY"],
    "ClusterConfig": ["RECEIVERS", "READY"],
    "Secret": ["KEYS"],
}


def register(parser: argparse.ArgumentParser) -> None:
    """Add get's arguments."""
    parser.add_argument("kind", metavar="KIND", help=KIND_HELP)
    parser.add_argument("name", metavar="NAME", nargs="?", help="one object's name (default: all)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", default=None, help="only this namespace (default: all namespaces)"
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace (the default)"
    )
    parser.add_argument(
        "-o", "--output", choices=["table", "json", "yaml"], default="table", help=OUTPUT_HELP
    )
    state_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print one object, or a List of them, as a table, JSON or YAML."""
    wanted = kind(args.kind)
    state = StateFile(args.state, create=False)
    try:
        namespace = None if args.all_namespaces else args.namespace
        if args.name is not None:
            namespace = namespace_of(state, wanted, args.name, namespace)
        objects = state.get(wanted, namespace, args.name)
    finally:
        state.close()
    objects = [_redact(obj) for obj in objects]
    if args.name is not None and not objects:
        raise UsageError(f"{wanted} {args.name} not found")
    if args.output == "table":
        _print_table(wanted, objects)
        return 0
    document: Any = (
        objects[0]
        if args.name is not None
        else {"apiVersion": "v1", "kind": "List", "items": objects}
    )
    print_document(document, args.output)
    return 0


def _redact(obj: dict[str, Any]) -> dict[str, Any]:
    """A Secret without its values: its data, and the copy of its manifest kubectl keeps."""
    if obj.get("kind") == "Secret":
        for field in ("data", "stringData"):
            if isinstance(obj.get(field), dict):
                obj[field] = dict.fromkeys(obj[field], REDACTED)
        annotations = (obj.get("metadata") or {}).get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            annotations[LAST_APPLIED] = REDACTED
    return obj


def _print_table(kind: str, objects: Sequence[dict[str, Any]]) -> None:
    if not objects:
        print(f"No {kind} objects found.", file=sys.stderr)
        return
    rows = [_row(kind, obj) for obj in objects]
    header = ["NAMESPACE", "NAME", *_COLUMNS[kind]]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "   ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _row(kind: str, obj: dict[str, Any]) -> list[str]:
    meta = obj.get("metadata", {})
    refresh = (meta.get("annotations") or {}).get(REFRESH_ANNOTATION, "-")
    base = [meta.get("namespace") or "-", meta.get("name", "")]
    status = obj.get("status") or {}
    if kind == "Warehouse":
        repos = ",".join(s.repo_url for s in git_subscriptions(obj)) or "-"
        return [*base, repos, refresh]
    if kind == "Promotion":
        return [*base, status.get("phase") or "-", refresh]
    if kind in ("ProjectConfig", "ClusterConfig"):
        conditions = status.get("conditions") or []
        ready = next((str(c.get("status")) for c in conditions if c.get("type") == "Ready"), "-")
        return [*base, str(len(status.get("webhookReceivers") or [])), ready]
    return [*base, ",".join(obj.get("data") or {}) or "-"]
