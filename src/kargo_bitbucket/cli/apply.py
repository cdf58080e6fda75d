"""``kargo-bitbucket apply -f PATH``: create or update objects in the state file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kargo_bitbucket.cli.common import (
    UsageError,
    files_flag,
    load_manifests,
    state_flag,
    validate_flag,
)
from kargo_bitbucket.config import DEFAULT_SYSTEM_NAMESPACE
from kargo_bitbucket.core.decision import WarehouseEntry
from kargo_bitbucket.core.manifests import Resource
from kargo_bitbucket.inventory import load_state
from kargo_bitbucket.store.state_file import StateFile


def register(parser: argparse.ArgumentParser) -> None:
    """Add apply's arguments."""
    files_flag(parser, "the manifests to apply", required=True)
    validate_flag(parser)
    state_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Apply every object of the files, or none if any is invalid."""
    resources = load_manifests(args.files, args.validate)
    if not resources:
        raise UsageError("no objects to apply")
    state = StateFile(args.state)
    try:
        apply_to(state, resources)
    finally:
        state.close()
    _warn_unpublished(args.state, resources)
    return 0


def apply_to(state: StateFile, resources: Sequence[Resource]) -> None:
    """Store ``resources`` and print one ``kind/namespace/name outcome`` line each."""
    _warn_unevaluable(resources)
    for resource, outcome in state.apply(resources):
        where = f"{resource.namespace}/" if resource.namespace else ""
        print(f"{resource.kind.lower()}/{where}{resource.name} {outcome}")


def _warn_unevaluable(resources: Sequence[Resource]) -> None:
    for resource in resources:
        for warning in resource.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if resource.kind == "Warehouse":
            for line in WarehouseEntry.from_body(resource.body).unevaluable:
                print(f"warning: {line}", file=sys.stderr)


def _warn_unpublished(path: Path, resources: Sequence[Resource]) -> None:
    """Say of each ProjectConfig applied which receivers ``serve`` would leave out (their
    Secret or its key is not in the state file): the apply that caused it was silent, and
    only ``serve``'s log or ``lint`` said so later. A ClusterConfig's Secrets are left to
    those two: their namespace is ``serve``'s ``--system-namespace``."""
    applied = {(r.namespace, r.name) for r in resources if r.kind == "ProjectConfig"}
    if not applied:
        return
    statuses = load_state(path, DEFAULT_SYSTEM_NAMESPACE).resolution.statuses
    for owner, status in sorted(statuses.items(), key=lambda item: item[0].namespace):
        ours = owner.kind == "ProjectConfig" and (owner.namespace, owner.name) in applied
        if ours and status.problems:
            print(f"warning: {owner.unpublished(status.problems)}", file=sys.stderr)
