"""Payloads built by ``send`` are ones our parser, like Bitbucket's, reads back correctly."""

import pytest

from kargo_bitbucket.core.events import PullRequestClosed, Push, parse_event
from kargo_bitbucket.core.payloads import PayloadArgumentError, build_payload, is_cloud_url

REPO = "https://bitbucket.org/acme/app.git"


@pytest.mark.parametrize("event", ["repo:push", "repo:refs_changed", "mirror:repo_synchronized"])
def test_push_refs_round_trip(event: str) -> None:
    body = build_payload(event, repo=REPO, refs=["main", "refs/tags/v1.0.0", "refs/heads/x/y"])
    parsed = parse_event(event, body)
    assert isinstance(parsed, Push)
    assert parsed.refs == ("refs/heads/main", "refs/tags/v1.0.0", "refs/heads/x/y")
    assert parsed.repo_urls[0].removesuffix(".git") == REPO.removesuffix(".git")


@pytest.mark.parametrize(
    "event", ["pullrequest:fulfilled", "pullrequest:rejected", "pr:merged", "pr:declined"]
)
def test_pr_url_round_trip(event: str) -> None:
    pr = "https://bitbucket.org/acme/app/pull-requests/7"
    assert parse_event(event, build_payload(event, pr=pr)) == PullRequestClosed(pr)


def test_missing_arguments_are_named() -> None:
    with pytest.raises(PayloadArgumentError, match="repository URL"):
        build_payload("repo:push")
    with pytest.raises(PayloadArgumentError, match="pull request URL"):
        build_payload("pr:merged")


@pytest.mark.parametrize(
    ("url", "cloud"),
    [
        ("https://bitbucket.org/a/b", True),
        ("git@bitbucket.org:a/b.git", True),
        ("https://bitbucket.example.com/scm/a/b.git", False),
        ("ssh://git@bitbucket.example.com:7999/a/b.git", False),
    ],
)
def test_cloud_urls(url: str, cloud: bool) -> None:
    assert is_cloud_url(url) is cloud
