"""The HTTP contract of SPEC §4 against a real server: every row, with bad input of every kind."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kargo_bitbucket.store.base import REFRESH_BUDGET
from kargo_bitbucket.store.sqlite import CLOSE_AT_LEAST
from tests.builders import (
    PUSH,
    REPO,
    SECRET,
    one_receiver,
    receiver_path,
    sign,
    signed,
    to_yaml,
    warehouse,
)
from tests.support import Server, cli, eventually, request, serve_copy


def demo_manifests(value: str = SECRET) -> str:
    """Receiver demo/bb on ``value``, Warehouse app on ``main`` of the ``.git`` URL and
    broken-regex, a tag subscription whose regex cannot be evaluated."""
    broken = {"commitSelectionStrategy": "NewestTag", "allowTagsRegexes": ["(unclosed"]}
    return to_yaml(
        *one_receiver("demo", value=value),
        warehouse("demo", "app", repo=REPO + ".git"),
        warehouse("demo", "broken-regex", branch=None, repo=REPO + ".git", **broken),
    )


@pytest.fixture(scope="module")
def demo_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo project applied once; each test serves its own copy."""
    state = tmp_path_factory.mktemp("http") / "state.db"
    cli("apply", "-f", "-", state=state, stdin=demo_manifests())
    return state


@pytest.fixture
def demo(demo_state: Path, tmp_path: Path) -> Any:
    """A server of its own on a copy of the demo state: what one test delivers (refreshes,
    history, a state file locked or slowed down) cannot change what another sees."""
    flags = ("--body-limit", "65536", "--body-timeout", "1", "--header-timeout", "1")
    server = serve_copy(demo_state, tmp_path, *flags)
    server.path = receiver_path("demo")  # type: ignore[attr-defined]
    server.url = server.base + server.path  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0


def read_before_the_next(server: Server) -> None:
    """Return once ``server`` has read what was already sent on an earlier connection: it
    accepts connections and reads ready sockets in order, so answering a later request
    means it has (a condition to wait on, where a sleep would guess)."""
    assert request(server.base + "/healthz", method="GET").status == 200


def sigterm_mid_body(server: Server, state: Path) -> socket.socket:
    """A signed push to ``state``'s receiver with only its first 10 body bytes sent, then
    SIGTERM to ``server`` once it has read them; the delivery's socket."""
    (line,) = cli("urls", state=state).stdout.splitlines()
    path = line.split("\t")[2].removeprefix(server.base)
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(PUSH)}\r\n"
        f"X-Event-Key: repo:push\r\nX-Hub-Signature: {sign(PUSH)}\r\n\r\n"
    )
    sock.sendall(head.encode() + PUSH[:10])
    read_before_the_next(server)
    server.process.send_signal(signal.SIGTERM)
    return sock


def refresh_of(state: Path, name: str) -> str | None:
    obj = json.loads(cli("get", "wh", name, "-n", "demo", "-o", "json", state=state).stdout)
    return (obj["metadata"].get("annotations") or {}).get("kargo.akuity.io/refresh")


def test_health_and_readiness(demo: Server) -> None:
    assert request(demo.base + "/healthz", method="GET").status == 200
    assert request(demo.base + "/readyz", method="GET").status == 200


@pytest.mark.parametrize("path", ["/", "/bitbucket/" + "0" * 64, "/nope", "/readyz/x"])
def test_unknown_paths_get_the_same_404(demo: Server, path: str) -> None:
    answer = request(demo.base + path, PUSH, signed(PUSH))
    assert answer.status == 404
    assert answer.json() == {"error": "not found"}


def test_path_is_exact(demo: Server) -> None:
    for path in (demo.path + "/", demo.path.upper(), demo.path[:-1]):
        assert request(demo.base + path, PUSH, signed(PUSH)).status == 404


def test_query_string_is_ignored(demo: Server) -> None:
    answer = request(demo.url + "?x=1", PUSH, signed(PUSH))
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_non_post_is_405_with_allow(demo: Server, method: str) -> None:
    answer = request(demo.url, None, {}, method=method)
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"


def test_push_refreshes_and_answers_like_kargo(demo: Server) -> None:
    answer = request(demo.url, PUSH, signed(PUSH))
    assert answer.status == 200
    body = answer.json()
    # app matches the branch; broken-regex is a tag subscription and main is a branch.
    assert body["msg"] == "refreshed 1 warehouse(s)"
    assert body["refreshed"] == ["demo/app"]
    assert body["deliveryId"] == "11111111-2222-3333-4444-555555555555"
    value = refresh_of(demo.state, "app")
    assert value is not None and value.endswith("Z") and len(value.split(".")[1]) == 7


def test_each_delivery_writes_a_new_value(demo: Server) -> None:
    request(demo.url, PUSH, signed(PUSH))
    first = refresh_of(demo.state, "app")
    request(demo.url, PUSH, signed(PUSH))
    assert refresh_of(demo.state, "app") != first


def test_ping_is_pong_without_signature(demo: Server) -> None:
    answer = request(demo.url, b'{"test": true}', {"X-Event-Key": "diagnostics:ping"})
    assert (answer.status, answer.json()) == (200, {"msg": "pong"})
    answer = request(demo.url, b"", {"X-Event-Key": "Diagnostics:Ping"})
    assert answer.status == 200


@pytest.mark.parametrize(
    ("signature", "error"),
    [
        (None, "missing signature"),
        ("", "missing signature"),
        ("sha256=" + "0" * 64, "unauthorized"),
        ("sha256=zz" + "0" * 62, "unauthorized"),
        ("sha256=abc", "unauthorized"),
        ("md5=" + "0" * 32, "unauthorized"),
        ("sha256", "unauthorized"),
        ("garbage", "unauthorized"),
    ],
)
def test_bad_signatures_are_401(demo: Server, signature: str | None, error: str) -> None:
    headers = signed(PUSH)
    del headers["X-Hub-Signature"]
    if signature is not None:
        headers["X-Hub-Signature"] = signature
    answer = request(demo.url, PUSH, headers)
    assert (answer.status, answer.json()) == (401, {"error": error})


def test_truncated_body_fails_signature(demo: Server) -> None:
    answer = request(demo.url, PUSH[:-5], signed(PUSH))
    assert answer.status == 401


@pytest.mark.parametrize("alg", ["sha1", "sha512"])
def test_other_algorithms_verify(demo: Server, alg: str) -> None:
    headers = signed(PUSH, **{"X-Hub-Signature": sign(PUSH, alg=alg)})
    assert request(demo.url, PUSH, headers).status == 200


def test_unknown_event_is_ignored_after_the_signature(demo: Server) -> None:
    body = b'{"anything": 1}'
    answer = request(demo.url, body, signed(body, event="repo:fork"))
    assert (answer.status, answer.json()) == (200, {"msg": "event repo:fork ignored"})
    unsigned = request(demo.url, body, {"X-Event-Key": "repo:fork", "X-Hub-Signature": "x=1"})
    assert unsigned.status == 401


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"null",
        b'{"push": null, "repository": {"links": {"html": {"href": "https://bitbucket.org/a/b"}}}}',
        b'{"push": {"changes": "x"}, "repository": {"links": {"html": {"href": 1}}}}',
        b'{"push": {"changes": [{"new": {"type": "branch", "name": 7}}]},'
        b' "repository": {"links": {"html": {"href": "https://bitbucket.org/a/b"}}}}',
        b'{"x": ' + b"[" * 20_000 + b"]" * 20_000 + b', "push": {"changes": []}}',
    ],
    ids=["text", "array", "null", "null push", "wrong types", "int name", "deep nesting"],
)
def test_invalid_bodies_are_400(demo: Server, body: bytes) -> None:
    answer = request(demo.url, body, signed(body))
    assert answer.status == 400
    assert answer.json()["error"] == "invalid request body"


def test_push_without_repository_url_is_400(demo: Server) -> None:
    body = b'{"eventKey": "repo:refs_changed", "repository": {"slug": "x"}, "changes": []}'
    answer = request(demo.url, body, signed(body, event="repo:refs_changed"))
    assert (answer.status, answer.json()) == (400, {"error": "payload has no repository URL"})


def test_declared_body_over_limit_is_413(demo: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", demo.port, timeout=5)
    conn.putrequest("POST", demo.path)
    conn.putheader("Content-Length", "70000")
    conn.putheader("X-Event-Key", "repo:push")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {"error": "content exceeds limit of 65536 bytes"}


def test_chunked_body_over_limit_is_413(demo: Server) -> None:
    def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 4096

    conn = http.client.HTTPConnection("127.0.0.1", demo.port, timeout=5)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request(
            "POST",
            demo.path,
            body=chunks(),
            headers={"X-Event-Key": "repo:push"},
            encode_chunked=True,
        )
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"] == "content exceeds limit of 65536 bytes"


def test_body_just_under_limit_is_read(demo: Server) -> None:
    body = b" " * (65536 - len(PUSH)) + PUSH
    assert request(demo.url, body, signed(body)).status == 200


def test_slow_body_gets_408_and_server_stays_responsive(demo: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", demo.port))
    sock.sendall(
        f"POST {demo.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        "X-Event-Key: repo:push\r\n\r\n{".encode()
    )
    assert request(demo.base + "/healthz", method="GET").status == 200
    sock.settimeout(10)
    started = time.monotonic()
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 5  # the 1 s body deadline, with room for a loaded host
    sock.close()


def test_stuck_headers_are_cut_off(demo: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", demo.port))
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
    sock.settimeout(10)
    started = time.monotonic()
    assert sock.recv(4096) == b""  # closed by the server
    assert time.monotonic() - started < 5  # the 1 s header deadline, with room for load
    sock.close()


def test_trailing_newline_secret_is_accepted_with_a_warning(
    tmp_path: Path, server_factory: Any
) -> None:
    state = tmp_path / "nl.db"
    cli("apply", "-f", "-", state=state, stdin=demo_manifests(SECRET + "\n"))
    server = server_factory(state)
    (line,) = cli("urls", state=state).stdout.splitlines()
    url = line.split("\t")[2]
    for _ in range(2):
        answer = request(url, PUSH, signed(PUSH))
        assert answer.status == 200, answer.body
    assert server.logs().count("trailing newline") == 1


def test_unevaluable_subscription_is_refreshed_with_a_warning(demo: Server) -> None:
    body = json.dumps(
        {
            "push": {"changes": [{"new": {"type": "tag", "name": "v1"}, "old": None}]},
            "repository": {"links": {"html": {"href": "https://bitbucket.org/acme/app"}}},
        }
    ).encode()
    answer = request(demo.url, body, signed(body))
    assert answer.json()["refreshed"] == ["demo/broken-regex"]
    logs = demo.logs()
    assert "demo/broken-regex" in logs and "allowTagsRegexes[0]" in logs


def test_sigterm_finishes_in_flight_delivery(tmp_path: Path, server_factory: Any) -> None:
    state = tmp_path / "term.db"
    cli("apply", "-f", "-", state=state, stdin=demo_manifests())
    server = server_factory(state)
    sock = sigterm_mid_body(server, state)
    eventually(lambda: "Shutting down" in server.logs(), what="the shutdown to begin")
    sock.sendall(PUSH[10:])
    sock.settimeout(10)
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert server.process.wait(timeout=15) == 0


def test_concurrent_deliveries_all_answered(demo: Server) -> None:
    results: list[int] = []

    def send() -> None:
        results.append(request(demo.url, PUSH, signed(PUSH)).status)

    threads = [threading.Thread(target=send) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 30


def test_state_file_locked_by_another_process_is_a_500_inside_bitbucket_timeout(
    tmp_path: Path, server_factory: Any
) -> None:
    """Bitbucket gives up after 10 s; a 500 in time makes Cloud deliver again later.

    Meanwhile the server goes on answering: the write waits off the event loop.
    """
    state = tmp_path / "locked.db"
    cli("apply", "-f", "-", state=state, stdin=demo_manifests())
    server = server_factory(state)
    (line,) = cli("urls", state=state).stdout.splitlines()
    with (
        contextlib.closing(sqlite3.connect(state, isolation_level=None)) as other,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        delivery = pool.submit(request, line.split("\t")[2], PUSH, signed(PUSH))
        answered_meanwhile = 0
        while not delivery.done():
            assert request(server.base + "/healthz", method="GET").status == 200
            answered_meanwhile += not delivery.done()
            time.sleep(0.05)  # pacing the probes (~150 in the wait), not waiting for anything
        answer = delivery.result()
        waited = time.monotonic() - started
        other.execute("ROLLBACK")
    assert answer.status == 500
    assert answer.json()["error"] == "failed to refresh 1 of 1 warehouses"
    (failed, *_) = json.loads(cli("deliveries", "-o", "json", state=state).stdout)
    assert failed["detail"].endswith(": state file: database is locked")
    (logged,) = [x for x in server.logs().splitlines() if '"result":"refresh-failed"' in x]
    assert json.loads(logged)["level"] == "error"
    # A loop blocked on the lock would answer no probe until the delivery's own answer.
    assert answered_meanwhile >= 3
    # Given up at the refresh budget, inside Bitbucket's 10 s: the promise, kept under load.
    assert REFRESH_BUDGET - 1 < waited < 10
    assert request(line.split("\t")[2], PUSH, signed(PUSH)).status == 200


def test_shutdown_ends_within_its_grace_while_another_process_holds_the_write_lock(
    tmp_path: Path, server_factory: Any
) -> None:
    """Each write waits up to 7 s for the lock: the server used to outlive its grace by
    that much per batch. Now it exits in time, the delivery cut short answered 500 (never a
    200 without its refresh), and one line says which history records were not written."""
    grace = 1
    state = tmp_path / "locked.db"
    cli("apply", "-f", "-", state=state, stdin=demo_manifests())
    server = server_factory(state, "--shutdown-grace", str(grace))
    (line,) = cli("urls", state=state).stdout.splitlines()
    with (
        contextlib.closing(sqlite3.connect(state, isolation_level=None)) as other,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        other.execute("BEGIN IMMEDIATE")
        delivery = pool.submit(request, line.split("\t")[2], PUSH, signed(PUSH))
        read_before_the_next(server)
        stopping = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=30)
        took = time.monotonic() - stopping
        answer = delivery.result(timeout=5)
        other.execute("ROLLBACK")
    assert code == 0
    assert took < grace + CLOSE_AT_LEAST + 2, f"exited {took:.1f} s after SIGTERM"
    assert (answer.status, answer.json()) == (500, {"error": "internal error"})
    assert "1 delivery records not written to the history" in server.logs()
    assert refresh_of(state, "app") is None


def test_a_delivery_finishing_within_a_fractional_shutdown_grace_is_refreshed(
    tmp_path: Path, server_factory: Any
) -> None:
    # uvicorn takes whole seconds: --shutdown-grace 0.9 was cut to 0, and every delivery in
    # flight at SIGTERM got a 500.
    state = tmp_path / "grace.db"
    cli("apply", "-f", "-", state=state, stdin=demo_manifests())
    server = server_factory(state, "--shutdown-grace", "0.9")
    sock = sigterm_mid_body(server, state)
    eventually(lambda: "Shutting down" in server.logs(), what="the shutdown to begin")
    # The time is the subject: past uvicorn's 0.1 s pause before the grace counts, well
    # inside the grace.
    time.sleep(0.3)
    sock.sendall(PUSH[10:])
    sock.settimeout(10)
    answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert server.process.wait(timeout=15) == 0


def test_delivery_outliving_the_shutdown_grace_gets_a_json_500(
    tmp_path: Path, server_factory: Any
) -> None:
    state = tmp_path / "grace.db"
    cli("apply", "-f", "-", state=state, stdin=demo_manifests())
    server = server_factory(state, "--shutdown-grace", "0.9")  # was cut to 0: no grace
    sock = sigterm_mid_body(server, state)  # and the rest never comes
    sock.settimeout(10)
    answer = b"".join(iter(lambda: sock.recv(65536), b""))  # until the server closes
    assert answer.startswith(b"HTTP/1.1 500"), answer
    assert answer.endswith(b'{"error":"internal error"}'), answer
    assert server.process.wait(timeout=15) == 0
    assert "Traceback" not in server.logs()
    assert "cut short by shutdown" in server.logs()
    (record,) = json.loads(cli("deliveries", "-o", "json", state=state).stdout)
    assert (record["status"], record["message"]) == (500, "cut short by shutdown")
