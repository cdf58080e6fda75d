"""Delivery history, explain, the admin listener and metrics, seen as an operator sees them."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.builders import (
    DELIVERY_ID,
    REPO,
    delivery_record,
    one_receiver,
    push,
    receiver_path,
    signed,
    to_yaml,
    warehouse,
)
from tests.support import Server, cli, request, serve_copy

WAREHOUSES = {
    "on-develop": {"repoURL": REPO, "branch": "develop"},
    "on-main-ssh": {"repoURL": "git@bitbucket.org:acme/app.git", "branch": "main"},
    "semver-1": {"repoURL": REPO, "commitSelectionStrategy": "SemVer", "semverConstraint": "^1.0"},
    "ignore-v2": {
        "repoURL": REPO,
        "commitSelectionStrategy": "NewestTag",
        "ignoreTagsRegexes": ["^v2"],
    },
    "allow-release": {
        "repoURL": REPO,
        "commitSelectionStrategy": "NewestTag",
        "allowTagsRegexes": ["^release-"],
    },
    "broken-allow": {
        "repoURL": REPO,
        "commitSelectionStrategy": "Lexical",
        "allowTagsRegexes": ["(unclosed"],
    },
    "other-repo": {"repoURL": "https://bitbucket.org/acme/other", "branch": "main"},
}
EXPECTED = {
    "on-develop": ("not refreshed", 'branch "main" does not match subscription branch "develop"'),
    "on-main-ssh": (
        "refreshed",
        'branch "main" matches subscription branch "main" (subscribed '
        "as git@bitbucket.org:acme/app.git, matched by repository identity)",
    ),
    "semver-1": ("not refreshed", 'tag "v2.0.0" does not satisfy "^1.0"'),
    "ignore-v2": ("not refreshed", 'tag "v2.0.0": ignoreTagsRegexes "^v2" matched'),
    "allow-release": ("not refreshed", 'tag "v2.0.0" matches none of allowTagsRegexes "^release-"'),
    "broken-allow": (
        "refreshed",
        'tag "v2.0.0" refreshes anyway: allowTagsRegexes[0] cannot be evaluated',
    ),
}


def manifests() -> str:
    warehouses = (
        warehouse("demo", name, **{"branch": None, **git}) for name, git in WAREHOUSES.items()
    )
    return to_yaml(*one_receiver("demo"), *warehouses)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo project, applied once."""
    state = tmp_path_factory.mktemp("observe") / "state.db"
    cli("apply", "-f", "-", state=state, stdin=manifests())
    return state


def serving(template: Path, directory: Path) -> Server:
    """``serve`` on a copy of the demo project; ``.url`` is the receiver's."""
    server = serve_copy(template, directory)
    server.url = server.base + receiver_path("demo")  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="module")
def served(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One delivery under test, made once; the tests sharing this server only read what it
    left (history, explain, pages), so none sees another's traffic."""
    server = serving(template, tmp_path_factory.mktemp("served"))
    body = push(("branch", "main"), ("tag", "v2.0.0"))
    headers = signed(body, **{"X-Request-UUID": "delivery-under-test", "X-Attempt-Number": "2"})
    server.answer = request(server.url, body, headers)  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def fresh(template: Path, tmp_path: Path) -> Iterator[Server]:
    """A server of this test's own, for tests that deliver and count."""
    server = serving(template, tmp_path)
    yield server
    server.stop()


def test_recorded_reasons_for_every_kind_of_match(served: Server) -> None:
    assert served.answer.status == 200  # type: ignore[attr-defined]
    out = cli("deliveries", "-n", "demo", "-o", "json", state=served.state).stdout
    (record,) = [r for r in json.loads(out) if r["delivery_id"] == "delivery-under-test"]
    assert record["receiver"] == "demo/bb" and record["event"] == "repo:push"
    assert record["attempt"] == "2" and record["status"] == 200
    assert record["repository"] == [REPO]
    assert record["refs"] == ["refs/heads/main", "refs/tags/v2.0.0"]
    found = {(c["name"]): (c["outcome"], c["reason"]) for c in record["candidates"]}
    for name, (outcome, reason) in EXPECTED.items():
        assert found[name][0] == outcome, name
        assert reason in found[name][1], (name, found[name][1])
    assert "other-repo" not in found
    assert "topsecret" not in out


def test_the_log_line_of_a_delivery_has_the_time_of_its_record(served: Server) -> None:
    """An operator finds the line of a delivery ``deliveries`` shows by its time, too."""
    out = cli("deliveries", "-n", "demo", "-o", "json", state=served.state).stdout
    (record,) = [r for r in json.loads(out) if r["delivery_id"] == "delivery-under-test"]
    lines = [json.loads(x) for x in served.logs().splitlines() if x.startswith("{")]
    about = [x for x in lines if x.get("delivery") == "delivery-under-test"]
    (line,) = [x for x in about if x["msg"] == "delivery refreshed"]
    assert line["time"] == record["time"]
    others = [x["time"] for x in lines if x is not line]
    assert others and all(re.fullmatch(r"[\d-]{10}T[\d:]{8}\.\d{6}Z", t) for t in others)


def test_table_output_names_the_delivery_and_reasons(served: Server) -> None:
    out = cli("deliveries", state=served.state).stdout
    assert "delivery-under-test attempt 2" in out
    assert 'tag "v2.0.0" does not satisfy "^1.0"' in out


def test_deliveries_from_the_admin_listener(served: Server) -> None:
    out = cli(
        "deliveries",
        "--admin-url",
        served.admin,
        "-o",
        "json",
        "--receiver",
        "bb",
        state=served.state,
    ).stdout
    assert any(r["delivery_id"] == "delivery-under-test" for r in json.loads(out))


def test_admin_url_may_be_the_page_serve_prints(served: Server) -> None:
    """serve prints 'metrics and delivery history on http://HOST:9090/deliveries'; given
    as --admin-url, that URL read .../deliveries/deliveries.json and said "Not Found"; a
    page's query (a browser's address bar) made the URL read ".../deliveries?x/deliveries.json"."""
    pages = ("/deliveries", "/deliveries/", "/deliveries.json", "/metrics")
    for page in (*pages, "/deliveries?namespace=demo", "/deliveries.json?limit=1#top"):
        out = cli(
            "deliveries", "--admin-url", served.admin + page, "-o", "json", state=served.state
        ).stdout
        assert any(r["delivery_id"] == "delivery-under-test" for r in json.loads(out)), page


def test_admin_url_of_the_webhook_port_says_which_port_to_use(served: Server) -> None:
    """The webhook port (the Service's, port-forwarded for /readyz) has no history."""
    result = cli("deliveries", "--admin-url", served.base, state=served.state, check=False)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"kargo-bitbucket: cannot read {served.base}/deliveries.json")
    assert "not an admin listener" in line and "9090" in line, line


def test_explain_reasons_without_refreshing(served: Server) -> None:
    before = cli("get", "wh", "-n", "demo", "-o", "json", state=served.state).stdout
    out = cli(
        "explain",
        "--repo",
        "git@bitbucket.org:Acme/App.git",
        "--ref",
        "develop",
        "--ref",
        "refs/tags/v1.5.0",
        "-n",
        "demo",
        state=served.state,
    ).stdout
    out = "\n".join(" ".join(line.split()) for line in out.splitlines())
    assert "would refresh Warehouse demo/on-develop" in out
    assert "would refresh Warehouse demo/semver-1" in out
    assert 'would not refresh Warehouse demo/allow-release: branch "develop" is not a tag' in out
    assert "look it up with `kargo-bitbucket deliveries`" in out
    assert "Without -n" not in out
    assert cli("get", "wh", "-n", "demo", "-o", "json", state=served.state).stdout == before
    everywhere = cli("explain", "--repo", REPO, "--ref", "develop", state=served.state).stdout
    assert "a ProjectConfig receiver refreshes only its own namespace (-n PROJECT)" in everywhere
    none = cli("explain", "--repo", "https://bitbucket.org/acme/nothing", state=served.state)
    assert "no Warehouse subscribes to bitbucket.org/acme/nothing" in none.stdout
    unknown = cli("explain", "--repo", REPO, "-n", "demo", "-o", "json", state=served.state)
    assert all(v["refresh"] for v in json.loads(unknown.stdout))


def test_history_is_bounded(tmp_path: Path, server_factory: Any) -> None:
    state = tmp_path / "bounded.db"
    cli("apply", "-f", "-", state=state, stdin=manifests())
    server_factory(state, "--history-size", "3")
    (line,) = cli("urls", state=state).stdout.splitlines()
    body = push(("branch", "develop"))
    for i in range(8):
        headers = signed(body, **{"X-Request-UUID": f"d{i}"})
        assert request(line.split("\t")[2], body, headers).status == 200
    records = json.loads(cli("deliveries", "--limit", "100", "-o", "json", state=state).stdout)
    assert [r["delivery_id"] for r in records] == ["d7", "d6", "d5"]


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_metrics_parse_and_count(fresh: Server) -> None:
    before = request(fresh.admin + "/metrics", method="GET").body.decode()
    body = push(("branch", "main"))
    request(fresh.url, body, signed(body))  # type: ignore[attr-defined]
    request(fresh.url, body, {"X-Event-Key": "repo:push"})  # type: ignore[attr-defined]
    request(fresh.url, body, signed(body, event="issue:created"))  # type: ignore[attr-defined]
    after = request(fresh.admin + "/metrics", method="GET").body.decode()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("kargo_bitbucket_deliveries_total", event="repo:push", result="refreshed") == 1
    assert delta("kargo_bitbucket_deliveries_total", event="other", result="ignored") == 1
    assert delta("kargo_bitbucket_signature_failures_total", reason="missing") == 1
    assert delta("kargo_bitbucket_refreshes_total", kind="Warehouse", result="refreshed") == 1
    assert delta("kargo_bitbucket_delivery_duration_seconds_count") == 3
    assert metric(after, "kargo_bitbucket_cache_objects", kind="warehouses") == len(WAREHOUSES)
    assert "acme" not in after and DELIVERY_ID not in after


def test_admin_is_not_on_the_webhook_port(served: Server) -> None:
    assert request(served.base + "/metrics", method="GET").status == 404
    assert request(served.base + "/deliveries", method="GET").status == 404


def test_the_admin_root_links_to_what_is_there(served: Server) -> None:
    page = request(served.admin + "/", method="GET")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    for link in ("/deliveries", "/deliveries.json", "/metrics"):
        assert f"href={link}>" in page.body.decode()
        assert request(served.admin + link, method="GET").status == 200


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on PATH (.ci/run installs Debian's chromium)")


def test_deliveries_page_in_a_headless_browser(served: Server) -> None:
    browser = chromium()
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--dump-dom",
                served.admin + "/deliveries?namespace=demo&limit=50",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    dom = result.stdout
    assert "<table" in dom, result.stderr[-2000:]
    row = next(r for r in dom.split("<tr>") if "delivery-under-test" in r)
    assert "demo/bb" in row and "repo:push" in row and "(attempt 2)" in row
    assert "demo/on-develop" in row
    assert 'branch "main" does not match subscription branch "develop"' in row.replace(
        "&quot;", '"'
    )
    assert "<script" not in dom


def test_memory_history_stays_bounded() -> None:
    import asyncio

    from kargo_bitbucket.history import MemoryHistory

    history = MemoryHistory(1000)
    for i in range(10_000):
        history.record(delivery_record(str(i), "p", time=str(i)))
    assert len(history) == 1000
    newest = asyncio.run(history.deliveries(limit=1))
    assert newest[0].delivery_id == "9999"


def test_state_file_history_stays_bounded(tmp_path: Path) -> None:
    from kargo_bitbucket.store.state_file import StateFile

    state = StateFile(tmp_path / "h.db")
    for chunk in range(10):
        records = [delivery_record(f"{chunk}-{i}", "p") for i in range(1000)]
        state.write_batch([], records, keep=1000)
    kept = state.deliveries()
    assert len(kept) == 1000 and kept[0].delivery_id == "9-999"


def test_requests_refused_before_the_body_leave_a_trace(fresh: Server) -> None:
    """405 and 413 on a receiver's URL are logged, recorded and counted like deliveries."""
    url = fresh.url  # type: ignore[attr-defined]
    before = request(fresh.admin + "/metrics", method="GET").body.decode()
    assert request(url, method="GET").status == 405
    connection = http.client.HTTPConnection("127.0.0.1", fresh.port, timeout=10)
    connection.putrequest("POST", urllib.parse.urlsplit(url).path)
    connection.putheader("X-Event-Key", "repo:push")
    connection.putheader("X-Request-UUID", "too-large")
    connection.putheader("Content-Length", str(3 * 1024 * 1024))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()
    after = request(fresh.admin + "/metrics", method="GET").body.decode()
    records = json.loads(cli("deliveries", "-o", "json", state=fresh.state).stdout)
    by_result = {r["result"]: r for r in records}
    assert by_result["body-too-large"]["status"] == 413
    assert by_result["body-too-large"]["delivery_id"] == "too-large"
    assert by_result["method-not-allowed"]["status"] == 405
    for result in ("body-too-large", "method-not-allowed"):
        labels = {"event": "repo:push" if result == "body-too-large" else "other"}
        assert (
            metric(after, "kargo_bitbucket_deliveries_total", result=result, **labels)
            - metric(before, "kargo_bitbucket_deliveries_total", result=result, **labels)
            == 1
        )
        assert f'"result":"{result}"' in fresh.logs()


def test_start_and_stop_said_once_with_the_admin_listener(fresh: Server) -> None:
    """The admin listener is a second uvicorn server in the process: uvicorn's lines about
    the process still appear once each, not once per server."""
    assert fresh.stop() == 0
    lines = [
        json.loads(line)["msg"]
        for line in fresh.log.read_text().splitlines()
        if line.startswith("{")
    ]
    pid = fresh.process.pid
    for said in (
        f"Started server process [{pid}]",
        "Shutting down",
        f"Finished server process [{pid}]",
    ):
        assert lines.count(said) == 1, (said, lines)
    assert "Application shutdown complete." in lines


def test_refusals_are_warnings_so_a_warning_level_log_still_shows_them(
    template: Path, tmp_path: Path
) -> None:
    server = serve_copy(template, tmp_path, "--log-level", "warning")
    url = server.base + receiver_path("demo")
    try:
        body = push(("branch", "main"))
        assert request(url, body, signed(body)).status == 200
        # Pings, unsigned and logged at info, do not use up the unsigned lines' budget
        # (5 a second per receiver) that the 401s at warning need.
        for _ in range(10):
            assert request(url, b"{}", {"X-Event-Key": "diagnostics:ping"}).status == 200
        for _ in range(3):
            assert request(url, body, {"X-Event-Key": "repo:push"}).status == 401
        bad = b'{"push": 1}'
        assert request(url, bad, signed(bad)).status == 400
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line[:1] == "{"]
    delivered = [
        (line["result"], line["level"]) for line in lines if line["logger"].endswith("delivery")
    ]
    assert delivered == [("missing-signature", "warning")] * 3 + [("invalid-payload", "warning")]


def test_deliveries_says_when_more_are_recorded_and_finds_one_by_id(fresh: Server) -> None:
    url = fresh.url  # type: ignore[attr-defined]
    body = push(("branch", "main"))
    for number in range(3):
        headers = signed(body, **{"X-Request-UUID": f"id-{number}-{'x' * 8}"})
        assert request(url, body, headers).status == 200
    two = cli("deliveries", "--limit", "2", state=fresh.state)
    assert [line.split()[3] for line in two.stdout.splitlines() if "->" in line] == [
        "id-2-xxxxxxxx",
        "id-1-xxxxxxxx",
    ]
    assert "the newest 2 shown; more are recorded" in two.stderr
    for source in (("--state", str(fresh.state)), ("--admin-url", fresh.admin)):
        found = cli("deliveries", "--id", "id-0", "-o", "json", *source, state=fresh.state)
        assert [r["delivery_id"] for r in json.loads(found.stdout)] == ["id-0-xxxxxxxx"]
        assert found.stderr == ""
        several = cli("deliveries", "--id", "id-", "--limit", "1", *source, state=fresh.state)
        assert "id-2-xxxxxxxx" in several.stdout and "id-1" not in several.stdout
        assert several.stderr.startswith("(the newest 1 shown; more are recorded")
        assert "--id finds" not in several.stderr
    assert (
        "--id: give a delivery id"
        in cli("deliveries", "--id", "", state=fresh.state, check=False).stderr
    )
    none = cli("deliveries", "-n", "nope", "--id", "id-0", state=fresh.state)
    assert none.stderr == "No deliveries recorded matching -n nope, --id id-0.\n"
    missing = cli("deliveries", state=fresh.state.parent / "none.db", check=False)
    assert missing.returncode == 2
    assert "does not exist (--admin-url reads a running server's history)" in missing.stderr
