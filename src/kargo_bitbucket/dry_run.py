"""What a push or a pull request event would refresh, and why, without refreshing anything."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from kargo_bitbucket.core.decision import Verdict, decide_pull_request, decide_push
from kargo_bitbucket.core.events import Push
from kargo_bitbucket.core.identity import repository_identity
from kargo_bitbucket.core.payloads import split_ref
from kargo_bitbucket.store.index import Indexes


@dataclass(frozen=True)
class Explanation:
    """One verdict per candidate; ``empty`` says why there is none; ``notes`` what a
    candidate Warehouse holds that is ignored (unknown fields, and other subscriptions
    naming the repository under a misspelt key), by (namespace, name)."""

    verdicts: list[Verdict]
    empty: str
    notes: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    @property
    def would_refresh(self) -> bool:
        """Whether any candidate would be refreshed."""
        return any(v.refresh for v in self.verdicts)


_PR_PAGE = re.compile(r"(.+/pull-requests/[0-9]+)[/?#].")
"""A browser's URL of a pull request's page (``.../pull-requests/42/diff``)."""


def explain_push(
    indexes: Indexes, repo: str, refs: Sequence[str], namespace: str | None = None
) -> Explanation:
    """A push of ``refs`` (branch names or full refs; none = unknown) to ``repo``."""
    pushed = tuple(split_ref(ref)[0] for ref in refs) or None
    push = Push(repo_urls=(repo,), refs=pushed)
    verdicts = decide_push(push, lambda found: indexes.warehouses_for(found, namespace))
    identity = repository_identity(repo)
    verdicts += _misspelt(indexes, identity, namespace, {(v.namespace, v.name) for v in verdicts})
    empty = (
        f"no Warehouse{' in ' + namespace if namespace else ''} subscribes "
        f"to {identity} (compared by repository identity)"
    )
    notes = {}
    for verdict in verdicts:
        entry = indexes.warehouse(verdict.namespace, verdict.name)
        if entry is None:
            continue
        where = f"Warehouse {entry.namespace}/{entry.name}"
        shown = (
            *(
                f"{where} {u.note}"
                for u in entry.unreachable
                if u.meant == identity and u.note != verdict.reason
            ),
            *entry.ignored,
        )
        if shown:
            notes[verdict.namespace, verdict.name] = shown
    return Explanation(verdicts, empty, notes)


def _misspelt(
    indexes: Indexes, identity: str, namespace: str | None, judged: set[tuple[str, str]]
) -> list[Verdict]:
    """A verdict on each Warehouse not judged whose subscription names the repository under a
    misspelt key (``repoUrl:``): the API server keeps it, and no push ever refreshes it."""
    verdicts = []
    for entry in sorted(indexes.warehouses(namespace), key=lambda w: (w.namespace, w.name)):
        meant = next((u for u in entry.unreachable if u.meant == identity), None)
        if meant is not None and (entry.namespace, entry.name) not in judged:
            verdicts.append(
                Verdict(
                    kind="Warehouse",
                    namespace=entry.namespace,
                    name=entry.name,
                    refresh=False,
                    reason=meant.note,
                )
            )
    return verdicts


def explain_pull_request(indexes: Indexes, pr: str, namespace: str | None = None) -> Explanation:
    """A merged or declined pull request ``pr``."""
    verdicts = decide_pull_request(pr, indexes.promotions_waiting_on(pr, namespace))
    empty = f"no Running Promotion waits on {pr} in a git-wait-for-pr step"
    if page := _PR_PAGE.match(pr.strip()):
        empty += (
            f" (a pull request's URL ends with its number, as git-open-pr gives it and "
            f"Bitbucket sends it: --pr {page[1]})"
        )
    return Explanation(verdicts, empty)
