"""Tests for kargo_bitbucket.core.events: the corpus, every §5 field, and fuzzing."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kargo_bitbucket.core import events as events_module
from kargo_bitbucket.core.events import (
    HANDLED_EVENTS,
    InvalidPayload,
    NoPullRequestURL,
    NoRepositoryURL,
    PullRequestClosed,
    Push,
    is_handled,
    is_ping,
    parse_event,
)
from tests.builders import corpus_event, json_paths
from tests.support import corpus_dir

# --------------------------------------------------------------------------- corpus


CORPUS = corpus_dir()
CORPUS_ABSENT = f"Bitbucket payload corpus absent at {CORPUS} (set KARGO_BITBUCKET_PAYLOADS)"
CORPUS_FILES = sorted(p.name for p in CORPUS.glob("*.json")) if CORPUS.is_dir() else []
needs_corpus = pytest.mark.skipif(not CORPUS_FILES, reason=CORPUS_ABSENT)


def corpus_files_param() -> list[Any]:
    return CORPUS_FILES or [pytest.param("absent", marks=pytest.mark.skip(reason=CORPUS_ABSENT))]


def read(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@needs_corpus
def test_prefix_table_agrees_with_sources_md() -> None:
    rows = re.findall(
        r"^\| `([^`]+\.json)` \| ([a-z_]+:[a-z_]+) \|",
        (CORPUS / "SOURCES.md").read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    listed = dict(rows)
    assert len(listed) == len(rows), "a file is listed twice in SOURCES.md"
    assert sorted(listed) == CORPUS_FILES, "SOURCES.md and the directory disagree"
    assert {name: corpus_event(name) for name in listed} == listed


def expected_from_json(event: str, data: dict[str, Any]) -> Push | PullRequestClosed | type:
    """A deliberately naive oracle over the stdlib-decoded JSON (trusts the corpus shape)."""
    if event == "repo:push":
        links = data["repository"].get("links") or {}
        urls = (links["html"]["href"],) if "html" in links else ()
        refs: list[str] = []
        for change in data["push"]["changes"]:
            side = change["new"] if change["new"] is not None else change["old"]
            kind = "tags" if side["type"] in ("tag", "annotated_tag") else "heads"
            refs.append(f"refs/{kind}/{side['name']}")
        return Push(urls, tuple(dict.fromkeys(refs)) or None) if urls else NoRepositoryURL
    if event in ("repo:refs_changed", "mirror:repo_synchronized"):
        links = data["repository"].get("links") or {}
        urls = tuple(dict.fromkeys(c["href"] for c in links.get("clone", [])))
        ids = [c["ref"]["id"] if "ref" in c else c["refId"] for c in data["changes"]]
        unknown = data.get("refLimitExceeded") is True or not ids
        refs_or_none = None if unknown else tuple(dict.fromkeys(ids))
        return Push(urls, refs_or_none) if urls else NoRepositoryURL
    if event.startswith("pullrequest:"):
        return PullRequestClosed(data["pullrequest"]["links"]["html"]["href"])
    links = data["pullRequest"].get("links")
    return PullRequestClosed(links["self"][0]["href"]) if links else NoPullRequestURL


@pytest.mark.parametrize("name", corpus_files_param())
def test_every_corpus_file_parses_for_its_event_key(name: str) -> None:
    event = corpus_event(name)
    body = read(name)
    if event == "diagnostics:ping":
        assert is_ping(event) and not is_handled(event)
        with pytest.raises(ValueError) as info:
            parse_event(event, body)
        assert not isinstance(info.value, InvalidPayload)
        return
    assert is_handled(event)
    expected = expected_from_json(event, json.loads(body))
    if isinstance(expected, type):
        with pytest.raises(expected):
            parse_event(event, body)
    else:
        assert parse_event(event, body) == expected


CONCRETE: dict[str, Push | PullRequestClosed | type] = {
    "cloud_repo_push_tag.json": Push(
        ("https://bitbucket.org/amuniz/test-repos",), ("refs/tags/simple-tag",)
    ),
    "cloud_repo_push_tag_annotated.json": Push(
        ("https://bitbucket.org/amuniz/test-repos",), ("refs/tags/test-tag",)
    ),
    "cloud_repo_push_delete.json": Push(
        ("https://bitbucket.org/amuniz/test-repos",), ("refs/heads/feature/test",)
    ),
    "cloud_repo_push_tag_delete.json": Push(
        ("https://bitbucket.org/amuniz/test-repos",), ("refs/tags/test",)
    ),
    "cloud_repo_push_multiple_changes.json": Push(
        ("https://bitbucket.org/cloudbeers/temp",),
        ("refs/heads/main", "refs/heads/manchu", "refs/tags/v0.1"),
    ),
    "cloud_repo_push_docs_example.json": Push(
        ("https://api.bitbucket.org/bitbucket/bitbucket",), ("refs/heads/name-of-branch",)
    ),
    "server_repo_refs_changed_delete_signed.json": Push(
        (
            "http://localhost:7990/bitbucket/scm/amuniz/test-repos.git",
            "ssh://git@localhost:7999/amuniz/test-repos.git",
        ),
        ("refs/heads/feature/BB-1",),
    ),
    "server_repo_refs_changed_tag_delete.json": Push(
        (
            "http://localhost:7990/bitbucket/scm/amuniz/test-repos.git",
            "ssh://git@localhost:7999/amuniz/test-repos.git",
        ),
        ("refs/tags/simple-tag",),
    ),
    "server_repo_refs_changed_multiple.json": Push(
        (
            "ssh://git@139.59.64.214:7999/sbox/sandbox.git",
            "http://139.59.64.214:7990/scm/sbox/sandbox.git",
        ),
        ("refs/heads/branch1", "refs/heads/master"),
    ),
    "server_repo_refs_changed_delete_personal.json": Push(
        (
            "ssh://git@server.bitbucket.local:7999/~gopher/webhook-test.git",
            "https://server.bitbucket.local/scm/~gopher/webhook-test.git",
        ),
        ("refs/heads/feature/wip",),
    ),
    "server_mirror_repo_synchronized.json": Push(
        (
            "ssh://git@localhost:7999/amuniz/test-repos.git",
            "http://localhost:7990/scm/amuniz/test-repos.git",
        ),
        ("refs/heads/main",),
    ),
    "server_mirror_repo_synchronized_ref_limit_exceeded.json": Push(
        (
            "ssh://git@localhost:7999/amuniz/test-repos.git",
            "http://localhost:7990/scm/amuniz/test-repos.git",
        ),
        None,
    ),
    "server_repo_refs_changed_v5_no_links.json": NoRepositoryURL,
    "cloud_pullrequest_fulfilled.json": PullRequestClosed(
        "https://bitbucket.org/cloudbeers/temp/pull-requests/2"
    ),
    "cloud_pullrequest_rejected.json": PullRequestClosed(
        "https://bitbucket.org/amuniz/test-repos/pull-requests/735"
    ),
    "server_pr_merged.json": PullRequestClosed(
        "https://server.bitbucket.local/users/gopher/repos/webhook-test/pull-requests/5"
    ),
    "server_pr_merged_fork.json": PullRequestClosed(
        "http://139.59.64.214:7990/projects/SBOX/repos/sandbox/pull-requests/6"
    ),
    "server_pr_merged_2018_no_links.json": NoPullRequestURL,
    "server_pr_merged_iso_dates.json": NoPullRequestURL,
    "server_pr_declined_2018_no_links.json": NoPullRequestURL,
}


@needs_corpus
@pytest.mark.parametrize("name", sorted(CONCRETE))
def test_concrete_results(name: str) -> None:
    expected = CONCRETE[name]
    event = corpus_event(name)
    if isinstance(expected, type):
        with pytest.raises(expected) as info:
            parse_event(event, read(name))
        assert type(info.value) is expected
    else:
        assert parse_event(event, read(name)) == expected


@needs_corpus
def test_concrete_values_match_the_json() -> None:
    """The literals above are what the raw JSON says (guards against typos in CONCRETE)."""
    tag = json.loads(read("cloud_repo_push_tag.json"))["push"]["changes"][0]["new"]
    assert (tag["type"], tag["name"]) == ("tag", "simple-tag")
    delete = json.loads(read("cloud_repo_push_delete.json"))["push"]["changes"][0]
    assert delete["new"] is None and delete["old"]["name"] == "feature/test"
    signed = json.loads(read("server_repo_refs_changed_delete_signed.json"))
    assert signed["changes"][0]["type"] == "DELETE"
    assert signed["changes"][0]["ref"]["id"] == "refs/heads/feature/BB-1"
    assert signed["changes"][0]["ref"]["displayId"] == "feature/BB-1"
    mirror = json.loads(read("server_mirror_repo_synchronized_ref_limit_exceeded.json"))
    assert mirror["refLimitExceeded"] is True and mirror["changes"] == []
    v5 = json.loads(read("server_repo_refs_changed_v5_no_links.json"))
    assert "links" not in v5["repository"]
    merged = json.loads(read("server_pr_merged.json"))
    assert merged["pullRequest"]["links"]["self"][0]["href"].endswith("/pull-requests/5")


@needs_corpus
def test_v5_no_links_is_bad_shape_first_when_changes_are_also_broken() -> None:
    """§4 row 8 (bad shape) comes before row 9 (no repository URL)."""
    data = json.loads(read("server_repo_refs_changed_v5_no_links.json"))
    data["changes"][0]["ref"] = "refs/heads/x"
    with pytest.raises(InvalidPayload) as info:
        parse_event("repo:refs_changed", json.dumps(data).encode())
    assert type(info.value) is InvalidPayload
    assert info.value.detail == "changes[0].ref is not an object"


# --------------------------------------------------------------------------- event keys


def test_handled_events_are_the_spec_table() -> None:
    assert (
        frozenset(
            {
                "repo:push",
                "repo:refs_changed",
                "mirror:repo_synchronized",
                "pullrequest:fulfilled",
                "pullrequest:rejected",
                "pr:merged",
                "pr:declined",
            }
        )
        == HANDLED_EVENTS
    )


@pytest.mark.parametrize("key", ["repo:push", "REPO:PUSH", "Pr:Merged", "pullrequest:REJECTED"])
def test_is_handled_is_case_insensitive(key: str) -> None:
    assert is_handled(key)
    assert not is_ping(key)


@pytest.mark.parametrize("key", ["diagnostics:ping", "DIAGNOSTICS:PING", "Diagnostics:Ping"])
def test_ping(key: str) -> None:
    assert is_ping(key)
    assert not is_handled(key)


@pytest.mark.parametrize(
    "key",
    ["", "repo:updated", "pullrequest:created", "pr:opened", "repo:push ", "diagnostics:ping"],
)
def test_unhandled_keys(key: str) -> None:
    assert not is_handled(key)
    with pytest.raises(ValueError) as info:
        parse_event(key, b"{}")
    assert not isinstance(info.value, InvalidPayload)


def test_non_ascii_case_folding_does_not_alias_a_key() -> None:
    # "\u212a" (Kelvin sign) lower-cases to "k"; "\u0130" to "i" plus a combining dot.
    assert not is_handled("pr:decl\u0130ned")
    assert not is_ping("diagnostics:p\u0130ng")


def test_parse_event_accepts_any_case() -> None:
    body = json.dumps(SERVER_PR).encode()
    assert parse_event("PR:DECLINED", body) == parse_event("pr:declined", body)


# --------------------------------------------------------------------------- hand-written fixtures

CLOUD_PUSH: dict[str, Any] = {
    "repository": {"links": {"html": {"href": "https://bitbucket.org/acme/app"}}},
    "push": {
        "changes": [
            {"new": {"type": "branch", "name": "main"}, "old": {"type": "branch", "name": "main"}},
            {"new": None, "old": {"type": "tag", "name": "v1.0.0"}},
        ]
    },
}
SERVER_PUSH: dict[str, Any] = {
    "repository": {
        "links": {
            "clone": [
                {"href": "ssh://git@bb.example:7999/acme/app.git", "name": "ssh"},
                {"href": "https://bb.example/scm/acme/app.git", "name": "http"},
            ]
        }
    },
    "changes": [
        {
            "ref": {"id": "refs/heads/main", "displayId": "main", "type": "BRANCH"},
            "refId": "refs/heads/main",
            "type": "UPDATE",
        },
        {"refId": "refs/tags/v1.0.0", "type": "ADD"},
    ],
}
MIRROR = {**SERVER_PUSH, "refLimitExceeded": False}
CLOUD_PR: dict[str, Any] = {
    "pullrequest": {"links": {"html": {"href": "https://bitbucket.org/acme/app/pull-requests/7"}}}
}
SERVER_PR: dict[str, Any] = {
    "pullRequest": {
        "links": {"self": [{"href": "https://bb.example/projects/ACME/repos/app/pull-requests/7"}]}
    }
}
SERVER_URLS = ("ssh://git@bb.example:7999/acme/app.git", "https://bb.example/scm/acme/app.git")

BASES: dict[str, dict[str, Any]] = {
    "repo:push": CLOUD_PUSH,
    "repo:refs_changed": SERVER_PUSH,
    "mirror:repo_synchronized": MIRROR,
    "pullrequest:fulfilled": CLOUD_PR,
    "pullrequest:rejected": CLOUD_PR,
    "pr:merged": SERVER_PR,
    "pr:declined": SERVER_PR,
}


def parse(event: str, payload: Any) -> Push | PullRequestClosed:
    return parse_event(event, json.dumps(payload).encode())


def parse_push(event: str, payload: Any) -> Push:
    result = parse(event, payload)
    assert isinstance(result, Push)
    return result


def test_bases_parse() -> None:
    assert parse("repo:push", CLOUD_PUSH) == Push(
        ("https://bitbucket.org/acme/app",), ("refs/heads/main", "refs/tags/v1.0.0")
    )
    expected = Push(SERVER_URLS, ("refs/heads/main", "refs/tags/v1.0.0"))
    assert parse("repo:refs_changed", SERVER_PUSH) == expected
    assert parse("mirror:repo_synchronized", MIRROR) == expected
    cloud_pr = PullRequestClosed("https://bitbucket.org/acme/app/pull-requests/7")
    assert parse("pullrequest:fulfilled", CLOUD_PR) == cloud_pr
    assert parse("pullrequest:rejected", CLOUD_PR) == cloud_pr
    server_pr = PullRequestClosed("https://bb.example/projects/ACME/repos/app/pull-requests/7")
    assert parse("pr:merged", SERVER_PR) == server_pr
    assert parse("pr:declined", SERVER_PR) == server_pr


Path_ = tuple[str | int, ...]
ABSENT_OK = "ok"  # missing/null is fine (the parser falls back or defaults)

# (events, path, JSON type needed, outcome when the value is missing or null).
# The outcome is an exception class (detail = "payload has no … URL"), a detail
# string (InvalidPayload with exactly that detail, "{path} is …" when None), or ABSENT_OK.
SERVER_PUSHES = ("repo:refs_changed", "mirror:repo_synchronized")
CLOUD_PRS = ("pullrequest:fulfilled", "pullrequest:rejected")
SERVER_PRS = ("pr:merged", "pr:declined")
FIELDS: list[tuple[tuple[str, ...], Path_, type, type | str | None]] = [
    (("repo:push",), ("repository",), dict, NoRepositoryURL),
    (("repo:push",), ("repository", "links"), dict, NoRepositoryURL),
    (("repo:push",), ("repository", "links", "html"), dict, NoRepositoryURL),
    (("repo:push",), ("repository", "links", "html", "href"), str, NoRepositoryURL),
    (("repo:push",), ("push",), dict, None),
    (("repo:push",), ("push", "changes"), list, None),
    (("repo:push",), ("push", "changes", 0), dict, None),
    (("repo:push",), ("push", "changes", 0, "new"), dict, ABSENT_OK),
    (("repo:push",), ("push", "changes", 0, "new", "type"), str, ABSENT_OK),  # a branch
    (("repo:push",), ("push", "changes", 0, "new", "name"), str, None),
    (("repo:push",), ("push", "changes", 1), dict, None),
    (
        ("repo:push",),
        ("push", "changes", 1, "old"),
        dict,
        "push.changes[1] has neither new nor old",
    ),
    (("repo:push",), ("push", "changes", 1, "old", "type"), str, ABSENT_OK),
    (("repo:push",), ("push", "changes", 1, "old", "name"), str, None),
    (SERVER_PUSHES, ("repository",), dict, NoRepositoryURL),
    (SERVER_PUSHES, ("repository", "links"), dict, NoRepositoryURL),
    (SERVER_PUSHES, ("repository", "links", "clone"), list, NoRepositoryURL),
    (SERVER_PUSHES, ("repository", "links", "clone", 0), dict, None),
    (SERVER_PUSHES, ("repository", "links", "clone", 0, "href"), str, ABSENT_OK),  # the other
    (SERVER_PUSHES, ("repository", "links", "clone", 1, "href"), str, ABSENT_OK),
    (SERVER_PUSHES, ("changes",), list, None),
    (SERVER_PUSHES, ("changes", 0), dict, None),
    (SERVER_PUSHES, ("changes", 0, "ref"), dict, ABSENT_OK),
    (SERVER_PUSHES, ("changes", 0, "ref", "id"), str, ABSENT_OK),
    (SERVER_PUSHES, ("changes", 1), dict, None),
    (SERVER_PUSHES, ("changes", 1, "refId"), str, "changes[1] has neither ref.id nor refId"),
    (("mirror:repo_synchronized",), ("refLimitExceeded",), bool, ABSENT_OK),
    (CLOUD_PRS, ("pullrequest",), dict, NoPullRequestURL),
    (CLOUD_PRS, ("pullrequest", "links"), dict, NoPullRequestURL),
    (CLOUD_PRS, ("pullrequest", "links", "html"), dict, NoPullRequestURL),
    (CLOUD_PRS, ("pullrequest", "links", "html", "href"), str, NoPullRequestURL),
    (SERVER_PRS, ("pullRequest",), dict, NoPullRequestURL),
    (SERVER_PRS, ("pullRequest", "links"), dict, NoPullRequestURL),
    (SERVER_PRS, ("pullRequest", "links", "self"), list, NoPullRequestURL),
    (SERVER_PRS, ("pullRequest", "links", "self", 0), dict, None),
    (SERVER_PRS, ("pullRequest", "links", "self", 0, "href"), str, NoPullRequestURL),
]

# One value of each JSON type; the value of each is distinctive so we can check it is not echoed.
SAMPLES: dict[type, Any] = {
    dict: {"<echo>": "<echo>"},
    list: ["<echo>"],
    str: "<echo>",
    int: 7,
    float: 1.5,
    bool: True,
}
ARTICLE = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def with_value(base: dict[str, Any], path: Path_, value: Any, *, delete: bool = False) -> Any:
    doc = copy.deepcopy(base)
    parent: Any = doc
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


def wrong_type_cases() -> list[Any]:
    cases = []
    for events, path, needed, _ in FIELDS:
        for event in events:
            for sample_type, sample in SAMPLES.items():
                if sample_type is needed or (needed is bool and sample_type is int):
                    continue
                name = f"{event}-{dotted(path)}-{sample_type.__name__}"
                cases.append(pytest.param(event, path, needed, sample, id=name))
    return cases


@pytest.mark.parametrize(("event", "path", "needed", "value"), wrong_type_cases())
def test_wrong_type_is_invalid_payload_naming_the_field(
    event: str, path: Path_, needed: type, value: Any
) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse(event, with_value(BASES[event], path, value))
    assert type(info.value) is InvalidPayload
    assert info.value.detail == f"{dotted(path)} is not {ARTICLE[needed]}"
    assert str(info.value) == info.value.detail
    assert "<echo>" not in info.value.detail


def absent_cases() -> list[Any]:
    cases = []
    for events, path, _, outcome in FIELDS:
        for event in events:
            cases.append(
                pytest.param(event, path, False, outcome, id=f"{event}-{dotted(path)}-null")
            )
            if not isinstance(path[-1], int):
                cases.append(
                    pytest.param(event, path, True, outcome, id=f"{event}-{dotted(path)}-missing")
                )
    return cases


@pytest.mark.parametrize(("event", "path", "delete", "outcome"), absent_cases())
def test_missing_or_null_field(
    event: str, path: Path_, delete: bool, outcome: type | str | None
) -> None:
    payload = with_value(BASES[event], path, None, delete=delete)
    if outcome == ABSENT_OK:
        assert isinstance(parse(event, payload), Push)
        return
    if isinstance(outcome, type):
        with pytest.raises(outcome) as info:
            parse(event, payload)
        assert type(info.value) is outcome
        return
    with pytest.raises(InvalidPayload) as info:
        parse(event, payload)
    assert type(info.value) is InvalidPayload
    if outcome is None:
        outcome = f"{dotted(path)} is {'missing' if delete else 'null'}"
    assert info.value.detail == outcome


def test_no_url_exceptions_have_fixed_details() -> None:
    with pytest.raises(NoRepositoryURL) as push_info:
        parse("repo:push", with_value(CLOUD_PUSH, ("repository",), None))
    assert push_info.value.detail == "payload has no repository URL"
    assert isinstance(push_info.value, InvalidPayload)
    with pytest.raises(NoPullRequestURL) as pr_info:
        parse("pr:merged", with_value(SERVER_PR, ("pullRequest", "links"), None, delete=True))
    assert pr_info.value.detail == "payload has no pull request URL"
    assert isinstance(pr_info.value, InvalidPayload)
    assert not isinstance(pr_info.value, NoRepositoryURL)


@pytest.mark.parametrize(
    "body",
    [b"", b"   ", b"not json", b"{", b"\xff\xfe", b'{"a": NaN}', b"[" * 2000 + b"]" * 2000],
    ids=["empty", "blank", "text", "truncated", "not-utf8", "nan", "too-deep"],
)
@pytest.mark.parametrize("event", sorted(HANDLED_EVENTS))
def test_body_not_json(event: str, body: bytes) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_event(event, body)
    assert info.value.detail.startswith("body is not valid ")


def invalid_utf8_cases() -> list[Any]:
    return [
        pytest.param(event, path, id=f"{event}-{dotted(path)}")
        for events, path, needed, _ in FIELDS
        if needed is str
        for event in events
    ]


@pytest.mark.parametrize(("event", "path"), invalid_utf8_cases())
@pytest.mark.parametrize(
    "bad", [b"\x80", b"ok\xc3", b"\xed\xa0\x80"], ids=["lone", "cut", "surrogate"]
)
def test_invalid_utf8_in_a_read_field_names_the_field(event: str, path: Path_, bad: bytes) -> None:
    """Issue 9: msgspec raised UnicodeDecodeError out of parse_event (a 500) for these."""
    body = json.dumps(with_value(BASES[event], path, "@bad@")).encode().replace(b"@bad@", bad)
    with pytest.raises(InvalidPayload) as info:
        parse_event(event, body)
    assert info.value.detail == f"{dotted(path)} is not valid UTF-8"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"a\x80": 1}', "a key of the body is not valid UTF-8"),
        (b'{"x": [1, {"y": "\xff"}]}', "x[1].y is not valid UTF-8"),
        (b'{"x": "\xff", "y": "\xfe"}', "x is not valid UTF-8"),
        (b'{"x": \xff}', "body is not valid UTF-8 (byte 6)"),
        (b'{"x": "\\ud800"}', "body is not valid JSON: no low surrogate in string at character 7"),
    ],
)
def test_bad_bytes_anywhere_are_located_without_echoing_them(body: bytes, detail: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_event("pr:merged", body)
    assert info.value.detail == detail


@pytest.mark.parametrize("body", [b"[]", b"null", b"1", b'"x"', b"true", b'[{"push": {}}]'])
@pytest.mark.parametrize("event", sorted(HANDLED_EVENTS))
def test_body_not_an_object(event: str, body: bytes) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_event(event, body)
    assert info.value.detail == "body is not a JSON object"


# --------------------------------------------------------------------------- semantics


def cloud_change(new: Any, old: Any) -> dict[str, Any]:
    return {"new": new, "old": old}


def cloud_push(*changes: Any) -> dict[str, Any]:
    return {**CLOUD_PUSH, "push": {"changes": list(changes)}}


def server_push(*changes: Any, **extra: Any) -> dict[str, Any]:
    return {**SERVER_PUSH, "changes": list(changes), **extra}


@pytest.mark.parametrize(
    ("ref_type", "expected"),
    [
        ("branch", "refs/heads/x"),
        ("tag", "refs/tags/x"),
        ("annotated_tag", "refs/tags/x"),
        ("named_branch", "refs/heads/x"),
        ("bookmark", "refs/heads/x"),
        ("TAG", "refs/heads/x"),
    ],
)
def test_cloud_ref_qualification(ref_type: str, expected: str) -> None:
    state = {"type": ref_type, "name": "x"}
    assert parse_push("repo:push", cloud_push(cloud_change(state, None))).refs == (expected,)
    # A deletion is qualified from `old` the same way.
    assert parse_push("repo:push", cloud_push(cloud_change(None, state))).refs == (expected,)


def test_cloud_new_wins_over_old_and_missing_new_means_deletion() -> None:
    renamed = cloud_change({"type": "tag", "name": "b"}, {"type": "branch", "name": "a"})
    assert parse("repo:push", cloud_push(renamed)) == Push(
        ("https://bitbucket.org/acme/app",), ("refs/tags/b",)
    )
    no_new_key = {"old": {"type": "branch", "name": "gone"}}
    assert parse_push("repo:push", cloud_push(no_new_key)).refs == ("refs/heads/gone",)


def test_cloud_old_is_not_read_when_new_is_set() -> None:
    change = cloud_change({"type": "branch", "name": "main"}, "garbage")
    assert parse_push("repo:push", cloud_push(change)).refs == ("refs/heads/main",)


def test_cloud_neither_new_nor_old() -> None:
    with pytest.raises(InvalidPayload, match=r"push\.changes\[0\] has neither new nor old"):
        parse("repo:push", cloud_push({}))


def test_cloud_empty_name() -> None:
    with pytest.raises(InvalidPayload) as info:
        parse("repo:push", cloud_push(cloud_change({"type": "branch", "name": ""}, None)))
    assert info.value.detail == "push.changes[0].new.name is empty"


def test_refs_are_deduplicated_in_order() -> None:
    a, b = {"type": "branch", "name": "a"}, {"type": "branch", "name": "b"}
    changes = [cloud_change(b, None), cloud_change(a, None), cloud_change(None, b)]
    assert parse_push("repo:push", cloud_push(*changes)).refs == ("refs/heads/b", "refs/heads/a")
    server = [{"refId": "refs/heads/b"}, {"refId": "refs/heads/a"}, {"refId": "refs/heads/b"}]
    assert parse_push("repo:refs_changed", server_push(*server)).refs == (
        "refs/heads/b",
        "refs/heads/a",
    )


@pytest.mark.parametrize("event", ["repo:push", "repo:refs_changed", "mirror:repo_synchronized"])
def test_empty_change_list_means_refs_unknown(event: str) -> None:
    payload = cloud_push() if event == "repo:push" else server_push()
    result = parse(event, payload)
    assert isinstance(result, Push) and result.refs is None and result.repo_urls


def test_server_ref_id_wins_over_ref_id_field_and_display_id_is_never_used() -> None:
    change: dict[str, Any] = {"ref": {"id": "refs/tags/v2", "displayId": "v2"}}
    change["refId"] = "refs/heads/other"
    assert parse_push("repo:refs_changed", server_push(change)).refs == ("refs/tags/v2",)
    # refId is not even read when ref.id is there.
    change = {"ref": {"id": "refs/tags/v2"}, "refId": 12}
    assert parse_push("repo:refs_changed", server_push(change)).refs == ("refs/tags/v2",)
    with pytest.raises(InvalidPayload, match=r"changes\[0\] has neither ref\.id nor refId"):
        parse("repo:refs_changed", server_push({"ref": {"displayId": "main"}}))


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"ref": {"id": "main"}}, "changes[0].ref.id is not a fully qualified ref"),
        ({"refId": "v1.0.0"}, "changes[0].refId is not a fully qualified ref"),
        ({"refId": ""}, "changes[0].refId is not a fully qualified ref"),
    ],
)
def test_server_ref_must_be_fully_qualified(change: dict[str, Any], detail: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse("repo:refs_changed", server_push(change))
    assert info.value.detail == detail


@pytest.mark.parametrize("changes", [[], [{"refId": "refs/heads/main"}], "garbage", None])
def test_mirror_ref_limit_exceeded_means_refs_unknown(changes: Any) -> None:
    payload = {**MIRROR, "refLimitExceeded": True, "changes": changes}
    assert parse("mirror:repo_synchronized", payload) == Push(SERVER_URLS, None)


def test_mirror_ref_limit_not_exceeded_reads_changes() -> None:
    payload = {**MIRROR, "changes": [{"refId": "refs/heads/main"}]}
    assert parse_push("mirror:repo_synchronized", payload).refs == ("refs/heads/main",)


def test_ref_limit_exceeded_is_ignored_on_refs_changed() -> None:
    """Only the mirror event has the field (SPEC §5); a push with changes keeps its refs."""
    payload = server_push({"refId": "refs/heads/main"}, refLimitExceeded=True)
    assert parse_push("repo:refs_changed", payload).refs == ("refs/heads/main",)


def test_server_clone_urls_in_order_deduplicated_blank_skipped() -> None:
    clone = [
        {"href": "https://h/scm/a/b.git", "name": "http"},
        {"href": "", "name": "weird"},
        {"href": "ssh://git@h:7999/a/b.git", "name": "ssh"},
        {"href": "https://h/scm/a/b.git", "name": "http"},
    ]
    payload = {**SERVER_PUSH, "repository": {"links": {"clone": clone}}}
    assert parse_push("repo:refs_changed", payload).repo_urls == (
        "https://h/scm/a/b.git",
        "ssh://git@h:7999/a/b.git",
    )


@pytest.mark.parametrize("clone", [[], [{"href": ""}], [{"href": "  "}]])
def test_server_without_usable_clone_url(clone: list[Any]) -> None:
    payload = {**SERVER_PUSH, "repository": {"links": {"clone": clone, "self": [{"href": "x"}]}}}
    with pytest.raises(NoRepositoryURL):
        parse("repo:refs_changed", payload)


@pytest.mark.parametrize("href", ["", " \t"])
def test_blank_urls_count_as_absent(href: str) -> None:
    with pytest.raises(NoRepositoryURL):
        parse("repo:push", with_value(CLOUD_PUSH, ("repository", "links", "html", "href"), href))
    with pytest.raises(NoPullRequestURL):
        parse(
            "pullrequest:fulfilled",
            with_value(CLOUD_PR, ("pullrequest", "links", "html", "href"), href),
        )
    with pytest.raises(NoPullRequestURL):
        parse("pr:merged", with_value(SERVER_PR, ("pullRequest", "links", "self", 0, "href"), href))


def test_server_pr_uses_first_self_link_only() -> None:
    links = {"self": [{"href": "https://h/pr/1"}, {"href": "https://h/pr/2"}, 5]}
    payload = {"pullRequest": {"links": links}}
    assert parse("pr:declined", payload) == PullRequestClosed("https://h/pr/1")
    with pytest.raises(NoPullRequestURL):
        parse("pr:declined", {"pullRequest": {"links": {"self": []}}})


def test_unneeded_fields_are_not_read() -> None:
    """Fields we do not use may hold anything (e.g. DC 10 ISO dates instead of epoch ms)."""
    noisy_cloud = {**CLOUD_PUSH, "actor": 5, "date": "2026-01-01T00:00:00Z"}
    noisy_cloud["repository"] = {**CLOUD_PUSH["repository"], "full_name": None, "scm": []}
    assert isinstance(parse("repo:push", noisy_cloud), Push)
    noisy_server = {**SERVER_PUSH, "toCommit": None, "commits": "x", "date": 1700000000000}
    assert isinstance(parse("repo:refs_changed", noisy_server), Push)
    noisy_pr = {"pullRequest": {**SERVER_PR["pullRequest"], "createdDate": "2018-07-05"}}
    assert isinstance(parse("pr:merged", noisy_pr), PullRequestClosed)


@pytest.mark.parametrize("name", corpus_files_param())
def test_well_formed_corpus_files_take_the_schema_path(name: str) -> None:
    """Every real push and PR (but mirror syncs) is decided without the slower walk."""
    event = corpus_event(name)
    if event in ("diagnostics:ping", "mirror:repo_synchronized"):
        assert event not in events_module._SCHEMA_PARSERS
        return
    body = read(name)
    decided = events_module._SCHEMA_PARSERS[event](body)
    try:
        walked = events_module._walk(events_module._PARSERS[event], body)
    except InvalidPayload:
        assert decided is None  # Server 5.x has no links: the walk says why
        return
    assert decided == walked


def test_schema_path_accepts_what_only_the_walk_rejects_in_unread_fields() -> None:
    body = json.dumps(CLOUD_PUSH).encode()[:-1] + b', "unused": 1e999}'
    assert parse_event("repo:push", body) == parse("repo:push", CLOUD_PUSH)


@pytest.mark.parametrize("where", ["unread", "read"])
def test_deeply_nested_bodies_are_invalid_json_not_errors(where: str) -> None:
    """msgspec gives up on deep nesting with RecursionError, orjson past 1024 levels."""
    nested = b"[" * 200_000 + b"]" * 200_000
    if where == "unread":
        body = b'{"x": ' + nested + b', "push": {"changes": []}}'
    else:
        body = b'{"push": {"changes": ' + nested + b"}}"
    with pytest.raises(InvalidPayload) as info:
        parse_event("repo:push", body)
    assert info.value.detail.startswith("body is not valid JSON: ")


def test_change_without_type_is_a_branch_and_clone_links_without_href_are_skipped() -> None:
    change = cloud_change({"name": "main"}, None)
    assert parse("repo:push", cloud_push(change)).refs == ("refs/heads/main",)
    links = {"clone": [{"name": "ssh"}, {"href": "https://h/scm/p/r.git", "name": "http"}]}
    payload = {**SERVER_PUSH, "repository": {"links": links}}
    assert parse("repo:refs_changed", payload).repo_urls == ("https://h/scm/p/r.git",)


def test_large_payload() -> None:
    """A Cloud-sized (256 KB) push with many commits parses in one go."""
    commits = [{"hash": f"{i:040x}", "message": "m" * 200, "links": {}} for i in range(1000)]
    change = cloud_change({"type": "branch", "name": "main", "target": {}}, None)
    change["commits"] = commits
    body = json.dumps(cloud_push(change)).encode()
    assert len(body) > 256 * 1024
    assert parse_event("repo:push", body) == Push(
        ("https://bitbucket.org/acme/app",), ("refs/heads/main",)
    )


# --------------------------------------------------------------------------- property tests

VOCABULARY = [
    "repository", "links", "html", "href", "clone", "self", "push", "changes", "new", "old",
    "type", "name", "ref", "id", "refId", "displayId", "refLimitExceeded", "pullrequest",
    "pullRequest",
]  # fmt: skip
VALUES = ["branch", "tag", "annotated_tag", "refs/heads/main", "refs/tags/v1", "https://h/x"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(VALUES)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(VOCABULARY) | st.text(max_size=4), children, max_size=5)
    ),
    max_leaves=25,
)
handled_keys = st.sampled_from(sorted(HANDLED_EVENTS))


def check_schema_agrees_with_walk(event: str, body: bytes) -> None:
    """Where the fast schema path decides a body, the walk decides it the same way."""
    by_schema = events_module._SCHEMA_PARSERS.get(event)
    decided = by_schema(body) if by_schema is not None else None
    if decided is None:
        return
    try:
        walked = events_module._walk(events_module._PARSERS[event], body)
    except InvalidPayload as exc:
        # The schema skips fields it does not need unconverted (1e999 among them).
        assert exc.detail.startswith("body is not valid ")
        return
    assert walked == decided


def check_only_invalid_payload(event: str, body: bytes) -> None:
    """parse_event either returns a well-formed result or raises InvalidPayload."""
    check_schema_agrees_with_walk(event, body)
    try:
        result = parse_event(event, body)
    except InvalidPayload as exc:
        assert isinstance(exc.detail, str) and exc.detail
        return
    if isinstance(result, Push):
        assert event in {"repo:push", "repo:refs_changed", "mirror:repo_synchronized"}
        assert result.repo_urls and all(isinstance(u, str) and u.strip() for u in result.repo_urls)
        assert len(set(result.repo_urls)) == len(result.repo_urls)
        if result.refs is not None:
            assert result.refs and len(set(result.refs)) == len(result.refs)
            assert all(isinstance(r, str) and r.startswith("refs/") for r in result.refs)
    else:
        assert isinstance(result, PullRequestClosed)
        assert isinstance(result.pr_url, str) and result.pr_url.strip()


@settings(max_examples=300, deadline=None)
@given(event=handled_keys, value=json_values)
def test_arbitrary_json_only_raises_invalid_payload(event: str, value: Any) -> None:
    check_only_invalid_payload(event, json.dumps(value).encode())


@settings(max_examples=300, deadline=None)
@given(event=handled_keys, body=st.binary(max_size=64))
def test_arbitrary_bytes_only_raise_invalid_payload(event: str, body: bytes) -> None:
    check_only_invalid_payload(event, body)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=handled_keys, data=st.data())
def test_mutated_valid_payloads_only_raise_invalid_payload(event: str, data: Any) -> None:
    """Replace or delete one node of a valid payload: the parser copes with every field."""
    base = BASES[event]
    path = data.draw(st.sampled_from(json_paths(base)))
    if isinstance(path[-1], str) and data.draw(st.booleans()):
        payload = with_value(base, path, None, delete=True)
    else:
        payload = with_value(base, path, data.draw(json_values))
    check_only_invalid_payload(event, json.dumps(payload).encode())


@needs_corpus
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_corpus_payloads_only_raise_invalid_payload(data: Any) -> None:
    name = data.draw(st.sampled_from([n for n in CORPUS_FILES if "ping" not in n]))
    base = json.loads(read(name))
    path = data.draw(st.sampled_from(json_paths(base)))
    payload = with_value(base, path, data.draw(json_values))
    check_only_invalid_payload(corpus_event(name), json.dumps(payload).encode())


def test_a_long_key_above_deep_nesting_is_cut_in_the_detail() -> None:
    """The path of invalid bytes under a 60 KB key and 1,000 levels stays short and cheap."""
    body = b'{"' + b"k" * 60_000 + b'": ' + b"[" * 1000 + b'"\x80"' + b"]" * 1000 + b"}"
    with pytest.raises(InvalidPayload) as info:
        parse_event("repo:push", body)
    assert info.value.detail == "k" * 200 + "… is not valid UTF-8"


@pytest.mark.parametrize(
    ("arrays", "detail"),
    [
        (12_000, "x[12000] is not valid UTF-8"),  # a 60 KB body: the field is named
        (400_000, "body is not valid UTF-8 (byte 2000008)"),  # 2 MB: its offset instead
    ],
)
def test_a_bad_byte_in_a_large_body_is_located_by_offset_not_by_building_it(
    arrays: int, detail: str
) -> None:
    """400,000 small arrays before the bad byte held the event loop 2.7 s to name its path."""
    body = b'{"x": [' + b"[[]]," * arrays + b'"\xff"]}'
    with pytest.raises(InvalidPayload) as info:
        parse_event("repo:push", body)
    assert info.value.detail == detail
