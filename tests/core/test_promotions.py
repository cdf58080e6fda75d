"""Which Promotions wait on a pull request (SPEC §7)."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kargo_bitbucket.core.promotions import awaited_pr_urls, pr_url_key

PR = "https://bitbucket.org/acme/app/pull-requests/42"


def promotion(
    phase: str = "Running",
    current: Any = 1,
    steps: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "state": state or {"wait": {"pr": {"url": PR}}}}
    if current is not None:
        status["currentStep"] = current
    return {
        "spec": {
            "steps": steps
            if steps is not None
            else [{"uses": "git-open-pr", "as": "open"}, {"uses": "git-wait-for-pr", "as": "wait"}]
        },
        "status": status,
    }


def test_running_promotion_at_the_wait_step_waits() -> None:
    assert awaited_pr_urls(promotion()) == {PR}


def test_later_current_step_still_counts() -> None:
    assert awaited_pr_urls(promotion(current=5)) == {PR}


@pytest.mark.parametrize(
    "body",
    [
        promotion(phase="Succeeded"),
        promotion(phase="Pending"),
        promotion(current=0),
        promotion(current=-1),
        promotion(  # -2 would slice off only the last step: no step is at or before -2
            current=-2,
            steps=[
                {"uses": "git-open-pr", "as": "open"},
                {"uses": "git-wait-for-pr", "as": "wait"},
                {"uses": "argocd-update", "as": "sync"},
            ],
        ),
        promotion(current=None),
        promotion(current="1"),
        promotion(steps=[{"uses": "git-open-pr", "as": "open"}, {"uses": "git-wait-for-pr"}]),
        promotion(
            steps=[{"uses": "git-open-pr", "as": "open"}, {"uses": "git-wait-for-pr", "as": ""}]
        ),
        promotion(
            steps=[{"uses": "git-open-pr", "as": "x"}, {"uses": "git-merge-pr", "as": "wait"}]
        ),
        promotion(state={"wait": {"pr": {"id": 42}}}),
        promotion(state={"wait": "done"}),
        promotion(state={"other": {"pr": {"url": PR}}}),
        {"spec": None, "status": None},
        {},
    ],
)
def test_not_waiting(body: dict[str, Any]) -> None:
    assert awaited_pr_urls(body) == frozenset()


@pytest.mark.parametrize(
    "spelling",
    [
        PR,
        PR + "/",
        f"  {PR}\n",
        "HTTPS://BITBUCKET.ORG/acme/app/pull-requests/42",
    ],
)
def test_url_spellings_compare_equal(spelling: str) -> None:
    assert pr_url_key(spelling) == pr_url_key(PR)


def test_path_case_is_significant() -> None:
    assert pr_url_key(PR.replace("acme", "ACME")) != pr_url_key(PR)
    assert pr_url_key(PR + "3") != pr_url_key(PR)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        (
            "https://bitbucket.org]/acme/app/pull-requests/7",
            "https://bitbucket.org]/acme/app/pull-requests/7",
        ),
        ("https://[::1/x/pull-requests/7", "https://[::1/x/pull-requests/7"),
        ("HTTPS://H:99999999/x/7?", "https://h:99999999/x/7?"),
        ("https://h/x/7#", "https://h/x/7#"),
        ("not a url", "not a url"),
    ],
)
def test_malformed_urls_are_compared_as_sent_never_rejected(url: str, key: str) -> None:
    """One malformed URL (in a delivery or a Promotion) must not break anything else."""
    assert pr_url_key(url) == key
    state = {"wait": {"pr": {"url": url}}}
    assert awaited_pr_urls(promotion(state=state)) == {key}


@given(
    st.sampled_from(["https://", "HTTP://", "ssh://", ""]),
    st.text(alphabet="[]:@/?#%. aZ9\t\n"),
)
def test_every_text_has_a_key(scheme: str, rest: str) -> None:
    key = pr_url_key(scheme + rest)
    assert len(key) <= len(scheme + rest)  # it only trims and lower-cases
