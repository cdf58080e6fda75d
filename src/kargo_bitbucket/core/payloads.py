"""Realistic Bitbucket deliveries built from a few facts, for ``send`` and for tests."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import orjson

from kargo_bitbucket.core.identity import repository_identity

CLOUD_HOST = "bitbucket.org"
ZERO_HASH = "0" * 40


class PayloadArgumentError(ValueError):
    """The event needs a fact that was not given: ``needs`` is ``repo`` or ``pr``."""

    def __init__(self, event: str, needs: str) -> None:
        self.event, self.needs = event, needs
        what = "a repository URL" if needs == "repo" else "a pull request URL"
        super().__init__(f"event {event} needs {what}")


def split_ref(ref: str) -> tuple[str, bool, str]:
    """``main`` -> (``refs/heads/main``, not a tag, ``main``); full ``refs/...`` refs are kept."""
    full = ref if ref.startswith("refs/") else f"refs/heads/{ref}"
    is_tag = full.startswith("refs/tags/")
    return full, is_tag, full.removeprefix("refs/tags/" if is_tag else "refs/heads/")


def is_cloud_url(url: str) -> bool:
    """Whether a repository or PR URL (any syntax, SSH included) belongs to Bitbucket Cloud."""
    host = repository_identity(url).partition("/")[0]
    return host in (CLOUD_HOST, "www." + CLOUD_HOST)


def build_payload(
    event: str, *, repo: str | None = None, refs: list[str] | None = None, pr: str | None = None
) -> bytes:
    """The JSON body Bitbucket would send for ``event`` (keys as in real deliveries)."""
    key = event.lower()
    if key == "diagnostics:ping":
        return b'{"test": true}'
    if key == "repo:push":
        return _dumps(_cloud_push(_need(repo, "repo", event), refs or ["main"]))
    if key in ("repo:refs_changed", "mirror:repo_synchronized"):
        body = _server_push(_need(repo, "repo", event), refs or ["main"])
        if key == "mirror:repo_synchronized":
            body |= {
                "mirrorServer": {"id": "mirror-1", "name": "mirror"},
                "syncType": "INCREMENTAL",
                "refLimitExceeded": False,
            }
        return _dumps({"eventKey": key, **body})
    if key in ("pullrequest:fulfilled", "pullrequest:rejected"):
        return _dumps(_cloud_pr(_need(pr, "pr", event), key.endswith("fulfilled")))
    if key in ("pr:merged", "pr:declined"):
        return _dumps({"eventKey": key, **_server_pr(_need(pr, "pr", event), key)})
    return _dumps({"eventKey": event})


def _need(value: str | None, needs: str, event: str) -> str:
    if not value:
        raise PayloadArgumentError(event, needs)
    return value


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def _cloud_repository(repo: str) -> dict[str, Any]:
    path = urlsplit(repo).path.strip("/").removesuffix(".git")
    workspace, _, slug = path.partition("/")
    return {
        "type": "repository",
        "full_name": path,
        "name": slug,
        "uuid": "{" + str(uuid.uuid4()) + "}",
        "links": {"html": {"href": repo.removesuffix(".git")}},
        "workspace": {"type": "workspace", "slug": workspace},
        "is_private": True,
        "scm": "git",
    }


def _cloud_push(repo: str, refs: list[str]) -> dict[str, Any]:
    changes = []
    for ref in refs:
        _, is_tag, name = split_ref(ref)
        changes.append(
            {
                "new": {
                    "type": "tag" if is_tag else "branch",
                    "name": name,
                    "target": {"type": "commit", "hash": uuid.uuid4().hex + "00000000"},
                },
                "old": None,
                "created": True,
                "forced": False,
                "closed": False,
                "truncated": False,
            }
        )
    return {
        "push": {"changes": changes},
        "repository": _cloud_repository(repo),
        "actor": {"type": "user", "display_name": "kargo-bitbucket send"},
    }


def _server_repository(repo: str) -> dict[str, Any]:
    parts = urlsplit(repo)
    segments = parts.path.strip("/").removesuffix(".git").split("/")
    slug = segments[-1] if segments else "repo"
    project = segments[-2] if len(segments) > 1 else "PROJ"
    return {
        "slug": slug,
        "name": slug,
        "project": {"key": project.upper(), "name": project},
        "links": {"clone": [{"href": repo, "name": parts.scheme or "http"}]},
    }


def _server_push(repo: str, refs: list[str]) -> dict[str, Any]:
    changes = []
    for ref in refs:
        full, is_tag, display = split_ref(ref)
        changes.append(
            {
                "ref": {"id": full, "displayId": display, "type": "TAG" if is_tag else "BRANCH"},
                "refId": full,
                "fromHash": ZERO_HASH,
                "toHash": uuid.uuid4().hex + "00000000",
                "type": "ADD",
            }
        )
    return {
        "actor": {"name": "kargo-bitbucket", "displayName": "kargo-bitbucket send"},
        "repository": _server_repository(repo),
        "changes": changes,
    }


def _cloud_pr(pr: str, merged: bool) -> dict[str, Any]:
    repo = pr.split("/pull-requests/")[0]
    return {
        "pullrequest": {
            "type": "pullrequest",
            "id": _pr_number(pr),
            "state": "MERGED" if merged else "DECLINED",
            "links": {"html": {"href": pr}},
        },
        "repository": _cloud_repository(repo),
    }


def _server_pr(pr: str, key: str) -> dict[str, Any]:
    return {
        "pullRequest": {
            "id": _pr_number(pr),
            "state": "MERGED" if key == "pr:merged" else "DECLINED",
            "links": {"self": [{"href": pr}]},
        }
    }


def _pr_number(pr: str) -> int:
    tail = pr.rstrip("/").rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else 1
