"""``kargo-bitbucket apply -f PATH``: create or update objects in the state file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kargo_bitbucket.cli.common import (
    UsageError,
    files_flag,
    load_manifests,
    state_flag,
    validate_flag,
)
from kargo_bitbucket.core.decision import WarehouseEntry
from kargo_bitbucket.core.manifests import Resource
from kargo_bitbucket.store.sqlite import StateFile


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
