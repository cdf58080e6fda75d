"""Kargo objects and signed Bitbucket deliveries the Kubernetes-mode tests build."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Protocol

KARGO = "kargo.akuity.io/v1alpha1"
REFRESH = "kargo.akuity.io/refresh"
REPO_URL = "https://bitbucket.org/acme/app"
PUSH = json.dumps(
    {
        "push": {"changes": [{"new": {"type": "branch", "name": "main"}, "old": None}]},
        "repository": {"links": {"html": {"href": REPO_URL}}},
    }
).encode()


class Objects(Protocol):
    """What tests read objects through: the real server's admin client or the fake."""

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None: ...


def secret(namespace: str, name: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"secret": value},
    }


def project(namespace: str, *receivers: tuple[str, str]) -> dict[str, Any]:
    """The ProjectConfig of ``namespace`` with Bitbucket receivers (name, Secret name)."""
    return {
        "apiVersion": KARGO,
        "kind": "ProjectConfig",
        "metadata": {"name": namespace, "namespace": namespace},
        "spec": {
            "webhookReceivers": [
                {"name": n, "bitbucket": {"secretRef": {"name": s}}} for n, s in receivers
            ]
        },
    }


def warehouse(
    namespace: str, name: str, branch: str = "main", repo: str = REPO_URL
) -> dict[str, Any]:
    return {
        "apiVersion": KARGO,
        "kind": "Warehouse",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"subscriptions": [{"git": {"repoURL": repo, "branch": branch}}]},
    }


def signed(body: bytes, secret_value: str = "topsecret") -> dict[str, str]:
    """The headers of a Bitbucket push delivery signed with ``secret_value``."""
    return {
        "Content-Type": "application/json",
        "X-Event-Key": "repo:push",
        "X-Request-UUID": "k8s-delivery",
        "X-Hub-Signature": "sha256="
        + hmac.new(secret_value.encode(), body, hashlib.sha256).hexdigest(),
    }


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


def one_receiver(namespace: str, *warehouses: str) -> list[dict[str, Any]]:
    """Secret ``bb`` (``topsecret``), the ProjectConfig with receiver ``bb`` naming it, and
    Warehouses on ``main`` of :data:`REPO_URL`: the usual start of a test."""
    return [
        secret(namespace, "bb", "topsecret"),
        project(namespace, ("bb", "bb")),
        *(warehouse(namespace, name) for name in warehouses),
    ]
