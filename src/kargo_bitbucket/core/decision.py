"""What one delivery refreshes: a verdict with a reason for every candidate (SPEC §6, §7)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kargo_bitbucket.core.events import Push
from kargo_bitbucket.core.identity import repository_identity
from kargo_bitbucket.core.subscriptions import GitSubscription, git_subscriptions, match_ref


@dataclass(frozen=True, slots=True)
class WarehouseEntry:
    """What matching needs of a Warehouse, kept in memory instead of the whole object."""

    namespace: str
    name: str
    subscriptions: tuple[GitSubscription, ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WarehouseEntry:
        """Compile a Warehouse body once, when it enters the index."""
        meta = body.get("metadata") or {}
        return cls(
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
            subscriptions=git_subscriptions(body),
        )

    @property
    def identities(self) -> frozenset[str]:
        """Repository identities this Warehouse is subscribed to."""
        return frozenset(s.identity for s in self.subscriptions)


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether one object is refreshed, and one sentence a person can read saying why."""

    kind: str
    namespace: str
    name: str
    refresh: bool
    reason: str
    warnings: tuple[str, ...] = ()


def decide_push(
    push: Push, find: Callable[[Iterable[str]], Iterable[WarehouseEntry]]
) -> list[Verdict]:
    """Judge the Warehouses ``find`` returns for the pushed repository identities."""
    pushed = {repository_identity(url): url for url in push.repo_urls}
    verdicts = []
    for warehouse in find(pushed):
        subscriptions = [s for s in warehouse.subscriptions if s.identity in pushed]
        verdicts.append(_judge(warehouse, subscriptions, push.refs, pushed))
    return verdicts


def _judge(
    warehouse: WarehouseEntry,
    subscriptions: list[GitSubscription],
    refs: tuple[str, ...] | None,
    pushed: Mapping[str, str],
) -> Verdict:
    """The verdict for one Warehouse: the first certain match wins, else the first uncertain one."""
    kind, namespace, name = "Warehouse", warehouse.namespace, warehouse.name
    if not subscriptions:
        return Verdict(kind, namespace, name, False, "no subscription to the pushed repository")
    if refs is None:
        return Verdict(
            kind, namespace, name, True, "the push names no refs, so every subscriber is refreshed"
        )
    misses: list[str] = []
    uncertain: Verdict | None = None
    for subscription in subscriptions:
        for ref in refs:
            verdict = match_ref(subscription, ref)
            if not verdict.matched:
                misses.append(verdict.reason)
                continue
            reason = verdict.reason + _via(subscription, pushed)
            if not verdict.uncertain:
                return Verdict(kind, namespace, name, True, reason)
            if uncertain is None:
                warnings = tuple(
                    f"Warehouse {namespace}/{name} spec.subscriptions[{subscription.index}].git."
                    f"{problem}; refreshed anyway"
                    for problem in subscription.problems
                )
                uncertain = Verdict(kind, namespace, name, True, reason, warnings)
    if uncertain is not None:
        return uncertain
    return Verdict(kind, namespace, name, False, "; ".join(dict.fromkeys(misses)))


def _via(subscription: GitSubscription, pushed: Mapping[str, str]) -> str:
    """Note when the subscription's URL is spelled differently from the pushed one."""
    pushed_url = pushed.get(subscription.identity, "")
    if subscription.repo_url == pushed_url:
        return ""
    return f" (subscribed as {subscription.repo_url}, matched by repository identity)"


def decide_pull_request(pr_url: str, waiting: Iterable[tuple[str, str]]) -> list[Verdict]:
    """Every Promotion found waiting on the PR is refreshed (the step asks what happened)."""
    return [
        Verdict("Promotion", namespace, name, True, f"waits on {pr_url} in a git-wait-for-pr step")
        for namespace, name in waiting
    ]
