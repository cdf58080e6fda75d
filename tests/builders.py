"""What several test layers build alike: a receiver's manifests, signatures, corpus event keys."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

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


def sign(body: bytes, secret: str, alg: str = "sha256") -> str:
    """An ``X-Hub-Signature`` value for ``body``."""
    return f"{alg}=" + hmac.new(secret.encode(), body, getattr(hashlib, alg)).hexdigest()


def receiver_manifests(secret: str, namespace: str = "demo", name: str = "bb") -> str:
    """YAML of a Secret and the ProjectConfig publishing one Bitbucket receiver on it."""
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"stringData: {{secret: {secret}}}\n---\n"
        f"apiVersion: kargo.akuity.io/v1alpha1\nkind: ProjectConfig\n"
        f"metadata: {{name: {namespace}, namespace: {namespace}}}\n"
        f"spec:\n  webhookReceivers:\n    - name: {name}\n"
        f"      bitbucket: {{secretRef: {{name: {name}}}}}\n"
    )


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
