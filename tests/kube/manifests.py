"""Reading what the receiver wrote into Kargo objects (published URLs, refresh annotations),
through the real server's admin client or the fake; building them is tests/builders.py."""

from __future__ import annotations

from typing import Any, Protocol

from tests.builders import KARGO

REFRESH = "kargo.akuity.io/refresh"


class Objects(Protocol):
    """What tests read objects through: the real server's admin client or the fake."""

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...


def published_receivers(objects: Objects, namespace: str) -> dict[str, str]:
    """Receiver name -> URL, as published in the status of ``namespace``'s ProjectConfig."""
    config = objects.get(KARGO, "ProjectConfig", namespace, namespace) or {}
    return {
        item["name"]: str(item["url"])
        for item in (config.get("status") or {}).get("webhookReceivers") or []
        if "url" in item
    }


def refreshed(objects: Objects, kind: str, namespace: str, name: str) -> str | None:
    """The refresh annotation of an object, None when absent."""
    obj = objects.get(KARGO, kind, namespace, name) or {}
    return (obj.get("metadata", {}).get("annotations") or {}).get(REFRESH)
