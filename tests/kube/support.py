"""Helpers for Kubernetes-mode tests (not fixtures): fresh namespaces, objects created as
``kubectl apply`` would, published URLs, and the type of the ``replicas`` fixture."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from typing import Any

from tests.kube.apiserver import Kube
from tests.kube.manifests import Objects, published_receivers
from tests.support import Server, eventually

_namespaces = itertools.count(1)


def new_namespace(kube: Kube, hint: str) -> str:
    """Create a namespace with a unique name that says which test made it."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-")
    name = f"t{next(_namespaces)}-{slug}".rstrip("-")
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def published_url(objects: Objects, namespace: str, receiver: str = "bb") -> str:
    """The URL published for ``receiver`` of ``namespace``, once there is one."""
    return str(
        eventually(
            lambda: published_receivers(objects, namespace).get(receiver),
            what=f"a published URL for receiver {receiver} of {namespace}",
        )
    )


Replicas = Callable[..., Server]


def seed(kube: Kube, docs: list[dict[str, Any]]) -> None:
    """Create objects as ``kubectl apply`` would; a ``status`` goes through its subresource."""
    for doc in docs:
        doc = json.loads(json.dumps(doc))
        status = doc.pop("status", None)
        kube.create(doc)
        if status is not None:
            meta = doc["metadata"]
            kube.patch(
                doc["apiVersion"],
                doc["kind"],
                meta.get("namespace"),
                meta["name"],
                {"status": status},
                subresource="status",
            )
