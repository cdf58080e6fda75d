"""Which Warehouses a push refreshes, and why, whatever the size of the push (SPEC §6, issue 9)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kargo_bitbucket.core.decision import (
    PUSH_URLS,
    REF_REASONS,
    Verdict,
    WarehouseEntry,
    decide_push,
    pushed_identities,
)
from kargo_bitbucket.core.events import Push
from kargo_bitbucket.core.subscriptions import REGEX_CHECKS, TAG_CHECKS, match_ref

REPO = "https://bitbucket.org/acme/app"


def warehouse(name: str, *gits: dict[str, Any]) -> WarehouseEntry:
    subscriptions = [{"git": {"repoURL": REPO, **git}} for git in gits]
    return WarehouseEntry.from_body(
        {"metadata": {"namespace": "p", "name": name}, "spec": {"subscriptions": subscriptions}}
    )


def decide(refs: tuple[str, ...] | None, *warehouses: WarehouseEntry) -> list[Verdict]:
    return decide_push(Push((REPO,), refs), lambda found: warehouses)


def by_definition(entry: WarehouseEntry, refs: tuple[str, ...]) -> tuple[bool, str, int]:
    """SPEC §6.3 read literally: every subscription against every ref, in order."""
    uncertain: tuple[bool, str, int] | None = None
    for subscription in entry.subscriptions:
        for ref in refs:
            verdict = match_ref(subscription, ref)
            if verdict.matched and not verdict.uncertain:
                return True, verdict.reason, 0
            if verdict.matched and uncertain is None:
                uncertain = (True, verdict.reason, len(subscription.problems))
    return uncertain or (False, "", 0)


gits = st.fixed_dictionaries(
    {},
    optional={
        # 1.2 and True: what a cluster holds for an unquoted `branch: 1.20` or `branch: y`
        "branch": st.sampled_from(["main", "dev", "release", 1.2, True]),
        "commitSelectionStrategy": st.sampled_from(
            ["NewestFromBranch", "SemVer", "NewestTag", "Lexical", "Digest"]
        ),
        "semverConstraint": st.sampled_from(["^1.0.0", ">=2", "x>"]),
        "strictSemvers": st.booleans(),
        "allowTagsRegexes": st.lists(st.sampled_from(["^v", "rc", "("]), max_size=2),
        "ignoreTagsRegexes": st.lists(st.sampled_from(["rc", "^v0", "["]), max_size=2),
        "allowTags": st.sampled_from(["", "v"]),
    },
)
refs = st.lists(
    st.sampled_from(
        ["refs/heads/main", "refs/heads/dev", "refs/heads/x", "refs/tags/v1.2.3",
         "refs/tags/v2.0.0-rc1", "refs/tags/v0.1", "refs/tags/1.0", "refs/tags/app", "refs/x/y"]
    ),
    min_size=1,
    max_size=8,
    unique=True,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(subscriptions=st.lists(gits, min_size=1, max_size=3), pushed=refs)
def test_verdicts_are_those_of_every_ref_against_every_subscription(
    subscriptions: list[dict[str, Any]], pushed: list[str]
) -> None:
    """The indexed matching decides and explains exactly as the literal reading of §6.3."""
    entry = warehouse("w", *subscriptions)
    (verdict,) = decide(tuple(pushed), entry)
    refresh, reason, problems = by_definition(entry, tuple(pushed))
    assert verdict.refresh is refresh
    if refresh:
        assert verdict.reason == reason
        assert len(verdict.warnings) == problems
    else:
        more = re.search(r"; and (\d+) more refs$", verdict.reason)
        shown = len(pushed) - (int(more.group(1)) if more else 0)
        assert shown >= 1
        expected = dict.fromkeys(
            match_ref(s, r).reason for r in pushed[:shown] for s in entry.subscriptions
        )
        assert verdict.reason == "; ".join(expected) + (more.group(0) if more else "")
        assert len(verdict.reason) <= 512


def test_a_branch_that_is_not_a_string_refreshes_on_any_branch_push_with_a_warning() -> None:
    """The API server takes `branch: 1.20` as the number 1.2 (Kargo's CRD leaves
    subscriptions untyped); it used to be read as no branch at all, i.e. main or master."""
    entry = warehouse("w", {"branch": 1.2})
    (verdict,) = decide(("refs/tags/v1", "refs/heads/1.20"), entry)
    assert verdict.refresh
    assert verdict.reason == 'branch "1.20" refreshes anyway: branch cannot be evaluated'
    (warning,) = verdict.warnings
    assert warning.startswith("Warehouse p/w spec.subscriptions[0].git.branch: ")
    assert "1.2" in warning and "quote" in warning and warning.endswith("refreshed anyway")
    assert '"1.2"' not in warning  # what was written (1.20) is lost: no name to paste back
    (tag_only,) = decide(("refs/tags/v1",), entry)
    assert not tag_only.refresh
    assert tag_only.reason == (
        'tag "v1" is not a branch (subscription branch, which cannot be evaluated)'
    )


def test_a_tag_subscription_is_not_warned_about_its_branch() -> None:
    """Kargo ignores ``branch`` when it follows tags: a refresh-anyway warning of another
    field must not also blame it."""
    entry = warehouse(
        "w", {"branch": 1.2, "commitSelectionStrategy": "SemVer", "semverConstraint": "x>"}
    )
    (verdict,) = decide(("refs/tags/v1.0.0",), entry)
    assert verdict.refresh
    (warning,) = verdict.warnings
    assert ".semverConstraint: " in warning and ".branch" not in warning


class CountedRefs(tuple[str, ...]):
    """Pushed refs that count how many times they are read from the start."""

    reads = 0

    def __iter__(self) -> Iterator[str]:
        CountedRefs.reads += 1
        return super().__iter__()


def test_branches_that_cannot_be_evaluated_read_the_push_once_not_once_each() -> None:
    """SPEC §4: a delivery's cost is bounded whatever refs times candidates. Each subscription
    whose branch is not a string looked through the refs for the first branch: 30,000 tags
    pushed to 1,000 such Warehouses took 2.3 s."""
    pushed = CountedRefs((*(f"refs/tags/v1.{i}.0" for i in range(1_000)), "refs/heads/1.20"))
    entries = [warehouse(f"w{i}", {"branch": 1.2}) for i in range(100)]
    CountedRefs.reads = 0
    verdicts = decide(pushed, *entries)
    assert all(v.refresh for v in verdicts) and len(verdicts) == 100
    assert verdicts[0].reason == 'branch "1.20" refreshes anyway: branch cannot be evaluated'
    assert CountedRefs.reads <= 2  # indexed once, and searched for a branch once


def test_the_first_matching_ref_in_push_order_names_the_reason() -> None:
    (verdict,) = decide(("refs/heads/master", "refs/heads/main"), warehouse("w", {}))
    assert verdict.reason == 'branch "master" matches default branch "main" or "master"'


def test_a_huge_push_that_matches_nothing_names_twenty_refs_and_counts_the_rest() -> None:
    """Issue 9: 10,000 refs to 1,008 Warehouses built a 933 MB history row from its reasons."""
    pushed = tuple(f"refs/heads/feature-{i}" for i in range(10_000))
    warehouses = [warehouse(f"w{i}", {"branch": f"release-{i}"}) for i in range(1_000)]
    verdicts = decide(pushed, *warehouses)
    assert len(verdicts) == 1_000 and not any(v.refresh for v in verdicts)
    reason = verdicts[7].reason
    assert reason.startswith('branch "feature-0" does not match subscription branch "release-7"')
    shown = reason.count("does not match")
    assert 1 <= shown <= REF_REASONS and len(reason) <= 512
    assert reason.endswith(f"; and {10_000 - shown} more refs")


def test_a_ref_name_of_a_million_characters_is_cut_in_every_reason() -> None:
    """Each candidate's reason quoted the pushed names whole: a 2 MB branch name to 300
    Warehouses on other branches took the server from 47 to 667 MB."""
    branch, tag = "b" * 1_000_000, "v1.0.0-" + "t" * 1_000_000
    pushed = (f"refs/heads/{branch}", f"refs/tags/{tag}", "refs/x/" + "r" * 1_000_000)
    warehouses = [
        warehouse("other-branch", {"branch": "main"}),
        warehouse("same-branch", {"branch": branch}),
        warehouse("tags", {"commitSelectionStrategy": "NewestTag"}),
        warehouse("semver", {"commitSelectionStrategy": "SemVer", "semverConstraint": "^2"}),
        warehouse("digest", {"commitSelectionStrategy": "Digest"}),
    ]
    verdicts = {v.name: v for v in decide(pushed, *warehouses)}
    assert not verdicts["other-branch"].refresh and not verdicts["semver"].refresh
    assert verdicts["same-branch"].refresh and verdicts["tags"].refresh
    assert verdicts["digest"].refresh
    for name, verdict in verdicts.items():
        # a match quotes the subscription's own branch (the operator's), twice
        limit = 2 * len(branch) + 100 if name == "same-branch" else 1_000
        assert len(verdict.reason) < limit, (name, verdict.reason[:300])
    assert verdicts["tags"].reason.startswith('tag "v1.0.0-ttt')
    assert "…" in verdicts["other-branch"].reason


def test_a_huge_push_still_refreshes_every_warehouse_one_of_its_refs_matches() -> None:
    pushed = (*(f"refs/tags/v1.{i}.0" for i in range(10_000)), "refs/heads/release-3")
    warehouses = [
        warehouse("branch", {"branch": "release-3"}),
        warehouse("semver", {"commitSelectionStrategy": "SemVer", "semverConstraint": "^1.9999"}),
        warehouse("other", {"commitSelectionStrategy": "SemVer", "semverConstraint": "^2"}),
    ]
    verdicts = {v.name: v for v in decide(pushed, *warehouses)}
    assert verdicts["branch"].refresh and verdicts["semver"].refresh
    assert verdicts["semver"].reason == 'tag "v1.9999.0" satisfies "^1.9999"'
    assert not verdicts["other"].refresh


def test_a_push_of_more_tags_than_one_delivery_judges_refreshes_the_rest_anyway() -> None:
    """SPEC §4: a delivery's cost is bounded whatever refs times candidates. 36,000 tags pushed
    to 200 Warehouses with a tag regex each were answered after 48 s, each pair searched."""
    tags = 10_000
    pushed = (*(f"refs/tags/other/v1.{i}.0" for i in range(tags)), "refs/heads/main")
    services = [
        warehouse(f"svc{i}", {"commitSelectionStrategy": "NewestTag", "allowTagsRegexes": [
            f"^svc{i}/"]}) for i in range(200)
    ]  # fmt: skip
    verdicts = decide(pushed, *services, warehouse("dev", {"branch": "dev"}))
    judged = TAG_CHECKS // ((1 + REGEX_CHECKS) * tags)  # each tag examined, and its regex
    assert [v.name for v in verdicts if not v.refresh] == [
        *(f"svc{i}" for i in range(judged)),
        "dev",  # branch subscriptions cost no tag checks: still judged
    ]
    anyway = [v for v in verdicts if v.refresh]
    assert len(anyway) == 200 - judged
    for verdict in anyway:  # says why, as SPEC §6.4 asks of a field it cannot evaluate
        assert verdict.reason.startswith("refreshed anyway: ") and f"{tags} tags" in verdict.reason


def test_a_push_of_one_tag_judges_every_one_of_many_tag_subscriptions() -> None:
    """Each subscription pays for the tags it examines: one tag costs each a few checks, not
    a page of 500, so a small push never runs out (it refreshed 50 that cannot match)."""
    services = [
        warehouse(f"svc{i}", {"commitSelectionStrategy": "NewestTag", "allowTagsRegexes": [
            f"^svc{i}/"]}) for i in range(TAG_CHECKS // 500)
    ]  # fmt: skip
    verdicts = decide(("refs/tags/svc3/v1.0.0",), *services)
    assert [v.name for v in verdicts if v.refresh] == ["svc3"]


def test_a_push_naming_thousands_of_clone_links_is_known_by_its_first_ones() -> None:
    """A signed Data Center payload of 30,000 clone links held the event loop 110 ms while
    each was identified; Data Center sends two."""
    links = (
        "ssh://git@bitbucket.example.com:7999/acme/app.git",
        "https://bitbucket.example.com/scm/acme/app.git",
        *(f"https://bitbucket.example.com/scm/acme/other-{i}.git" for i in range(30_000)),
    )
    pushed = pushed_identities(Push(links, ("refs/heads/main",)))
    assert list(pushed.values()) == list(links[:PUSH_URLS])
    assert "bitbucket.example.com/scm/acme/app" in pushed


def test_warehouses_of_the_same_shape_each_get_their_own_verdict() -> None:
    """Judging one tag rule once per push must not leak one Warehouse's URL into another's."""
    same = {"commitSelectionStrategy": "NewestTag", "allowTagsRegexes": ["^v"]}
    spelled = WarehouseEntry.from_body(
        {
            "metadata": {"namespace": "p", "name": "ssh"},
            "spec": {"subscriptions": [{"git": {"repoURL": "git@bitbucket.org:acme/app", **same}}]},
        }
    )
    plain, other = decide(("refs/tags/v1",), warehouse("plain", same), spelled)
    assert plain.reason == 'tag "v1" is accepted by the NewestTag subscription'
    assert other.reason.endswith(
        "(subscribed as git@bitbucket.org:acme/app, matched by repository identity)"
    )


def test_refs_unknown_refreshes_every_subscriber() -> None:
    (verdict,) = decide(None, warehouse("w", {"branch": "dev"}))
    assert verdict.refresh
