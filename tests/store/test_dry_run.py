"""``dry_run.explain_push``: what ``kargo-bitbucket explain --repo`` judges, from indexes as
one-shot commands load them."""

from __future__ import annotations

from typing import Any

from kargo_bitbucket.config import DEFAULT_SYSTEM_NAMESPACE
from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.dry_run import explain_pull_request, explain_push
from kargo_bitbucket.store.index import Indexes
from tests.builders import REPO, warehouse

LOST = (
    "spec.subscriptions[0].git.repoURL: missing (misspelt as repoUrl?), so no push refreshes "
    "this subscription"
)


def loaded(*warehouses: dict[str, Any]) -> Indexes:
    index = Indexes(BaseURL.parse("http://one-shot.invalid"), DEFAULT_SYSTEM_NAMESPACE)
    for body in warehouses:
        index.put_warehouse(body)
    return index


def misspelt(namespace: str, name: str, repo: str = REPO) -> dict[str, Any]:
    """A Warehouse subscribed to ``repo`` under ``repoUrl:``, which a cluster keeps."""
    body = warehouse(namespace, name, repo=repo)
    git = body["spec"]["subscriptions"][0]["git"]
    git["repoUrl"] = git.pop("repoURL")
    return body


def test_a_warehouse_naming_the_repository_under_a_misspelt_key_is_listed_not_refreshed() -> None:
    """Asked why a push did not refresh it, explain names the Warehouse whose ``repoUrl:`` names
    the pushed repository (in any spelling of its URL) and says why, where it used to say
    that no Warehouse subscribes. One naming another repository is left out."""
    index = loaded(
        misspelt("team", "lost", repo="git@bitbucket.org:acme/app.git"),
        misspelt("team", "other", repo="https://bitbucket.org/acme/other"),
    )
    explained = explain_push(index, REPO, ["main"])
    assert [(v.namespace, v.name, v.refresh, v.reason) for v in explained.verdicts] == [
        ("team", "lost", False, LOST)
    ]
    assert not explained.would_refresh
    assert explain_push(index, REPO, ["main"], namespace="elsewhere").verdicts == []


def test_a_candidate_with_a_second_subscription_under_a_misspelt_key_has_it_as_a_note() -> None:
    body = warehouse("team", "both", branch="release")
    body["spec"]["subscriptions"].append(misspelt("team", "both")["spec"]["subscriptions"][0])
    explained = explain_push(loaded(body), REPO, ["main"])
    (verdict,) = explained.verdicts
    assert not verdict.refresh
    assert "release" in verdict.reason
    second = LOST.replace("[0]", "[1]")
    assert explained.notes["team", "both"] == (f"Warehouse team/both {second}",)


def test_a_pull_request_page_copied_from_the_browser_is_pointed_at_its_url() -> None:
    """``.../pull-requests/42/diff`` is what a browser shows; git-open-pr and Bitbucket's
    payloads give ``.../pull-requests/42``, which is what Promotions wait on."""
    pr = "https://bitbucket.example.com/projects/P/repos/app/pull-requests/42"
    for page in (f"{pr}/diff", f"{pr}/overview?w=1"):
        empty = explain_pull_request(loaded(), page).empty
        assert empty.endswith(f"Bitbucket sends it: --pr {pr})"), empty
    assert "(" not in explain_pull_request(loaded(), pr).empty
