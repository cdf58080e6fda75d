"""What every test layer builds alike, built one way: Kargo manifests (as objects, YAML or
store resources), Bitbucket push bodies, signatures and the headers of a signed delivery,
history records, and the corpus's event keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import yaml

from kargo_bitbucket.core.manifests import Resource, parse_documents
from kargo_bitbucket.history import DeliveryRecord

KARGO = "kargo.akuity.io/v1alpha1"
REPO = "https://bitbucket.org/acme/app"
SECRET = "topsecret"
CLUSTER_SECRETS = "kargo-system-resources"  # the namespace of the ClusterConfig's Secrets
DELIVERY_ID = "11111111-2222-3333-4444-555555555555"

# Corpus file-name prefix -> X-Event-Key, as in the SOURCES.md tables.
CORPUS_EVENTS = {
    "cloud_repo_push_": "repo:push",
    "cloud_pullrequest_fulfilled": "pullrequest:fulfilled",
    "cloud_pullrequest_rejected": "pullrequest:rejected",
    "server_repo_refs_changed": "repo:refs_changed",
    "server_mirror_repo_synchronized": "mirror:repo_synchronized",
    "server_pr_merged": "pr:merged",
    "server_pr_declined": "pr:declined",
    "server_diagnostics_ping": "diagnostics:ping",
}


def corpus_event(name: str) -> str:
    """The event key a corpus file was delivered with."""
    [event] = [e for prefix, e in CORPUS_EVENTS.items() if name.startswith(prefix)]
    return event


def sign(body: bytes, secret: str | bytes = SECRET, alg: str = "sha256") -> str:
    """An ``X-Hub-Signature`` value for ``body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return f"{alg}=" + hmac.new(key, body, getattr(hashlib, alg)).hexdigest()


def signed(
    body: bytes, secret: str | bytes = SECRET, event: str = "repo:push", **headers: str
) -> dict[str, str]:
    """The headers of a Bitbucket Cloud delivery of ``body`` signed with ``secret``;
    ``headers`` add or replace (``**{"X-Request-UUID": ...}``)."""
    return {
        "Content-Type": "application/json",
        "X-Event-Key": event,
        "X-Request-UUID": DELIVERY_ID,
        "X-Hub-Signature": sign(body, secret),
        **headers,
    }


def push(*refs: str | tuple[str, str], repo: str | None = REPO) -> bytes:
    """A Bitbucket Cloud ``repo:push`` body creating ``refs`` (a branch name, or a
    ``(type, name)`` pair such as ``("tag", "v1.0.0")``) in ``repo`` (no repository: None)."""
    pairs = [("branch", ref) if isinstance(ref, str) else ref for ref in refs]
    body: dict[str, Any] = {
        "push": {"changes": [{"new": {"type": t, "name": n}, "old": None} for t, n in pairs]}
    }
    if repo is not None:
        body["repository"] = {"links": {"html": {"href": repo}}}
    return json.dumps(body).encode()


PUSH = push("main")


def secret(namespace: str, name: str = "bb", value: str = SECRET) -> dict[str, Any]:
    """A Secret holding a receiver's shared secret under the key ``secret``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"secret": value},
    }


def _receivers(receivers: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return {
        "webhookReceivers": [
            {"name": n, "bitbucket": {"secretRef": {"name": s}}} for n, s in receivers
        ]
    }


def project(namespace: str, *receivers: tuple[str, str]) -> dict[str, Any]:
    """The ProjectConfig of ``namespace`` with Bitbucket receivers (name, Secret name)."""
    return {
        "apiVersion": KARGO,
        "kind": "ProjectConfig",
        "metadata": {"name": namespace, "namespace": namespace},
        "spec": _receivers(receivers),
    }


def cluster_config(*receivers: tuple[str, str]) -> dict[str, Any]:
    """The ClusterConfig with Bitbucket receivers (name, Secret name in
    :data:`CLUSTER_SECRETS`), whose deliveries refresh every namespace."""
    return {
        "apiVersion": KARGO,
        "kind": "ClusterConfig",
        "metadata": {"name": "cluster"},
        "spec": _receivers(receivers),
    }


def warehouse(
    namespace: str, name: str, branch: str | None = "main", repo: str = REPO, **git: Any
) -> dict[str, Any]:
    """A Warehouse with one git subscription; ``git`` adds or replaces its fields
    (``branch=None``: no branch)."""
    subscription = {"repoURL": repo, **({} if branch is None else {"branch": branch}), **git}
    return {
        "apiVersion": KARGO,
        "kind": "Warehouse",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"subscriptions": [{"git": subscription}]},
    }


def promotion(namespace: str, name: str, pr: str) -> dict[str, Any]:
    """A Running Promotion whose current step waits on pull request ``pr`` (the URL that
    the step before it, ``git-open-pr``, opened)."""
    return {
        "apiVersion": KARGO,
        "kind": "Promotion",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "stage": "prod",
            "freight": "abc",
            "steps": [
                {"uses": "git-open-pr", "as": "open"},
                {"uses": "git-wait-for-pr", "as": "wait"},
            ],
        },
        "status": {
            "phase": "Running",
            "currentStep": 1,
            "state": {"open": {"pr": {"url": pr}}, "wait": {"pr": {"url": pr}}},
        },
    }


def one_receiver(
    namespace: str, *warehouses: str, value: str = SECRET, name: str = "bb"
) -> list[dict[str, Any]]:
    """Secret ``name`` holding ``value``, the ProjectConfig with receiver ``name`` on it,
    and Warehouses on ``main`` of :data:`REPO`: the usual start of a test."""
    return [
        secret(namespace, name, value),
        project(namespace, (name, name)),
        *(warehouse(namespace, w) for w in warehouses),
    ]


def receiver_path(namespace: str, name: str = "bb", value: str = SECRET) -> str:
    """The path Kargo gives receiver ``namespace/name`` with secret ``value`` (SPEC §3:
    sha256 of the three concatenated), known before any server publishes it."""
    return "/bitbucket/" + hashlib.sha256(f"{namespace}{name}{value}".encode()).hexdigest()


def to_yaml(*docs: dict[str, Any]) -> str:
    """The documents as one multi-document YAML stream, for ``apply -f -``."""
    return yaml.safe_dump_all(docs, sort_keys=False)


def resources(*docs: dict[str, Any]) -> list[Resource]:
    """The documents as the store's resources, as ``apply`` hands them over (a Secret's
    ``stringData`` folded into base64 ``data``)."""
    out = []
    for doc in docs:
        if "stringData" in doc:
            data = {k: base64.b64encode(v.encode()).decode() for k, v in doc["stringData"].items()}
            doc = {**{k: v for k, v in doc.items() if k != "stringData"}, "data": data}
        meta = doc["metadata"]
        out.append(Resource(doc["kind"], meta.get("namespace", ""), meta["name"], doc))
    return out


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key and index path inside a JSON value, parents before children."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += json_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += json_paths(child, (*prefix, index))
    return found


def delivery_record(delivery_id: str = "d", namespace: str = "a", **fields: Any) -> DeliveryRecord:
    """The history record of a push to receiver ``namespace/r`` that refreshed one Warehouse;
    ``fields`` set any other field."""
    return DeliveryRecord(
        **{
            "time": "2026-12-06T00:00:00.000000Z",
            "receiver": f"{namespace}/r",
            "namespace": namespace,
            "event": "repo:push",
            "delivery_id": delivery_id,
            "attempt": "1",
            "status": 200,
            "result": "refreshed",
            "message": "refreshed 1 warehouse(s)",
            "duration_ms": 1.0,
            **fields,
        }
    )


def parse_manifests(
    text: str, source: str, default_namespace: str | None = None, *, strict: bool = False
) -> list[Resource]:
    """``parse_documents``, all or nothing: the first invalid document's error is raised."""
    resources, errors = parse_documents(text, source, default_namespace, strict=strict)
    if errors:
        raise errors[0]
    return resources
