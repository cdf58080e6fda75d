"""Planning webhooks: where each receiver needs one, and how the existing ones differ."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kargo_bitbucket.core.webhooks import (
    CLOUD_EVENTS,
    CREATE,
    DELETE,
    DUPLICATE,
    INACTIVE,
    MANUAL,
    MIRROR_EVENT,
    MISSING,
    MISSING_EVENTS,
    NO_ACCESS,
    NO_SECRET,
    NONE,
    NOT_SUBSCRIBED,
    SERVER_EVENTS,
    UNREACHABLE,
    UPDATE,
    WORKSPACE,
    WRONG_URL,
    Hook,
    Place,
    Receiver,
    compare,
    desired_hook,
    plan,
    prune_places,
    pull_request_place,
    repository_place,
    unreachable,
)

GUESTBOOK = Place("bitbucket.org", "acme", "guestbook")
SERVER = "https://bitbucket.example.com/bitbucket"
PLATFORM = Place(SERVER, "PLAT", "deploy")
RECEIVER = Receiver("demo", "bb", "https://kargo.example.com/bitbucket/aa", b"s3cret", "demo")
CLUSTER = Receiver("cluster", "all", "https://kargo.example.com/bitbucket/bb", b"x", None)


@pytest.mark.parametrize(
    ("url", "place"),
    [
        ("https://bitbucket.org/acme/guestbook.git", GUESTBOOK),
        ("https://bitbucket.org/acme/guestbook", GUESTBOOK),
        ("https://someone@bitbucket.org/Acme/GuestBook.git/", GUESTBOOK),
        ("git@bitbucket.org:acme/guestbook.git", GUESTBOOK),
        ("ssh://git@bitbucket.org/acme/guestbook.git", GUESTBOOK),
        ("https://bitbucket.org/acme", None),
        ("https://bitbucket.org/acme/guestbook/src/main", None),
        ("https://bitbucket.example.com/bitbucket/scm/plat/deploy.git", PLATFORM),
        ("https://me@Bitbucket.Example.com:443/bitbucket/scm/PLAT/deploy.git", PLATFORM),
        (
            "http://bitbucket.example.com:7990/scm/plat/deploy.git",
            Place("http://bitbucket.example.com:7990", "PLAT", "deploy"),
        ),
        (
            "https://bitbucket.example.com/scm/plat/deploy",
            Place("https://bitbucket.example.com", "PLAT", "deploy"),
        ),
        (
            "ssh://git@bitbucket.example.com:7999/plat/deploy.git",
            Place("https://bitbucket.example.com", "PLAT", "deploy"),
        ),
        ("ssh://git@github.com/acme/guestbook.git", None),
        ("git@bitbucket.example.com:plat/deploy.git", None),
        ("https://github.com/acme/guestbook.git", None),
        ("https://gitlab.example.com/group/sub/project.git", None),
        ("", None),
    ],
)
def test_repository_place(url: str, place: Place | None) -> None:
    assert repository_place(url) == place


def test_ssh_forms_on_a_host_with_credentials_are_data_center() -> None:
    assert repository_place(
        "git@bitbucket.example.com:plat/deploy.git", ["bitbucket.example.com"]
    ) == Place("https://bitbucket.example.com", "PLAT", "deploy")


@pytest.mark.parametrize(
    ("url", "place"),
    [
        ("https://bitbucket.org/acme/guestbook/pull-requests/42", GUESTBOOK),
        ("https://bitbucket.org/Acme/guestbook/pull-requests/42/", GUESTBOOK),
        (
            "https://bitbucket.example.com/bitbucket/projects/PLAT/repos/deploy/pull-requests/7",
            PLATFORM,
        ),
        (
            "https://bitbucket.example.com/projects/plat/repos/deploy/pull-requests/7/overview",
            Place("https://bitbucket.example.com", "PLAT", "deploy"),
        ),
        ("https://bitbucket.example.com/projects/PLAT/repos/deploy/browse", None),
        ("https://bitbucket.org/acme/guestbook/src", None),
        ("https://github.com/acme/guestbook/pull/42", None),
        ("not a url", None),
    ],
)
def test_pull_request_place(url: str, place: Place | None) -> None:
    assert pull_request_place(url) == place


def test_plan_groups_objects_by_repository_and_receiver_scope() -> None:
    warehouses = [
        ("demo", "main", "https://bitbucket.org/acme/guestbook.git"),
        ("demo", "ssh", "git@bitbucket.org:acme/guestbook.git"),
        ("demo", "deploy", "https://bitbucket.example.com/bitbucket/scm/plat/deploy.git"),
        ("demo", "gh", "https://github.com/acme/other.git"),
        ("other", "elsewhere", "https://bitbucket.org/acme/infra.git"),
    ]
    prs = [("demo", "prod.1", "https://bitbucket.org/acme/gitops/pull-requests/3")]
    result = plan([RECEIVER, CLUSTER], warehouses, prs)
    got = [(w.receiver.name, w.place, w.events, w.sources) for w in result.wanted]
    gitops = Place("bitbucket.org", "acme", "gitops")
    infra = Place("bitbucket.org", "acme", "infra")
    assert got == [
        ("bb", gitops, CLOUD_EVENTS, ("Promotion demo/prod.1",)),
        ("bb", GUESTBOOK, CLOUD_EVENTS, ("Warehouse demo/main", "Warehouse demo/ssh")),
        ("bb", PLATFORM, SERVER_EVENTS, ("Warehouse demo/deploy",)),
        ("all", gitops, CLOUD_EVENTS, ("Promotion demo/prod.1",)),
        ("all", GUESTBOOK, CLOUD_EVENTS, ("Warehouse demo/main", "Warehouse demo/ssh")),
        ("all", infra, CLOUD_EVENTS, ("Warehouse other/elsewhere",)),
        ("all", PLATFORM, SERVER_EVENTS, ("Warehouse demo/deploy",)),
    ]
    assert result.skipped == ["Warehouse demo/gh: https://github.com/acme/other.git"]


def test_mirrors_add_the_mirror_event_to_data_center_hooks_only() -> None:
    warehouses = [
        ("demo", "a", "https://bitbucket.org/acme/guestbook.git"),
        ("demo", "b", "https://bitbucket.example.com/bitbucket/scm/plat/deploy.git"),
    ]
    events = {w.place: w.events for w in plan([RECEIVER], warehouses, [], mirrors=True).wanted}
    assert events == {GUESTBOOK: CLOUD_EVENTS, PLATFORM: (*SERVER_EVENTS, MIRROR_EVENT)}


def test_workspace_scope_wants_one_hook_per_workspace_or_project() -> None:
    warehouses = [
        ("demo", "a", "https://bitbucket.org/acme/guestbook.git"),
        ("demo", "b", "https://bitbucket.org/acme/infra.git"),
        ("demo", "c", "https://bitbucket.example.com/bitbucket/scm/plat/deploy.git"),
    ]
    wanted = plan([RECEIVER], warehouses, [], scope=WORKSPACE).wanted
    assert [(w.place, len(w.sources)) for w in wanted] == [
        (Place("bitbucket.org", "acme"), 2),
        (Place(SERVER, "PLAT"), 1),
    ]
    assert wanted[0].place.label == "bitbucket.org/acme"


def test_labels_name_the_host_and_path() -> None:
    assert GUESTBOOK.label == "bitbucket.org/acme/guestbook"
    assert PLATFORM.label == f"{SERVER} PLAT/deploy"


def _wanted(*receivers: Receiver) -> list:
    urls = [("demo", "main", "https://bitbucket.org/acme/guestbook.git")]
    return plan(list(receivers), urls, []).wanted


def good(receiver: Receiver = RECEIVER, **changes: object) -> Hook:
    fields: dict = {
        "marker": receiver.marker,
        "url": receiver.url,
        "events": frozenset(CLOUD_EVENTS),
        "active": True,
        "secret_set": True,
        "id": "{1}",
    }
    return Hook(**(fields | changes))


@pytest.mark.parametrize(
    ("hooks", "problems", "action"),
    [
        ([good()], (), NONE),
        ([good(events=frozenset({*CLOUD_EVENTS, "issue:created"}))], (), NONE),
        ([], (MISSING,), CREATE),
        ([good(url="https://kargo.example.com/bitbucket/old")], (WRONG_URL,), UPDATE),
        ([good(events=frozenset({"repo:push"}))], (MISSING_EVENTS,), UPDATE),
        ([good(active=False)], (INACTIVE,), UPDATE),
        ([good(secret_set=False)], (NO_SECRET,), UPDATE),
        (
            [good(url="https://old", events=frozenset(), active=False, secret_set=False)],
            (WRONG_URL, MISSING_EVENTS, INACTIVE, NO_SECRET),
            UPDATE,
        ),
        # The user's own hook with our URL: reported, never changed, none created beside it.
        ([good(marker="Kargo (by hand)")], (), NONE),
        ([good(marker="Kargo (by hand)", active=False)], (INACTIVE,), MANUAL),
        # Another receiver's marked hook is its own, even when it has this URL.
        ([good(marker="kargo cluster/all")], (MISSING,), CREATE),
        # Someone else's hook to another URL is not ours and not a match.
        ([good(marker="Jenkins", url="https://ci.example.com/hook")], (MISSING,), CREATE),
        ("403 Forbidden", (NO_ACCESS,), MANUAL),
    ],
)
def test_compare_one_repository(hooks: list[Hook] | str, problems: tuple, action: str) -> None:
    (finding,) = compare(_wanted(RECEIVER), {GUESTBOOK: hooks})
    assert (finding.problems, finding.action) == (problems, action)
    assert finding.status == (", ".join(problems) or "ok")


def test_compare_names_the_missing_events_and_the_hook_to_fix_by_hand() -> None:
    (finding,) = compare(_wanted(RECEIVER), {GUESTBOOK: [good(events=frozenset({"repo:push"}))]})
    assert finding.detail == "lacks pullrequest:fulfilled, pullrequest:rejected"
    assert finding.hook_id == "{1}"
    (manual,) = compare(_wanted(RECEIVER), {GUESTBOOK: [good(marker="x", active=False)]})
    assert manual.detail == (
        "hook {1} was not created by kargo-bitbucket: fix it by hand, or delete it for sync "
        "to create ours"
    )
    (fine,) = compare(_wanted(RECEIVER), {GUESTBOOK: [good(marker="x")]})
    assert (fine.status, fine.detail) == ("ok", "hook {1} was not created by kargo-bitbucket")


@pytest.mark.parametrize(
    ("url", "place", "reachable"),
    [
        ("https://kargo.example.com/bitbucket/aa", GUESTBOOK, True),
        ("https://203.0.113.7/bitbucket/aa", PLATFORM, True),
        ("http://8.8.8.8:8080/bitbucket/aa", GUESTBOOK, True),
        ("http://127.0.0.1:8080/bitbucket/aa", GUESTBOOK, False),
        ("http://localhost:8080/bitbucket/aa", GUESTBOOK, False),
        ("http://[::1]:8080/bitbucket/aa", GUESTBOOK, False),
        ("http://10.1.2.3/bitbucket/aa", GUESTBOOK, False),
        ("http://192.168.1.20/bitbucket/aa", GUESTBOOK, False),
        ("http://0.0.0.0:8787/bitbucket/aa", GUESTBOOK, False),
        # Data Center sits on the company's network: a private address is fine, this
        # machine's own is not; 0.0.0.0 never.
        ("http://10.1.2.3/bitbucket/aa", PLATFORM, True),
        ("http://127.0.0.1:8080/bitbucket/aa", PLATFORM, False),
        ("http://[::]:8080/bitbucket/aa", PLATFORM, False),
        # Spellings a resolver reads as loopback or unspecified too.
        ("http://[::ffff:127.0.0.1]:8080/bitbucket/aa", PLATFORM, False),
        ("http://localhost./bitbucket/aa", PLATFORM, False),
        ("http://kargo.localhost/bitbucket/aa", PLATFORM, False),
        ("http://127.1/bitbucket/aa", PLATFORM, False),
        ("http://2130706433/bitbucket/aa", PLATFORM, False),
        ("http://0/bitbucket/aa", PLATFORM, False),
        ("http://0.0.0.0./bitbucket/aa", PLATFORM, False),
        ("http://localhost.example.com/bitbucket/aa", PLATFORM, True),
    ],
)
def test_unreachable_receiver_urls(url: str, place: Place, reachable: bool) -> None:
    why = unreachable(url, place)
    assert (why == "") is reachable, why
    if why:
        assert "serve --base-url" in why


@pytest.mark.parametrize("place", [GUESTBOOK, PLATFORM])
def test_a_bitbucket_on_this_machine_reaches_it_but_not_an_unspecified_address(
    place: Place,
) -> None:
    assert unreachable("http://127.0.0.1:8080/bitbucket/aa", place, from_this_machine=True) == ""
    assert unreachable("http://0.0.0.0:8080/bitbucket/aa", place, from_this_machine=True)


def test_a_hook_to_an_unreachable_url_is_neither_created_nor_updated() -> None:
    local = Receiver("demo", "bb", "http://127.0.0.1:8080/bitbucket/aa", b"s3cret", "demo")
    (missing,) = compare(_wanted(local), {GUESTBOOK: []})
    assert (missing.problems, missing.action) == ((UNREACHABLE, MISSING), MANUAL)
    assert missing.detail.startswith("Bitbucket Cloud cannot reach 127.0.0.1")
    (present,) = compare(_wanted(local), {GUESTBOOK: [good(local)]})
    assert (present.problems, present.action, present.hook_id) == ((UNREACHABLE,), MANUAL, "{1}")
    (lacking,) = compare(_wanted(local), {GUESTBOOK: [good(local, events=frozenset())]})
    assert lacking.detail.endswith("; lacks repo:push, pullrequest:fulfilled, pullrequest:rejected")
    (double,) = compare(_wanted(local), {GUESTBOOK: []}, local_servers={"bitbucket.org"})
    assert (double.problems, double.action) == ((MISSING,), CREATE)


def test_each_receiver_has_its_own_hook_per_repository() -> None:
    hooks = [good(CLUSTER, id="{2}")]
    findings = compare(_wanted(RECEIVER, CLUSTER), {GUESTBOOK: hooks})
    assert [(f.marker, f.action) for f in findings] == [
        ("kargo demo/bb", CREATE),
        ("kargo cluster/all", NONE),
    ]


def test_prune_deletes_only_our_hooks_that_nothing_wants() -> None:
    infra = Place("bitbucket.org", "acme", "infra")
    existing: dict = {
        GUESTBOOK: [
            good(id="{1}"),
            good(id="{dup}"),
            good(marker="kargo demo/removed", id="{old}"),
            good(marker="Jenkins", url="https://ci", id="{ci}"),
        ],
        infra: [good(id="{3}"), good(marker="kargo by hand", id="{4}")],
        Place("bitbucket.org", "acme", "locked"): "403 Forbidden",
    }
    findings = compare(_wanted(RECEIVER), existing, prune=True)
    deletions = {(f.place.slug, f.hook_id, f.problems) for f in findings if f.action == DELETE}
    assert deletions == {
        ("guestbook", "{dup}", (DUPLICATE,)),
        ("guestbook", "{old}", (NOT_SUBSCRIBED,)),
        ("infra", "{3}", (NOT_SUBSCRIBED,)),
    }
    assert not [f for f in compare(_wanted(RECEIVER), existing) if f.action == DELETE]


def test_prune_places_are_the_other_repositories_of_each_container() -> None:
    containers = {
        Place("bitbucket.org", "acme"): ["guestbook", "infra", "web"],
        Place(SERVER, "PLAT"): ["deploy"],
    }
    assert prune_places(_wanted(RECEIVER), containers) == [
        Place("bitbucket.org", "acme", "infra"),
        Place("bitbucket.org", "acme", "web"),
        Place(SERVER, "PLAT", "deploy"),
    ]


def test_desired_hook_is_active_with_our_marker_url_and_events() -> None:
    (want,) = plan(
        [RECEIVER], [("demo", "d", "https://bitbucket.example.com/bitbucket/scm/plat/deploy")], []
    ).wanted
    assert desired_hook(want) == Hook(
        marker="kargo demo/bb",
        url=RECEIVER.url,
        events=frozenset(SERVER_EVENTS),
        active=True,
        secret_set=True,
    )


MARKERS = st.sampled_from(["kargo demo/bb", "kargo cluster/all", "kargo demo/gone", "Jenkins"])
URLS = st.sampled_from([RECEIVER.url, CLUSTER.url, "https://old", "https://ci"])
HOOKS = st.lists(
    st.builds(
        Hook,
        marker=MARKERS,
        url=URLS,
        events=st.frozensets(st.sampled_from([*CLOUD_EVENTS, "issue:created"])),
        active=st.booleans(),
        secret_set=st.booleans(),
    ),
    max_size=4,
)
INFRA = Place("bitbucket.org", "acme", "infra")


def _sync(existing: dict, findings: list) -> dict:
    """Bitbucket after a sync --apply --prune: what the findings' actions do to the hooks."""
    after = {place: list(hooks) for place, hooks in existing.items()}
    for finding in findings:
        hooks = after[finding.place]
        if finding.action in (UPDATE, DELETE):
            hooks[:] = [h for h in hooks if h.id != finding.hook_id]
        if finding.action in (CREATE, UPDATE):
            hooks.append(replace(desired_hook(finding.wanted), id=finding.hook_id or "new"))
    return after


@settings(max_examples=300, deadline=None)
@given(guestbook=HOOKS, infra=HOOKS)
def test_one_sync_converges_and_never_touches_other_hooks(guestbook: list, infra: list) -> None:
    existing = {
        GUESTBOOK: [replace(h, id=f"g{i}") for i, h in enumerate(guestbook)],
        INFRA: [replace(h, id=f"i{i}") for i, h in enumerate(infra)],
    }
    wanted = _wanted(RECEIVER, CLUSTER)
    after = _sync(existing, compare(wanted, existing, prune=True))
    again = compare(wanted, after, prune=True)
    assert all(f.action in (NONE, MANUAL) for f in again)
    for place, hooks in existing.items():
        theirs = [h for h in hooks if not h.marker.startswith("kargo ")]
        assert [h for h in after[place] if not h.marker.startswith("kargo ")] == theirs
    assert not [h for h in after[INFRA] if h.marker.startswith("kargo ")]
    for finding in again:
        if finding.action == MANUAL:
            assert not any(h.marker == finding.marker for h in after[finding.place])
