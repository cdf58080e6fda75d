"""``kargo-bitbucket delete KIND NAME`` or ``delete -f PATH``: remove objects from the state."""

from __future__ import annotations

import argparse

from kargo_bitbucket.cli.common import (
    KIND_HELP,
    UsageError,
    files_flag,
    kind,
    load_manifests,
    qualified,
    state_flag,
)
from kargo_bitbucket.store.state_file import StateFile


def register(parser: argparse.ArgumentParser) -> None:
    """Add delete's arguments."""
    parser.add_argument("kind", metavar="KIND", nargs="?", help=KIND_HELP)
    parser.add_argument("name", metavar="NAME", nargs="?", help="object name")
    files_flag(parser, "delete the objects these manifests name, like kubectl")
    parser.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="the object's namespace (default: the only one holding that name)",
    )
    state_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Delete the named object, or every object the files name."""
    if args.files:
        if args.kind or args.namespace:
            raise UsageError("delete takes KIND NAME or -f PATH, not both")
        targets = [(r.kind, r.namespace, r.name) for r in load_manifests(args.files)]
        if not targets:
            raise UsageError("no objects to delete")
    elif args.kind is None or args.name is None:
        raise UsageError("delete needs KIND NAME, or -f PATH")
    else:
        targets = [(kind(args.kind), args.namespace, args.name)]
    state = StateFile(args.state, create=False)
    missing = []
    try:
        for target_kind, namespace, name in targets:
            where = namespace_of(state, target_kind, name, namespace)
            if state.delete(target_kind, where, name):
                print(f"{target_kind.lower()}/{qualified(where, name)} deleted")
            else:
                missing.append(f"{target_kind} {qualified(where, name)}")
    finally:
        state.close()
    if missing:
        raise UsageError("; ".join(f"{what} not found" for what in missing))
    return 0


def namespace_of(state: StateFile, kind: str, name: str, namespace: str | None) -> str:
    """The namespace of a named object: as given, or the only one holding that name."""
    if kind == "ClusterConfig":
        return ""
    if namespace is not None:
        return namespace
    found = {str(obj["metadata"].get("namespace", "")) for obj in state.get(kind, None, name)}
    if len(found) > 1:
        raise UsageError(
            f"{kind} {name} exists in several namespaces "
            f"({', '.join(sorted(found))}); pick one with -n"
        )
    if not found:
        raise UsageError(f"{kind} {name} not found")
    return found.pop()
