"""Promotions waiting on a pull request in a ``git-wait-for-pr`` step (SPEC §7)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from kargo_bitbucket.core.objects import Body, PromotionView

WAIT_FOR_PR_STEP = "git-wait-for-pr"
RUNNING = "Running"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOST = re.compile(r"[^/?#]+")


def pr_url_key(url: str) -> str:
    """Comparable form of a PR URL: trimmed, one trailing ``/`` dropped, scheme and host lower.

    Everything after the host is kept as sent; no URL is rejected (one malformed URL in
    a delivery or a Promotion must not stop anything else).
    """
    text = url.strip().removesuffix("/")
    scheme = _SCHEME.match(text)
    if scheme is None:
        return text
    rest = text[scheme.end() :]
    host = _HOST.match(rest)
    end = host.end() if host else 0
    if end == 0:
        return text
    return text[: scheme.end()].lower() + rest[:end].lower() + rest[end:]


def awaited_pr_urls(body: Body) -> frozenset[str]:
    """The PR URL keys a Running Promotion waits on, in steps up to its current step."""
    promotion = PromotionView(body)
    current = promotion.current_step
    if promotion.phase != RUNNING or current is None or current < 0:  # no step i <= -1
        return frozenset()
    state = promotion.state
    urls = set()
    for step in promotion.steps[: current + 1]:
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
