"""Promotions waiting on a pull request in a ``git-wait-for-pr`` step (SPEC §7)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

WAIT_FOR_PR_STEP = "git-wait-for-pr"
RUNNING = "Running"


def pr_url_key(url: str) -> str:
    """Comparable form of a PR URL: trimmed, one trailing ``/`` dropped, scheme and host lower."""
    text = url.strip().removesuffix("/")
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc:
        return text
    return urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, parts.fragment)
    )


def awaited_pr_urls(promotion: Mapping[str, Any]) -> frozenset[str]:
    """The PR URL keys a Running Promotion waits on, in steps up to its current step."""
    spec = promotion.get("spec")
    status = promotion.get("status")
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        return frozenset()
    if status.get("phase") != RUNNING:
        return frozenset()
    steps = spec.get("steps")
    state = status.get("state")
    current = status.get("currentStep") or 0
    if (
        not isinstance(steps, list)
        or not isinstance(state, Mapping)
        or not isinstance(current, int)
    ):
        return frozenset()
    urls = set()
    for step in steps[: current + 1]:
        if not isinstance(step, Mapping) or step.get("uses") != WAIT_FOR_PR_STEP:
            continue
        alias = step.get("as")
        if not isinstance(alias, str) or not alias:
            continue
        output = state.get(alias)
        pr = output.get("pr") if isinstance(output, Mapping) else None
        url = pr.get("url") if isinstance(pr, Mapping) else None
        if isinstance(url, str) and url.strip():
            urls.add(pr_url_key(url))
    return frozenset(urls)
