"""Whether a pushed ref concerns a subscription, for every strategy (SPEC §6.3, §6.4)."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import pytest

from kargo_bitbucket.core.decision import WarehouseEntry, decide_push
from kargo_bitbucket.core.events import Push
from kargo_bitbucket.core.subscriptions import (
    MAX_TAG_REGEXES,
    REGEX_MEMORY,
    GitSubscription,
    _regex,
    git_subscriptions,
    match_ref,
)

REPO = "https://bitbucket.org/acme/app.git"


def sub(**git: Any) -> GitSubscription:
    (subscription,) = git_subscriptions(
        {"spec": {"subscriptions": [{"git": {"repoURL": REPO, **git}}]}}
    )
    return subscription


def matches(subscription: GitSubscription, ref: str) -> bool:
    return match_ref(subscription, ref).matched


@pytest.mark.parametrize(
    ("git", "ref", "expected"),
    [
        ({}, "refs/heads/main", True),
        ({}, "refs/heads/master", True),
        ({}, "refs/heads/develop", False),
        ({}, "refs/tags/main", False),
        ({"branch": "develop"}, "refs/heads/develop", True),
        ({"branch": "develop"}, "refs/heads/main", False),
        ({"branch": "feature/x"}, "refs/heads/feature/x", True),
        ({"branch": "feature/x"}, "refs/heads/feature/x/y", False),
        ({"branch": "Main"}, "refs/heads/main", False),
        (
            {"branch": "main", "commitSelectionStrategy": "NewestFromBranch"},
            "refs/heads/main",
            True,
        ),
        ({"branch": ""}, "refs/heads/master", True),
        ({"branch": "v1"}, "refs/tags/v1", False),
    ],
)
def test_newest_from_branch(git: dict[str, Any], ref: str, expected: bool) -> None:
    assert matches(sub(**git), ref) is expected


@pytest.mark.parametrize("strategy", ["NewestTag", "Lexical"])
@pytest.mark.parametrize(
    ("git", "ref", "expected"),
    [
        ({}, "refs/tags/anything", True),
        ({}, "refs/heads/main", False),
        ({"allowTagsRegexes": ["^release-"]}, "refs/tags/release-1", True),
        ({"allowTagsRegexes": ["^release-"]}, "refs/tags/pre-release-1", False),
        ({"allowTagsRegexes": ["rel"]}, "refs/tags/pre-release-1", True),  # unanchored search
        ({"allowTagsRegexes": ["^a", "^b"]}, "refs/tags/b1", True),
        ({"ignoreTagsRegexes": ["rc"]}, "refs/tags/v1-rc1", False),
        ({"ignoreTagsRegexes": ["rc"]}, "refs/tags/v1", True),
        ({"allowTagsRegexes": ["^v"], "ignoreTagsRegexes": ["-rc"]}, "refs/tags/v2-rc", False),
        ({"allowTagsRegexes": [r"^v\d+$"]}, "refs/tags/v12", True),
        ({"allowTagsRegexes": [r"^\p{Greek}+$"]}, "refs/tags/αβγ", True),
        ({"allowTagsRegexes": ["(?i)^REL"]}, "refs/tags/release", True),
    ],
)
def test_tag_strategies(strategy: str, git: dict[str, Any], ref: str, expected: bool) -> None:
    assert matches(sub(commitSelectionStrategy=strategy, **git), ref) is expected


@pytest.mark.parametrize(
    ("git", "tag", "expected"),
    [
        ({}, "v1.2.3", True),
        ({}, "1.2.3", True),
        ({}, "not-a-version", False),
        ({}, "1.2", True),
        ({"strictSemvers": True}, "1.2", False),
        ({"strictSemvers": True}, "v1.2.3", True),
        ({"strictSemvers": True}, "1.2.3-rc.1+build.5", True),
        ({"semverConstraint": "^1.0"}, "v1.4.0", True),
        ({"semverConstraint": "^1.0"}, "v2.0.0", False),
        ({"semverConstraint": "^1.0"}, "v1.5.0-rc.1", False),
        ({"semverConstraint": ">=1.5.0-rc.0"}, "v1.5.0-rc.1", True),
        ({"semverConstraint": "~1.2"}, "1.2.9", True),
        ({"semverConstraint": "~1.2"}, "1.3.0", False),
        ({"semverConstraint": "1.2 - 1.4"}, "1.4.5", True),
        ({"semverConstraint": "1.2 - 1.4"}, "1.5.0", False),
        ({"semverConstraint": "<1.0 || >=3"}, "3.1.0", True),
        ({"semverConstraint": "<1.0 || >=3"}, "2.0.0", False),
        ({"semverConstraint": ">=1, <2"}, "1.9.9", True),
        ({"semverConstraint": ">=1 <2"}, "2.0.0", False),
        ({"semverConstraint": "1.x"}, "1.8.0", True),
        ({"semverConstraint": "!=1.2.3"}, "1.2.3", False),
        ({"semverConstraint": "^1.0", "ignoreTagsRegexes": ["^v1\\.4"]}, "v1.4.0", False),
        ({"semverConstraint": "^1.0", "allowTagsRegexes": ["^v"]}, "1.4.0", False),
    ],
)
def test_semver(git: dict[str, Any], tag: str, expected: bool) -> None:
    assert matches(sub(commitSelectionStrategy="SemVer", **git), f"refs/tags/{tag}") is expected


def test_semver_never_matches_branches() -> None:
    assert not matches(sub(commitSelectionStrategy="SemVer"), "refs/heads/1.2.3")


@pytest.mark.parametrize(
    ("git", "ref", "expected", "field"),
    [
        # A broken allow regex would decide: refresh anyway and name it.
        (
            {"commitSelectionStrategy": "NewestTag", "allowTagsRegexes": ["("]},
            "refs/tags/v1",
            True,
            "allowTagsRegexes[0]",
        ),
        # ...unless a working one already allows the tag.
        (
            {"commitSelectionStrategy": "NewestTag", "allowTagsRegexes": ["(", "^v"]},
            "refs/tags/v1",
            True,
            None,
        ),
        # A working ignore regex still rules a tag out.
        (
            {
                "commitSelectionStrategy": "NewestTag",
                "allowTagsRegexes": ["("],
                "ignoreTagsRegexes": ["^v"],
            },
            "refs/tags/v1",
            False,
            None,
        ),
        # A tag strategy never matches a branch, broken parts or not.
        (
            {"commitSelectionStrategy": "NewestTag", "allowTagsRegexes": ["("]},
            "refs/heads/main",
            False,
            None,
        ),
        # Lookahead is not RE2 (Go) syntax: unevaluable.
        (
            {"commitSelectionStrategy": "NewestTag", "ignoreTagsRegexes": ["(?!x)"]},
            "refs/tags/v1",
            True,
            "ignoreTagsRegexes[0]",
        ),
        (
            {"commitSelectionStrategy": "SemVer", "semverConstraint": ">>1"},
            "refs/tags/v1.0.0",
            True,
            "semverConstraint",
        ),
        # A non-version tag is ruled out before the broken constraint matters.
        (
            {"commitSelectionStrategy": "SemVer", "semverConstraint": ">>1"},
            "refs/tags/latest",
            False,
            None,
        ),
        (
            {"commitSelectionStrategy": "NewestTag", "allowTags": "^v"},
            "refs/tags/v1",
            True,
            "allowTags",
        ),
        (
            {"commitSelectionStrategy": "NewestTag", "ignoreTags": ["v1"]},
            "refs/tags/v1",
            True,
            "ignoreTags",
        ),
        # \C (any byte) is C++ RE2 only; Go's regexp, which Kargo uses, rejects it.
        (
            {"commitSelectionStrategy": "NewestTag", "allowTagsRegexes": ["^\\C1"]},
            "refs/tags/x1",
            True,
            "allowTagsRegexes[0]",
        ),
        (
            {"commitSelectionStrategy": "NewestTag", "allowTagsRegexes": ["^\\Q\\C\\E"]},
            "refs/tags/x1",
            False,
            None,
        ),
        ({"commitSelectionStrategy": "Newest"}, "refs/heads/main", True, "commitSelectionStrategy"),
        ({"commitSelectionStrategy": "Newest"}, "refs/tags/v1", True, "commitSelectionStrategy"),
    ],
)
def test_unevaluable_parts(
    git: dict[str, Any], ref: str, expected: bool, field: str | None
) -> None:
    verdict = match_ref(sub(**git), ref)
    assert verdict.matched is expected
    if field is None:
        assert verdict.uncertain is None
    else:
        assert verdict.uncertain is not None and field in verdict.uncertain


@pytest.mark.parametrize(
    ("git", "ref", "reason"),
    [
        (
            {"branch": "main"},
            "refs/heads/develop",
            'branch "develop" does not match subscription branch "main"',
        ),
        ({"branch": "main"}, "refs/heads/main", 'branch "main" matches subscription branch "main"'),
        (
            {"commitSelectionStrategy": "SemVer", "semverConstraint": "^1.0"},
            "refs/tags/v2.0.0",
            'tag "v2.0.0" does not satisfy "^1.0"',
        ),
        (
            {"commitSelectionStrategy": "NewestTag", "ignoreTagsRegexes": ["rc"]},
            "refs/tags/v1-rc",
            'tag "v1-rc": ignoreTagsRegexes "rc" matched',
        ),
    ],
)
def test_reasons_read_as_sentences(git: dict[str, Any], ref: str, reason: str) -> None:
    assert match_ref(sub(**git), ref).reason == reason


def test_problems_name_fields() -> None:
    problems = sub(
        commitSelectionStrategy="SemVer",
        semverConstraint="x>",
        allowTagsRegexes=["["],
        allowTags="v",
    ).problems
    assert any(p.startswith("allowTagsRegexes[0]: invalid regex") for p in problems)
    assert any(p.startswith("semverConstraint: invalid constraint") for p in problems)
    assert any(p.startswith("allowTags: deprecated") for p in problems)


def test_an_unknown_field_is_a_note_naming_the_field_it_may_misspell() -> None:
    """Kargo's CRD leaves subscriptions untyped, so the API server keeps ``brnach:``; Kargo
    ignores it, and so does matching: only the note tells the typo."""
    typo = sub(brnach="release")
    assert typo.notes == (
        "spec.subscriptions[0].git.brnach: unknown field, ignored as Kargo ignores it; "
        "did you mean branch?",
    )
    assert typo.problems == ()
    assert matches(typo, "refs/heads/main") and not matches(typo, "refs/heads/release")
    assert sub(colour="blue").notes == (
        "spec.subscriptions[0].git.colour: unknown field, ignored as Kargo ignores it",
    )


def test_kargos_git_subscription_fields_have_no_notes() -> None:
    documented = {  # Kargo's GitSubscription, as its API reference lists it
        "branch": "main",
        "commitSelectionStrategy": "NewestFromBranch",
        "strictSemvers": True,
        "semverConstraint": "^1.0.0",
        "allowTagsRegexes": ["^v"],
        "ignoreTagsRegexes": ["rc"],
        "expressionFilter": "true",
        "includePaths": ["apps/"],
        "excludePaths": ["docs/"],
        "insecureSkipTLSVerify": False,
        "discoveryLimit": 20,
    }
    assert sub(**documented).notes == ()


def test_many_unknown_fields_are_named_up_to_three_and_counted() -> None:
    many = sub(**{f"extra{i}": i for i in range(5)}, **{"x" * 500: 1})
    assert [note.split(":")[0] for note in many.notes] == [
        "spec.subscriptions[0].git.extra0",
        "spec.subscriptions[0].git.extra1",
        "spec.subscriptions[0].git.extra2",
        "spec.subscriptions[0].git",
    ]
    assert many.notes[-1].endswith(": 3 more unknown fields not listed")
    long = sub(**{"y" * 500: 1}).notes[0]
    assert len(long) < 200 and "…" in long


def test_notes_escape_the_control_characters_of_a_field_name() -> None:
    """explain prints notes on a terminal as they are: a C1 CSI (U+009B), a line separator
    or a right-to-left override in a key the API server kept must come out escaped."""
    odd = sub(**{"br\x9bnach\u2028\u202e": "x"}).notes[0]
    assert odd.isprintable(), odd
    assert odd.startswith('spec.subscriptions[0].git["br\\x9bnach\\u2028\\u202e"]: ')
    body = {
        "metadata": {"namespace": "p", "name": "w"},
        "spec": {"subscriptions": [{"git": {"repoU\x9bRL": REPO}}]},
    }
    (lost,) = WarehouseEntry.from_body(body).notes
    assert lost.isprintable(), lost
    assert "(misspelt as repoU\\x9bRL?)" in lost


def test_a_git_subscription_without_a_url_is_a_note_that_no_push_reaches_it() -> None:
    body = {
        "metadata": {"namespace": "p", "name": "w"},
        "spec": {
            "subscriptions": [
                {"git": {"repoUrl": REPO, "branch": "main"}},
                {"git": {"repoURL": 5}},
                {"git": {"branch": "main"}},
                {"git": {"repoURL": REPO}},
            ]
        },
    }
    entry = WarehouseEntry.from_body(body)
    assert [s.index for s in entry.subscriptions] == [3]
    assert entry.notes == (
        "Warehouse p/w spec.subscriptions[0].git.repoURL: missing (misspelt as repoUrl?), "
        "so no push refreshes this subscription",
        "Warehouse p/w spec.subscriptions[1].git.repoURL: not a string, so no push "
        "refreshes this subscription",
        "Warehouse p/w spec.subscriptions[2].git.repoURL: missing, so no push refreshes "
        "this subscription",
    )
    assert (
        WarehouseEntry.from_body(
            {**body, "spec": {"subscriptions": [{"git": {"repoURL": REPO}}]}}
        ).notes
        == ()
    )


def test_only_git_subscriptions_with_a_url_count() -> None:
    body = {
        "spec": {
            "subscriptions": [
                {"image": {"repoURL": "nginx"}},
                {"chart": {"repoURL": "oci://x"}},
                {"git": {"branch": "main"}},
                {"git": {"repoURL": REPO}},
                "junk",
            ]
        }
    }
    assert [s.index for s in git_subscriptions(body)] == [3]


def test_a_certain_match_wins_over_an_uncertain_one() -> None:
    """No "refreshed anyway" warning when another subscription matches outright (SPEC 6.4)."""
    body = {
        "metadata": {"namespace": "p", "name": "w"},
        "spec": {
            "subscriptions": [
                {"git": {"repoURL": REPO, "commitSelectionStrategy": "NewestTag",
                         "allowTagsRegexes": ["("]}},
                {"git": {"repoURL": REPO, "commitSelectionStrategy": "NewestTag"}},
            ]
        },
    }  # fmt: skip
    warehouse = WarehouseEntry.from_body(body)
    push = Push((REPO,), ("refs/tags/x1",))
    (verdict,) = decide_push(push, lambda found: [warehouse])
    assert verdict.refresh and verdict.warnings == ()
    alone = WarehouseEntry.from_body(
        {**body, "spec": {"subscriptions": body["spec"]["subscriptions"][:1]}}
    )
    (verdict,) = decide_push(push, lambda found: [alone])
    assert verdict.refresh and "allowTagsRegexes[0]" in verdict.warnings[0]


def test_tag_regexes_past_the_warehouse_budget_are_not_compiled_and_refresh_anyway() -> None:
    # Each "[^x]{1,1000}0" takes ~5 ms to compile as the object is read: 2,000 of them held
    # the event loop for seconds at every change of one Warehouse.
    slow = [f"[^x]{{1,1000}}{n}" for n in range(MAX_TAG_REGEXES + 10)]
    git = {"repoURL": REPO, "commitSelectionStrategy": "Lexical"}
    body = {
        "spec": {
            "subscriptions": [
                {"git": {**git, "allowTagsRegexes": slow[:40]}},
                {"git": {**git, "allowTagsRegexes": slow[40:]}},
            ]
        }
    }
    first, second = git_subscriptions(body)
    assert first.problems == ()
    compiled = [p for p in second.allow if p.regex is not None]
    assert len(compiled) == MAX_TAG_REGEXES - 40
    assert second.problems == (  # one line for all of them, not one a regex
        f"allowTagsRegexes[{MAX_TAG_REGEXES - 40}:]: "
        f"not evaluated: more than {MAX_TAG_REGEXES} tag regexes in the Warehouse",
    )
    verdict = match_ref(second, "refs/tags/nothing-matches")
    assert verdict.matched and verdict.uncertain is not None  # refreshed anyway, as SPEC §6.4


def test_a_warehouse_read_again_does_not_compile_its_regexes_again() -> None:
    body = {"spec": {"subscriptions": [{"git": {"repoURL": REPO, "allowTagsRegexes": ["^v1"]}}]}}
    (before,) = git_subscriptions(body)
    (after,) = git_subscriptions(body)
    assert after.allow[0].regex is before.allow[0].regex


def rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def test_a_regex_larger_than_its_memory_is_refused_at_once_and_refreshes_anyway() -> None:
    """At RE2's default 8 MiB one Warehouse of 64 such regexes took 4.1 s to compile and
    85 MiB: a few of them were past the pod's memory limit."""
    huge = [f"^\\p{{L}}{{1,{200 + n}}}$" for n in range(MAX_TAG_REGEXES)]
    before = rss_mib()
    (subscription,) = git_subscriptions(
        {
            "spec": {
                "subscriptions": [
                    {
                        "git": {
                            "repoURL": REPO,
                            "allowTagsRegexes": huge,
                            "commitSelectionStrategy": "NewestTag",
                        }
                    }
                ]
            }
        }
    )
    assert rss_mib() - before < 16
    assert all(p.regex is None for p in subscription.allow)
    assert subscription.problems[0] == (
        # quoted as written, one backslash, so it can be pasted back into the manifest
        "allowTagsRegexes[0]: regex '^\\p{L}{1,200}$' not evaluated: larger than the "
        f"{REGEX_MEMORY >> 20} MiB a regex may use"
    )
    verdict = match_ref(subscription, "refs/tags/v1")
    assert verdict.matched and verdict.uncertain is not None  # refreshed anyway, as SPEC §6.4


def test_matching_many_tags_grows_a_regex_by_its_memory_at_most() -> None:
    """RE2 caches what it learns while matching: 64 ``[^x]{1,1000}0`` grew to 78 MiB over
    3,000 tags at its default limit."""
    slow = [f"[^x]{{1,{900 + n}}}0" for n in range(MAX_TAG_REGEXES)]
    (subscription,) = git_subscriptions(
        {"spec": {"subscriptions": [{"git": {"repoURL": REPO, "allowTagsRegexes": slow}}]}}
    )
    letters = string.ascii_letters + string.digits + "éx"
    draw = random.Random(1)
    tags = ["".join(draw.choices(letters, k=draw.randint(5, 80))) for _ in range(3_000)]
    before = rss_mib()
    for pattern in subscription.allow:
        for tag in tags:
            pattern.regex.search(tag)
    assert rss_mib() - before < MAX_TAG_REGEXES * REGEX_MEMORY / 2**20 / 2


@pytest.mark.parametrize("pattern", ["(?P<é>x)", "(?P<名>v)\\d"])
def test_a_group_name_go_refuses_makes_the_regex_invalid(pattern: str) -> None:
    # C++ RE2 takes non-ASCII group names; Go's regexp (Kargo's) refuses them.
    regex, problem = _regex(pattern)
    assert regex is None and problem is not None and "not ASCII" in problem


@pytest.mark.parametrize("pattern", ["(?P<n>x)", "(?P<_1>x)", "(?<n>x)", "^v\\d+\\.\\d+$"])
def test_group_names_go_takes_compile(pattern: str) -> None:
    assert _regex(pattern)[1] is None


def test_a_broken_regex_is_quoted_as_written_with_control_characters_escaped() -> None:
    (subscription,) = git_subscriptions(
        {
            "spec": {
                "subscriptions": [
                    {
                        "git": {
                            "repoURL": REPO,
                            "commitSelectionStrategy": "NewestTag",
                            "allowTagsRegexes": ["\\d+(", "\x1b["],
                        }
                    }
                ]
            }
        }
    )
    first, second = subscription.problems
    assert first.startswith("allowTagsRegexes[0]: invalid regex '\\d+(': ")
    assert second.startswith("allowTagsRegexes[1]: invalid regex '\\x1b[': ")
    assert "\x1b" not in second
