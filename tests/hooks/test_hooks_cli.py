"""``hooks check`` and ``hooks sync`` end to end: the command line against a fake Bitbucket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.builders import project, secret, to_yaml, warehouse
from tests.hooks.fake_bitbucket import FakeBitbucket
from tests.hooks.support import BASE, SERVER_EVENTS, WAREHOUSES, receiver_url
from tests.support import REPO, cli, eventually

EXAMPLE = REPO / "examples" / "kargo-demo"
DEMO_SECRET = "demo-secret-change-me"
CLOUD_EVENTS = {"repo:push", "pullrequest:fulfilled", "pullrequest:rejected"}


def dc_manifests(value: str = "first-secret", *warehouses: str) -> str:
    """Receiver demo/bb on Secret bb-secret holding ``value``, and the named Data Center
    :data:`WAREHOUSES` on ``main``."""
    return to_yaml(
        project("demo", ("bb", "bb-secret")),
        secret("demo", "bb-secret", value),
        *(warehouse("demo", name, repo=WAREHOUSES[name]) for name in warehouses),
    )


def credentials(tmp_path: Path, host: str, fake: FakeBitbucket, token: str = "t0ken") -> str:
    path = tmp_path / "credentials.yaml"
    path.write_text(json.dumps({host: {"token": token, "api_url": fake.url}}))
    return str(path)


def hooks(state: Path, *args: str, check: bool = False) -> Any:
    return cli("hooks", *args, state=state, check=check)


def lines(output: str) -> list[list[str]]:
    """Each line split on two spaces: status/verb, place, marker[, detail]."""
    return [
        [part.strip() for part in line.split("  ") if part.strip()] for line in output.splitlines()
    ]


def refreshed(state: Path, name: str) -> str | None:
    """The refresh annotation of Warehouse kargo-demo/``name``, if it has one."""
    shown = cli("get", "warehouse", name, "-n", "kargo-demo", "-o", "json", state=state).stdout
    return (json.loads(shown)["metadata"].get("annotations") or {}).get("kargo.akuity.io/refresh")


def test_sync_creates_the_hooks_and_a_delivery_to_them_refreshes(
    state: Path, server_factory: Any, cloud: FakeBitbucket, tmp_path: Path
) -> None:
    cloud.add_repository(
        "acme",
        "guestbook",
        {"description": "Jenkins", "url": "https://ci/x", "active": True, "events": ["repo:push"]},
    )
    cloud.add_repository("acme", "infra")
    server_factory(state, "-f", str(EXAMPLE))
    (published,) = cli("urls", state=state).stdout.splitlines()
    url = published.split("\t")[2]
    creds = credentials(tmp_path, "bitbucket.org", cloud)

    before = hooks(state, "check", "--credentials", creds)
    assert before.returncode == 1
    assert lines(before.stdout) == [
        ["missing", "bitbucket.org/acme/guestbook", "kargo kargo-demo/bitbucket"],
        ["missing", "bitbucket.org/acme/infra", "kargo kargo-demo/bitbucket"],
    ]

    dry = hooks(state, "sync", "--credentials", creds)
    assert dry.returncode == 0, dry.stderr
    assert [line[0] for line in lines(dry.stdout)] == ["would create", "would create"]
    assert "run again with --apply" in dry.stderr
    assert not [c for c in cloud.calls if c.method != "GET"]

    cloud.rate_limited = 1  # one 429 on the way: waited for, not reported
    done = hooks(state, "sync", "--apply", "--credentials", creds)
    assert done.returncode == 0, done.stderr
    assert [line[0] for line in lines(done.stdout)] == ["created", "created"]
    jenkins, ours = cloud.hooks("acme", "guestbook")
    assert jenkins["url"] == "https://ci/x" and jenkins["description"] == "Jenkins"
    assert (ours["url"], ours["description"], ours["active"]) == (
        url,
        "kargo kargo-demo/bitbucket",
        True,
    )
    assert set(ours["events"]) == CLOUD_EVENTS
    assert cloud.secrets[ours["uuid"]] == DEMO_SECRET
    assert all(c.authorization == "Bearer t0ken" for c in cloud.calls)
    assert "t0ken" not in done.stdout + done.stderr

    after = hooks(state, "check", "--credentials", creds, "-o", "json")
    assert after.returncode == 0, after.stdout
    report = json.loads(after.stdout)
    assert [(r["repository"], r["status"]) for r in report] == [
        ("guestbook", "ok"),
        ("infra", "ok"),
    ]
    assert "Promotion kargo-demo/prod.01jdemo.guestbook" in report[0]["servedObjects"]

    # Bitbucket sends with the secret it was given, to the URL it was given.
    sent = cli(
        "send",
        "--url",
        ours["url"],
        "--secret",
        cloud.secrets[ours["uuid"]],
        "--event",
        "repo:push",
        "--repo",
        "https://bitbucket.org/acme/infra",
        "--ref",
        "main",
        state=state,
    )
    assert sent.stdout.startswith("200")
    eventually(lambda: refreshed(state, "infra"), what="Warehouse infra refreshed")


def test_check_reports_each_repository_and_sync_fixes_only_ours(
    state: Path, server: FakeBitbucket, tmp_path: Path
) -> None:
    cli("apply", "-f", "-", state=state, stdin=dc_manifests("first-secret", *WAREHOUSES))
    old = {
        "name": "kargo demo/bb",
        "url": receiver_url("older"),
        "active": True,
        "events": ["repo:refs_changed"],
        "configuration": {"secret": "older"},
    }
    server.add_repository(
        "PLAT",
        "deploy",
        old,
        {"name": "CI", "url": "https://ci/y", "active": True, "events": ["pr:opened"]},
    )
    by_hand = {
        "name": "Kargo",
        "url": receiver_url("first-secret"),
        "active": False,
        "events": sorted(SERVER_EVENTS),
        "configuration": {"secret": "first-secret"},
    }
    server.add_repository("PLAT", "tools", by_hand)
    server.add_repository("PLAT", "locked")
    server.forbidden.add("PLAT/locked")
    stale = {"name": "kargo demo/bb", "url": "https://old", "active": True, "events": []}
    users = {"name": "Deploy bot", "url": "https://bot", "active": True, "events": []}
    server.add_repository("PLAT", "unsubscribed", stale, users)
    creds = credentials(tmp_path, "bb.example.com", server)
    common = ("--credentials", creds, "--base-url", BASE)

    checked = hooks(state, "check", *common, "-o", "json")
    assert checked.returncode == 1
    report = {r["repository"]: r for r in json.loads(checked.stdout)}
    assert {name: r["problems"] for name, r in report.items()} == {
        "deploy": ["wrong URL", "missing events"],
        "gone": ["no access"],
        "locked": ["no access"],
        "tools": ["inactive"],
    }
    assert report["gone"]["detail"].startswith("404")
    assert report["locked"]["detail"].startswith("403")
    assert report["tools"]["action"] == "manual"
    assert "not a Bitbucket repository, skipped: Warehouse demo/github" in checked.stderr

    synced = hooks(state, "sync", "--apply", "--prune", *common)
    assert synced.returncode == 1  # the hand-made hook and the 403/404 are left to the user
    outcome = {line[1]: line[0] for line in lines(synced.stdout)}
    assert outcome == {
        "https://bb.example.com PLAT/deploy": "updated",
        "https://bb.example.com PLAT/gone": "no access",
        "https://bb.example.com PLAT/locked": "no access",
        "https://bb.example.com PLAT/tools": "inactive",
        "https://bb.example.com PLAT/unsubscribed": "deleted",
    }
    ours, ci = sorted(server.hooks("PLAT", "deploy"), key=lambda h: h["name"] != "kargo demo/bb")
    assert (ours["url"], set(ours["events"]), ours["active"]) == (
        receiver_url("first-secret"),
        SERVER_EVENTS,
        True,
    )
    assert server.secrets[str(ours["id"])] == "first-secret"
    assert ci["url"] == "https://ci/y"
    assert server.hooks("PLAT", "tools")[0]["active"] is False
    assert [h["name"] for h in server.hooks("PLAT", "unsubscribed")] == ["Deploy bot"]

    # Rotation: apply the new Secret, sync, done.
    cli("apply", "-f", "-", state=state, stdin=dc_manifests("second-secret"))
    rotated = hooks(state, "check", *common)
    assert lines(rotated.stdout)[0][:2] == ["wrong URL", "https://bb.example.com PLAT/deploy"]
    hooks(state, "sync", "--apply", *common)
    (ours,) = [h for h in server.hooks("PLAT", "deploy") if h["name"] == "kargo demo/bb"]
    assert ours["url"] == receiver_url("second-secret")
    assert server.secrets[str(ours["id"])] == "second-secret"


def test_mirrors_and_project_scope(state: Path, server: FakeBitbucket, tmp_path: Path) -> None:
    cli(
        "apply",
        "-f",
        "-",
        state=state,
        stdin=dc_manifests("first-secret", "deploy"),
    )
    creds = credentials(tmp_path, "bb.example.com", server)
    done = hooks(
        state,
        "sync",
        "--apply",
        "--scope",
        "workspace",
        "--mirrors",
        "--credentials",
        creds,
        "--base-url",
        BASE,
    )
    assert done.returncode == 0, done.stderr
    (hook,) = server.hooks("PLAT")
    assert set(hook["events"]) == {*SERVER_EVENTS, "mirror:repo_synchronized"}
    assert (
        hooks(
            state,
            "check",
            "--scope",
            "workspace",
            "--mirrors",
            "--credentials",
            creds,
            "--base-url",
            BASE,
        ).returncode
        == 0
    )


@pytest.mark.parametrize(
    ("token", "how", "words"),
    [("wrong", "credentials", "401"), ("", "none", "no credentials for https://bb.example.com")],
)
def test_without_valid_credentials_every_repository_is_no_access(
    state: Path, server: FakeBitbucket, tmp_path: Path, token: str, how: str, words: str
) -> None:
    cli(
        "apply",
        "-f",
        "-",
        state=state,
        stdin=dc_manifests("first-secret", "deploy"),
    )
    server.add_repository("PLAT", "deploy")
    args = (
        ["--credentials", credentials(tmp_path, "bb.example.com", server, token)] if token else []
    )
    result = hooks(state, "check", *args, "--base-url", BASE)
    assert result.returncode == 1
    (line,) = lines(result.stdout)
    assert line[0] == "no access" and words in line[3]
    assert "wrong" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--api-url", "bb.example.com"],
            "--api-url 'bb.example.com': expected HOST=http(s)://URL",
        ),
        (["--base-url", "ftp://x"], "--base-url"),
        (["--base-url", "http://[::1"], "--base-url: base URL 'http://[::1': Invalid IPv6 URL"),
        (["--api-url", "bb.example.com=http://[::1"], "--api-url 'http://[::1': Invalid IPv6"),
        (["--api-url", "bb.example.com=http://bb:99999"], "out of range"),
        (["--credentials", "/nonexistent/creds.yaml"], "/nonexistent/creds.yaml: cannot read"),
        (["--kubernetes", "--kubeconfig", "/nonexistent"], "cannot load Kubernetes credentials"),
    ],
)
def test_usage_errors_exit_2_with_one_line(state: Path, args: list[str], message: str) -> None:
    cli("apply", "-f", "-", state=state, stdin=dc_manifests())
    result = hooks(state, "check", *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_receiver_without_a_published_url_needs_base_url(state: Path) -> None:
    cli(
        "apply",
        "-f",
        "-",
        state=state,
        stdin=dc_manifests("first-secret", "deploy"),
    )
    result = hooks(state, "check")
    assert result.returncode == 1
    assert "receiver demo/bb: no published URL yet; pass --base-url" in result.stderr


def test_explain_points_to_hooks_check_when_it_would_refresh(state: Path) -> None:
    cli(
        "apply",
        "-f",
        "-",
        state=state,
        stdin=dc_manifests("first-secret", "deploy"),
    )
    would = cli("explain", "--repo", WAREHOUSES["deploy"], "--ref", "main", state=state).stdout
    assert "would refresh     Warehouse demo/deploy" in would
    assert "kargo-bitbucket hooks check" in would
    other = cli("explain", "--repo", WAREHOUSES["deploy"], "--ref", "dev", state=state).stdout
    assert "hooks check" not in other


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ((302, None, {"Location": "https://sso.example.com/login"}), "302 Found: a redirect"),
        ((200, [1, 2, 3], {}), "answer is not a JSON object"),
        ((200, {"size": 0}, {}), "is not a listing"),
    ],
)
def test_an_answer_that_is_not_the_apis_changes_nothing_and_says_why(
    state: Path, server: FakeBitbucket, tmp_path: Path, answer: Any, words: str
) -> None:
    # An SSO page or a proxy in front of Data Center answers everything the same way.
    cli("apply", "-f", "-", state=state, stdin=dc_manifests("first-secret", "deploy"))
    server.answer_with = answer
    creds = credentials(tmp_path, "bb.example.com", server)
    result = hooks(state, "sync", "--apply", "--credentials", creds, "--base-url", BASE)
    assert result.returncode == 1, result.stdout
    (line,) = lines(result.stdout)
    assert line[0] == "no access" and words in line[3]
    assert [c.method for c in server.calls] == ["GET"]  # nothing was created


def test_a_creation_answered_without_a_hook_id_fails(
    state: Path, server: FakeBitbucket, tmp_path: Path
) -> None:
    cli("apply", "-f", "-", state=state, stdin=dc_manifests("first-secret", "deploy"))
    server.add_repository("PLAT", "deploy")
    original = server.route

    def no_id(method: str, target: str, auth: str, body: Any) -> Any:
        status, answer, headers = original(method, target, auth, body)
        return (status, {} if method == "POST" else answer, headers)

    server.route = no_id  # type: ignore[method-assign]
    creds = credentials(tmp_path, "bb.example.com", server)
    result = hooks(state, "sync", "--apply", "--credentials", creds, "--base-url", BASE)
    assert result.returncode == 1
    (line,) = lines(result.stdout)
    assert line[0] == "failed: the answer to the creation names no hook id"


def test_bitbucket_text_reaches_the_terminal_escaped(
    state: Path, server: FakeBitbucket, tmp_path: Path
) -> None:
    cli("apply", "-f", "-", state=state, stdin=dc_manifests("first-secret", "deploy"))
    message = "no \x1b[31mRED\x1b[0m\x07 access \x1b]0;pwned\x07"
    server.answer_with = (403, {"errors": [{"message": message}]}, {})
    creds = credentials(tmp_path, "bb.example.com", server)
    result = hooks(state, "check", "--credentials", creds, "--base-url", BASE)
    assert result.returncode == 1
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "no \\x1b[31mRED\\x1b[0m\\x07 access" in result.stdout


@pytest.mark.parametrize(
    ("token", "api_url", "words"),
    [
        ("t\u00f6ken", "", "token: must be printable ASCII without spaces"),
        ("abc\nSECRETPART", "", "token: must be printable ASCII without spaces"),
        ("t0ken", "http://[::1", "api_url: Invalid IPv6 URL"),
        ("t0ken", "http://bb.example.com:99999", "api_url: Port out of range"),
        ("t0ken", "http://bb.example.com/a b", "api_url: must be ASCII without spaces"),
    ],
)
def test_a_credential_that_cannot_go_into_a_request_is_a_usage_error(
    state: Path, tmp_path: Path, token: str, api_url: str, words: str
) -> None:
    cli("apply", "-f", "-", state=state, stdin=dc_manifests("first-secret", "deploy"))
    entry = {"token": token, **({"api_url": api_url} if api_url else {})}
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"bb.example.com": entry}))
    result = hooks(state, "check", "--credentials", str(path), "--base-url", BASE)
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.splitlines()) == 1
    assert "SECRETPART" not in result.stderr and "Traceback" not in result.stderr
