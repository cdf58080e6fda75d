"""How much of a request is kept in the history or the log: long values are cut, visibly.

A sender chooses its headers and, once signed, its payload; what we store or log about it
must not grow with them (20 unsigned POSTs with a 24 MB ``X-Request-UUID`` once added
480 MB to both the state file and the log).
"""

from __future__ import annotations

from collections.abc import Sequence

ID_LIMIT = 64
"""Characters kept of a delivery id, event key or attempt number: Bitbucket's longest is a
braced UUID (38) or an event key such as ``pullrequest:comment_reopened`` (28)."""
FIELD_LIMIT = 512
"""Characters kept of a message, 400 detail, candidate reason, repository or PR URL, ref."""
LOG_FIELD_LIMIT = 4096
"""Characters kept of a log line's message and of each of its fields."""
MAX_REFS = 20
"""Refs a history record lists; the count of the others is kept."""
MAX_CANDIDATES = 50
"""Candidates (with their reasons) a history record lists; the count of the others is kept."""
MAX_REPOSITORIES = 10
"""Repository URLs a history record lists (a Data Center push carries a few clone URLs)."""


def clip(text: str, limit: int) -> str:
    """``text`` itself, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated, {len(text)} chars]"


def clip_all(texts: Sequence[str], count: int, limit: int = FIELD_LIMIT) -> list[str]:
    """The first ``count`` of ``texts``, each clipped to ``limit``."""
    return [clip(text, limit) for text in texts[:count]]
