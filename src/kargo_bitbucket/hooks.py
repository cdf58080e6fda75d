"""``hooks check`` and ``hooks sync``: read the store, ask Bitbucket, print, change our hooks.

The receivers (URL and secret), the Warehouses' repositories and the Running
Promotions' PRs come from an ``Inventory`` (the state file's or the cluster's, read by
the command line); ``core.webhooks`` decides what each repository needs; this module only
fetches, prints and, when asked, creates, updates or deletes the hooks marked as ours.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from kargo_bitbucket.bitbucket_api import BitbucketClient, BitbucketError
from kargo_bitbucket.core.text import printable
from kargo_bitbucket.core.webhooks import (
    CLOUD,
    CREATE,
    DELETE,
    MANUAL,
    REPOSITORY,
    UPDATE,
    Finding,
    Hook,
    Place,
    Plan,
    compare,
    desired_hook,
    is_local,
    plan,
    prune_places,
)
from kargo_bitbucket.credentials import Credentials
from kargo_bitbucket.inventory import Inventory

T = TypeVar("T")

CONCURRENCY = 8
"""Bitbucket calls in flight at once: at 100 ms a call, 200 repositories are checked in
3.1 s instead of 21.1 s one by one (bench/hooks.py, medians of 4 alternating rounds),
without a connection per repository or a burst into Cloud's hourly rate limit."""

VERBS = {
    CREATE: ("would create", "created"),
    UPDATE: ("would update", "updated"),
    DELETE: ("would delete", "deleted"),
}


@dataclass(slots=True)
class Survey:
    """The plan, what Bitbucket has, and the findings, with a client per server."""

    plan: Plan
    findings: list[Finding]
    clients: dict[str, BitbucketClient]
    warnings: list[str] = field(default_factory=list)


async def survey(
    found: Inventory,
    credentials: Credentials,
    api_urls: Mapping[str, str],
    *,
    scope: str,
    mirrors: bool,
    prune: bool,
) -> Survey:
    """List the hooks at every place the plan names (and, with ``prune``, their neighbours)."""
    wanted = plan(
        found.receivers,
        found.warehouses,
        found.pull_requests,
        scope=scope,
        mirrors=mirrors,
        servers=credentials.servers(),
    )
    clients: dict[str, BitbucketClient] = {}
    local: set[str] = set()  # servers whose API answers on this machine
    missing: dict[str, str] = {}
    for server in sorted({w.place.server for w in wanted.wanted}):
        credential = credentials.lookup(server)
        if credential is None:
            missing[server] = f"no credentials for {server} (see --credentials)"
            continue
        url = credentials.api_url(server, api_urls)
        clients[server] = BitbucketClient(url, credential, cloud=server == CLOUD)
        if is_local(urlsplit(url).hostname or ""):
            local.add(server)
    limit = asyncio.Semaphore(CONCURRENCY)
    warnings: list[str] = []
    places = sorted({w.place for w in wanted.wanted})
    if prune and scope == REPOSITORY:
        containers = sorted({p.container for p in places if p.server in clients})
        listed = await _gather(limit, [_repositories(clients[c.server], c) for c in containers])
        repositories: dict[Place, list[str]] = {}
        for container, result in zip(containers, listed, strict=True):
            if isinstance(result, str):
                warnings.append(f"cannot list the repositories of {container.label}: {result}")
            else:
                repositories[container] = result
        places += prune_places(wanted.wanted, repositories)
    existing: dict[Place, Sequence[Hook] | str] = {
        p: missing[p.server] for p in places if p.server in missing
    }
    asked = [p for p in places if p.server in clients]
    listed_hooks = await _gather(limit, [_hooks(clients[p.server], p) for p in asked])
    existing.update(zip(asked, listed_hooks, strict=True))
    findings = compare(wanted.wanted, existing, prune=prune, local_servers=local)
    return Survey(wanted, findings, clients, warnings)


async def _hooks(client: BitbucketClient, place: Place) -> list[Hook] | str:
    try:
        return await client.hooks(place)
    except BitbucketError as error:
        return str(error)


async def _repositories(client: BitbucketClient, container: Place) -> list[str] | str:
    try:
        return await client.repositories(container)
    except BitbucketError as error:
        return str(error)


async def _gather(limit: asyncio.Semaphore, calls: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``calls`` at most ``CONCURRENCY`` at a time, results in order."""

    async def one(call: Awaitable[T]) -> T:
        async with limit:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


async def apply(found: Survey) -> list[str]:
    """Carry out every create, update and delete; the outcome of each finding, in order."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def act(finding: Finding) -> str:
        if finding.action not in VERBS:
            return ""
        client = found.clients[finding.place.server]
        try:
            if finding.action == DELETE:
                await client.delete(finding.place, finding.hook_id)
            else:
                want = finding.wanted
                assert want is not None  # create and update always carry their Wanted
                hook, secret = desired_hook(want), want.receiver.secret
                if finding.action == CREATE:
                    await client.create(finding.place, hook, secret)
                else:
                    await client.update(finding.place, finding.hook_id, hook, secret)
        except BitbucketError as error:
            return f"failed: {error}"
        return VERBS[finding.action][1]

    return await _gather(limit, [act(f) for f in found.findings])


# Printing
def _print_rows(rows: Sequence[tuple[str, Finding, str]]) -> None:
    """One aligned line per (status or verb, finding, detail), columns two spaces apart."""
    cells = [
        tuple(
            printable(cell)  # Bitbucket's answers are quoted in details: no escapes reach a tty
            for cell in (first, f.place.label, f.marker, f"({detail})" if detail else "")
        )
        for first, f, detail in rows
    ]
    widths = [max((len(c[i]) for c in cells), default=0) for i in range(3)]
    for row in cells:
        print(
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, [*widths, 0], strict=True)
            ).rstrip()
        )


def _json(finding: Finding, outcome: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "server": finding.place.server,
        "owner": finding.place.owner,
        "repository": finding.place.slug or None,
        "receiver": finding.marker.removeprefix("kargo "),
        "status": finding.status,
        "problems": list(finding.problems),
        "action": finding.action,
        "hookId": finding.hook_id or None,
        "detail": finding.detail or None,
        "servedObjects": list(finding.wanted.sources) if finding.wanted else [],
    }
    if outcome is not None:
        entry["result"] = outcome
    return entry


def _report_notes(found: Inventory, result: Survey) -> None:
    for problem in found.problems:
        print(f"kargo-bitbucket: {printable(problem)}", file=sys.stderr)
    for warning in result.warnings:
        print(f"kargo-bitbucket: {printable(warning)}", file=sys.stderr)
    for skipped in result.plan.skipped:
        print(f"note: not a Bitbucket repository, skipped: {printable(skipped)}", file=sys.stderr)
    if not found.receivers and not found.problems:
        print("kargo-bitbucket: no Bitbucket receiver found", file=sys.stderr)
    elif found.receivers and not result.plan.wanted:
        print("note: no object a receiver serves names a Bitbucket repository", file=sys.stderr)


def check(found: Inventory, result: Survey, output: str) -> int:
    """Print one line per place and receiver; 1 when anything is off."""
    if output == "json":
        data = [_json(f) for f in result.findings]
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_rows([(f.status, f, f.detail) for f in result.findings])
    _report_notes(found, result)
    off = any(f.problems for f in result.findings)
    return 1 if off or found.problems or not found.receivers else 0


def sync(found: Inventory, result: Survey, output: str, outcomes: list[str] | None) -> int:
    """Print what sync would do (``outcomes`` None) or did; 1 when something is left off."""
    dry = outcomes is None
    results = outcomes if outcomes is not None else [""] * len(result.findings)
    if output == "json":
        data = [
            _json(f, None if dry else (r or None))
            for f, r in zip(result.findings, results, strict=True)
        ]
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        rows = []
        for finding, outcome in zip(result.findings, results, strict=True):
            if finding.action in VERBS:
                verb = VERBS[finding.action][0] if dry else outcome
                rows.append((verb, finding, finding.status))
            else:
                rows.append((finding.status, finding, finding.detail))
        _print_rows(rows)
    _report_notes(found, result)
    todo = sum(f.action in VERBS for f in result.findings)
    if dry and todo and output != "json":
        print(f"{todo} change(s) to make: run again with --apply", file=sys.stderr)
    failed = any(r.startswith("failed") for r in results)
    left = any(f.action == MANUAL for f in result.findings)
    return 1 if failed or left or found.problems or not found.receivers else 0


def run(
    found: Inventory,
    credentials: Credentials,
    api_urls: Mapping[str, str],
    *,
    command: str,
    output: str,
    scope: str = "repository",
    mirrors: bool = False,
    apply_changes: bool = False,
    prune: bool = False,
) -> int:
    """``hooks check`` (``command`` "check") or ``hooks sync``: survey, maybe apply, report."""
    sync_run = command == "sync"

    async def go() -> tuple[Survey, list[str] | None]:
        result = await survey(
            found, credentials, api_urls, scope=scope, mirrors=mirrors, prune=sync_run and prune
        )
        try:
            done = await apply(result) if sync_run and apply_changes else None
        finally:
            for client in result.clients.values():
                await client.close()
        return result, done

    result, outcomes = asyncio.run(go())
    if not sync_run:
        return check(found, result, output)
    return sync(found, result, output, outcomes)
