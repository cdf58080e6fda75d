"""The shared corpus's deliveries as test cases: for each payload file, the Kargo project
(namespace) it is delivered to, with a receiver, what the delivery must refresh and what it
must leave alone, and the headers Bitbucket sent it with. Expectations come from the facts
recorded in SOURCES.md (repositories, refs, PR links), not from our parser."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.builders import project, promotion, secret, sign, warehouse

SIGNED_SECRET = "Gkvl$k$wyNpQAF42"
SIGNED = {
    "cloud_repo_push_branch_create_signed.json": (
        "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035"
    ),
    "server_repo_refs_changed_delete_signed.json": (
        "sha256=4ffba9e7b58ea3d7e1a230446e8c92baea0aeec89b73f598932387254f0de13e"
    ),
}


@dataclass
class Case:
    file: str
    event: str
    status: int
    msg: str
    hit: dict[str, Any] | None = None  # git subscription that must be refreshed
    miss: dict[str, Any] | None = None  # git subscription on the same repo that must not
    pr: str | None = None  # PR URL a Running Promotion waits on
    extra: dict[str, Any] = field(default_factory=dict)


def git(repo: str, **fields: Any) -> dict[str, Any]:
    return {"repoURL": repo, **fields}


AMUNIZ = "https://bitbucket.org/amuniz/test-repos"
AMUNIZ_SSH = "ssh://git@localhost:7999/amuniz/test-repos.git"
REFRESHED_1 = "refreshed 1 warehouse(s)"
PR_1 = "refreshed 1 promotion(s)"

CASES = [
    Case(
        "cloud_repo_push_branch_update.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git("https://bitbucket.org/brydzewski/foo.git"),  # no branch: main or master
        miss=git("https://bitbucket.org/brydzewski/foo", branch="develop"),
    ),
    Case(
        "cloud_repo_push_branch_update_forced_truncated.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ, branch="feature/issue-819"),
        miss=git(AMUNIZ, branch="main"),
    ),
    Case(
        "cloud_repo_push_branch_create.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git("git@bitbucket.org:amuniz/test-repos.git", branch="feature/test"),
        miss=git(AMUNIZ, branch="feature"),
    ),
    Case(
        "cloud_repo_push_branch_create_signed.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git("https://bitbucket.org/NFalco79/Test-Repos.git", branch="feature/webhook"),
        miss=git("https://bitbucket.org/nfalco79/test-repos", branch="main"),
    ),
    Case(
        "cloud_repo_push_delete.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ, branch="feature/test"),
        miss=git(AMUNIZ, branch="main"),
    ),
    Case(
        "cloud_repo_push_docs_example.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git("https://api.bitbucket.org/bitbucket/bitbucket", branch="name-of-branch"),
        miss=git("https://api.bitbucket.org/bitbucket/bitbucket", branch="main"),
    ),
    Case(
        "cloud_repo_push_multiple_changes.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git(
            "https://bitbucket.org/cloudbeers/temp",
            commitSelectionStrategy="SemVer",
            semverConstraint=">=0.1.0",
        ),
        miss=git(
            "https://bitbucket.org/cloudbeers/temp",
            commitSelectionStrategy="SemVer",
            strictSemvers=True,
        ),
    ),
    Case(
        "cloud_repo_push_tag.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ, commitSelectionStrategy="NewestTag", allowTagsRegexes=["^simple-"]),
        miss=git(AMUNIZ, commitSelectionStrategy="SemVer"),
    ),
    Case(
        "cloud_repo_push_tag_annotated.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ, commitSelectionStrategy="Lexical"),
        miss=git(AMUNIZ, commitSelectionStrategy="NewestTag", ignoreTagsRegexes=["^test"]),
    ),
    Case(
        "cloud_repo_push_tag_delete.json",
        "repo:push",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ, commitSelectionStrategy="NewestTag"),
        miss=git(AMUNIZ, branch="test"),
    ),
    Case(
        "server_repo_refs_changed.json",
        "repo:refs_changed",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ_SSH, branch="main"),
        miss=git("http://localhost:7990/scm/amuniz/test-repos.git", branch="master"),
    ),
    Case(
        "server_repo_refs_changed_dc10_iso_dates.json",
        "repo:refs_changed",
        200,
        REFRESHED_1,
        hit=git("http://localhost:7990/bitbucket/scm/amuniz/test-repos.git", branch="feature/BB-1"),
        miss=git(AMUNIZ_SSH, branch="BB-1"),
    ),
    Case(
        "server_repo_refs_changed_delete_personal.json",
        "repo:refs_changed",
        200,
        REFRESHED_1,
        hit=git(
            "https://server.bitbucket.local/scm/~gopher/webhook-test.git", branch="feature/wip"
        ),
        miss=git("https://server.bitbucket.local/scm/~gopher/webhook-test.git"),
    ),
    Case(
        "server_repo_refs_changed_delete_signed.json",
        "repo:refs_changed",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ_SSH, branch="feature/BB-1"),
        miss=git(AMUNIZ_SSH, branch="main"),
    ),
    Case(
        "server_repo_refs_changed_multiple.json",
        "repo:refs_changed",
        200,
        REFRESHED_1,
        hit=git("http://139.59.64.214:7990/scm/sbox/sandbox.git"),  # default: master
        miss=git("ssh://git@139.59.64.214:7999/sbox/sandbox.git", branch="branch2"),
    ),
    Case(
        "server_repo_refs_changed_tag_add.json",
        "repo:refs_changed",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ_SSH, commitSelectionStrategy="NewestTag"),
        miss=git(AMUNIZ_SSH, branch="simple-tag"),
    ),
    Case(
        "server_repo_refs_changed_tag_delete.json",
        "repo:refs_changed",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ_SSH, commitSelectionStrategy="Lexical", allowTagsRegexes=["tag$"]),
        miss=git(AMUNIZ_SSH, commitSelectionStrategy="Lexical", allowTagsRegexes=["^v"]),
    ),
    Case(
        "server_mirror_repo_synchronized.json",
        "mirror:repo_synchronized",
        200,
        REFRESHED_1,
        hit=git(AMUNIZ_SSH, branch="main"),
        miss=git(AMUNIZ_SSH, branch="develop"),
    ),
    Case(
        "server_mirror_repo_synchronized_ref_limit_exceeded.json",
        "mirror:repo_synchronized",
        200,
        "refreshed 2 warehouse(s)",
        hit=git(AMUNIZ_SSH, branch="main"),
        miss=git(AMUNIZ_SSH, branch="develop"),
        extra={"refs_unknown": True},
    ),
    Case(
        "server_repo_refs_changed_v5_no_links.json",
        "repo:refs_changed",
        400,
        "",
        extra={"error": "payload has no repository URL"},
    ),
    Case(
        "cloud_pullrequest_fulfilled.json",
        "pullrequest:fulfilled",
        200,
        PR_1,
        pr="https://bitbucket.org/cloudbeers/temp/pull-requests/2",
    ),
    Case(
        "cloud_pullrequest_fulfilled_2018.json",
        "pullrequest:fulfilled",
        200,
        PR_1,
        pr="https://bitbucket.org/brydzewski/foo/pull-requests/1/",
    ),
    Case(
        "cloud_pullrequest_fulfilled_2019.json",
        "pullrequest:fulfilled",
        200,
        PR_1,
        pr="https://bitbucket.org/lkysow/atlantis-example/pull-requests/16",
    ),
    Case(
        "cloud_pullrequest_rejected.json",
        "pullrequest:rejected",
        200,
        PR_1,
        pr="https://bitbucket.org/amuniz/test-repos/pull-requests/735",
    ),
    Case(
        "cloud_pullrequest_rejected_2019.json",
        "pullrequest:rejected",
        200,
        PR_1,
        pr="https://BITBUCKET.org/lkysow/atlantis-example/pull-requests/13",
    ),
    Case(
        "server_pr_merged.json",
        "pr:merged",
        200,
        PR_1,
        pr="https://server.bitbucket.local/users/gopher/repos/webhook-test/pull-requests/5",
    ),
    Case(
        "server_pr_declined.json",
        "pr:declined",
        200,
        PR_1,
        pr="https://server.bitbucket.local/users/gopher/repos/webhook-test/pull-requests/2",
    ),
    Case(
        "server_pr_merged_fork.json",
        "pr:merged",
        200,
        PR_1,
        pr="http://139.59.64.214:7990/projects/SBOX/repos/sandbox/pull-requests/6",
    ),
    Case(
        "server_pr_merged_2018_no_links.json",
        "pr:merged",
        400,
        "",
        extra={"error": "invalid request body"},
    ),
    Case(
        "server_pr_declined_2018_no_links.json",
        "pr:declined",
        400,
        "",
        extra={"error": "invalid request body"},
    ),
    Case(
        "server_pr_merged_iso_dates.json",
        "pr:merged",
        400,
        "",
        extra={"error": "invalid request body"},
    ),
    Case("server_diagnostics_ping.json", "diagnostics:ping", 200, "pong"),
]


def namespace_of(case: Case) -> str:
    return "p-" + case.file.removesuffix(".json").replace("_", "-")


def secret_of(case: Case) -> str:
    return SIGNED_SECRET if case.file in SIGNED else "s3cr3t-" + namespace_of(case)


def manifests(case: Case) -> list[dict[str, Any]]:
    """The case's project: receiver ``bb`` on its secret, Warehouses and Promotions named
    ``hit`` (must be refreshed) and ``miss`` (must not)."""
    ns = namespace_of(case)
    docs = [secret(ns, "bb", secret_of(case)), project(ns, ("bb", "bb"))]
    for name, subscription in (("hit", case.hit), ("miss", case.miss)):
        if subscription is not None:
            docs.append(warehouse(ns, name, **{"branch": None, **subscription}))
    if case.pr is not None:
        for name, url in (("hit", case.pr), ("miss", case.pr.rstrip("/") + "0")):
            docs.append(promotion(ns, name, url))
    return docs


def headers_for(case: Case, body: bytes) -> dict[str, str]:
    if case.file.startswith("cloud_"):
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Bitbucket-Webhooks/2.0",
            "X-Event-Key": case.event,
            "X-Hook-UUID": str(uuid.uuid4()),
            "X-Request-UUID": str(uuid.uuid4()),
            "X-Attempt-Number": "1",
        }
    else:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Event-Key": case.event,
            "X-Request-Id": str(uuid.uuid4()),
        }
    if case.event != "diagnostics:ping":
        headers["X-Hub-Signature"] = SIGNED.get(case.file) or sign(body, secret_of(case))
    return headers
