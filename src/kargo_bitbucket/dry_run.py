"""What a push or a pull request event would refresh, and why, without refreshing anything."""

from __future__ import annotations

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
    candidate Warehouse holds that is ignored (unknown fields), by (namespace, name)."""

    verdicts: list[Verdict]
    empty: str
    notes: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    @property
    def would_refresh(self) -> bool:
        """Whether any candidate would be refreshed."""
        return any(v.refresh for v in self.verdicts)


def explain_push(
    indexes: Indexes, repo: str, refs: Sequence[str], namespace: str | None = None
) -> Explanation:
    """A push of ``refs`` (branch names or full refs; none = unknown) to ``repo``."""
    pushed = tuple(split_ref(ref)[0] for ref in refs) or None
    push = Push(repo_urls=(repo,), refs=pushed)
    verdicts = decide_push(push, lambda found: indexes.warehouses_for(found, namespace))
    empty = (
        f"no Warehouse{' in ' + namespace if namespace else ''} subscribes "
        f"to {repository_identity(repo)} (compared by repository identity)"
    )
    notes = {}
    for verdict in verdicts:
        entry = indexes.warehouse(verdict.namespace, verdict.name)
        if entry is not None and entry.ignored:
            notes[verdict.namespace, verdict.name] = entry.ignored
    return Explanation(verdicts, empty, notes)


def explain_pull_request(indexes: Indexes, pr: str, namespace: str | None = None) -> Explanation:
    """A merged or declined pull request ``pr``."""
    verdicts = decide_pull_request(pr, indexes.promotions_waiting_on(pr, namespace))
    return Explanation(verdicts, f"no Running Promotion waits on {pr} in a git-wait-for-pr step")
