"""The connection limits of SPEC §4 against a real server: sizes, deadlines, the cap."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from kargo_bitbucket.app import BODIES_MEMORY, SMALL_BODY
from kargo_bitbucket.connections import (
    FRAMING_LIMIT,
    HEAD_LIMIT,
    HEADER_COUNT_LIMIT,
    KEEP_ALIVE,
    LINGER,
    LINGER_BYTES,
    PIPELINE_LIMIT,
)
from tests.builders import PUSH, one_receiver, receiver_path, signed, to_yaml
from tests.support import Server, cli, eventually, read_until_closed, request, serve_copy


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One receiver and one Warehouse on ``main``, applied once; each test serves a copy."""
    state = tmp_path_factory.mktemp("door") / "state.db"
    cli("apply", "-f", "-", state=state, stdin=to_yaml(*one_receiver("demo", "app")))
    return state


def demo_server(template: Path, directory: Path, *flags: str) -> Server:
    """``serve`` of its own on a copy of ``template``; ``.path`` is the receiver's."""
    server = serve_copy(template, directory, *flags)
    server.path = receiver_path("demo")  # type: ignore[attr-defined]
    return server


@pytest.fixture
def door(template: Path, tmp_path: Path) -> Iterator[Server]:
    """A server per test: one test's connections, history and counters are not another's."""
    server = demo_server(template, tmp_path, "--body-timeout", "1", "--header-timeout", "1")
    yield server
    assert server.stop() == 0


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(KEEP_ALIVE + 5)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer (head and ``Content-Length`` body), however the reads split it."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def delivery(server: Server, *, close: bool = False) -> bytes:
    """One signed push to the demo receiver, as raw HTTP/1.1."""
    headers = signed(PUSH, **({"Connection": "close"} if close else {}))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    path = server.path  # type: ignore[attr-defined]
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(PUSH)}\r\n{head}\r\n".encode()
        + PUSH
    )


def recorded(server: Server) -> list[object]:
    return list(json.loads(request(server.admin + "/deliveries.json", method="GET").body))


def dropped(server: Server, reason: str) -> float:
    metrics = request(server.admin + "/metrics", method="GET").body.decode()
    match = re.search(
        rf'^kargo_bitbucket_connections_closed_total{{reason="{reason}"}} (\S+)$', metrics, re.M
    )
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /" + b"a" * HEAD_LIMIT + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="line"),
        pytest.param(b"X-Big: " + b"b" * HEAD_LIMIT + b"\r\n\r\n", id="header"),
        pytest.param(b"".join(b"X-%d: 1\r\n" % i for i in range(HEADER_COUNT_LIMIT)) + b"\r\n",
                     id="count"),
    ],
)  # fmt: skip
def test_oversized_heads_are_431_closed_and_not_recorded(door: Server, head: bytes) -> None:
    if not head.startswith(b"GET"):
        path = door.path.encode()  # type: ignore[attr-defined]
        head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + head
    with connect(door) as sock:
        sock.sendall(head)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert answer.endswith(b'{"error":"request header fields too large"}')
    assert recorded(door) == []
    assert dropped(door, "too-large") == 1


def test_heads_within_the_limits_are_served(door: Server) -> None:
    filler = b"y" * (HEAD_LIMIT - 2048)
    headers = (
        b"X-Fill: "
        + filler
        + b"\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(HEADER_COUNT_LIMIT - 3))
    )
    with connect(door) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n"
        )
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")


def rss_mib(server: Server) -> float:
    """The server process's resident memory."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024  # type: ignore[union-attr]


def send_until_closed(sock: socket.socket, data: bytes, times: int) -> bytes:
    """Send ``data`` up to ``times`` times, stopping when the server closes; what it answered."""
    with contextlib.suppress(OSError):  # broken pipe or reset once the server has closed
        for _ in range(times):
            sock.sendall(data)
    try:
        return read_until_closed(sock)
    except ConnectionResetError:
        return b""


@pytest.mark.parametrize("path", ["/healthz", "/nowhere", None])
def test_an_endless_trailer_section_is_cut_at_the_framing_limit(
    door: Server, path: str | None
) -> None:
    """Trailers are header fields after the body: uvicorn kept them all (800 MB in 1.5 s)."""
    path = path or door.path  # type: ignore[attr-defined]
    before = rss_mib(door)
    with connect(door) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".encode()
        )
        answer = send_until_closed(sock, b"a: b\r\n" * 10_000, 200)  # 12 MB if never cut
    # Refused after the app's own early answer (404, 405), if any; a reset loses it all.
    assert answer == b"" or answer.endswith(b'{"error":"request header fields too large"}')
    assert dropped(door, "too-large") == 1
    assert rss_mib(door) - before < 50


def test_a_chunked_body_is_served_and_chunk_framing_is_bounded(door: Server) -> None:
    path = door.path  # type: ignore[attr-defined]
    headers = "".join(f"{k}: {v}\r\n" for k, v in signed(PUSH, Connection="close").items())
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{headers}\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(PUSH[i : i + 512]), PUSH[i : i + 512])
                      for i in range(0, len(PUSH), 512))  # fmt: skip
    with connect(door) as sock:
        sock.sendall(head.encode() + chunks + b"0\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    # A byte a chunk: six bytes of framing for each byte of body.
    tiny = b"1\r\n{\r\n" * (FRAMING_LIMIT // 5 * 2)
    with connect(door) as sock:
        sock.sendall(head.encode())
        answer = send_until_closed(sock, tiny, 1)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert dropped(door, "too-large") == 1


def test_a_deep_pipeline_is_closed_after_the_requests_it_may_queue(door: Server) -> None:
    """20,000 requests in one write were 20,000 queued requests (486 MB)."""
    before = rss_mib(door)
    with connect(door) as sock:
        answers = send_until_closed(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 20_000, 1)
    assert answers.count(b"HTTP/1.1 200 ") <= PIPELINE_LIMIT + 1  # none if the close was a reset
    assert dropped(door, "pipelined") == 1
    assert rss_mib(door) - before < 50
    with connect(door) as sock:  # a well-behaved pipeline is served whole
        last = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * PIPELINE_LIMIT + last)
        assert read_until_closed(sock).count(b"HTTP/1.1 200 ") == PIPELINE_LIMIT + 1


@pytest.fixture
def patient(template: Path, tmp_path: Path) -> Iterator[Server]:
    """A server whose body deadline outlasts a slow test on a loaded machine."""
    server = demo_server(template, tmp_path, "--body-timeout", "60", "--body-limit", "4194304")
    yield server
    assert server.stop() == 0


def test_large_bodies_held_at_once_share_a_bounded_memory_and_deliveries_get_through(
    patient: Server,
) -> None:
    """400 senders each holding 2 MiB less a byte took 855 MiB; past BODIES_MEMORY the
    reads that began earliest are answered 503 and closed, so a delivery of the usual size
    and a large one that is sent whole are both answered."""
    door = patient
    path = door.path  # type: ignore[attr-defined]
    fit = 16
    limit = SMALL_BODY + BODIES_MEMORY // fit + 1  # fit of them fill the memory exactly
    count = fit + 40  # all held: 112 MiB
    before = rss_mib(door)
    with ExitStack() as held:
        for _ in range(count):
            sock = held.enter_context(connect(door))
            with contextlib.suppress(OSError):  # refused and closed while sending
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {limit}\r\n\r\n".encode()
                    + b" " * (limit - 1)
                )

        def refused() -> bool:
            results = [e["result"] for e in recorded(door)]  # type: ignore[index]
            return results.count("busy") >= count - fit

        eventually(refused, what="the bodies past what fits answered busy")
        assert rss_mib(door) - before < (BODIES_MEMORY + count * 2 * SMALL_BODY) / 2**20 + 20
        with connect(door) as sock:
            sock.sendall(delivery(door, close=True))
            assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
        large = PUSH[:-1] + b', "padding": "' + b"p" * 200_000 + b'"}'  # Cloud's can be 256 KB
        headers = "".join(f"{k}: {v}\r\n" for k, v in signed(large, Connection="close").items())
        with connect(door) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(large)}\r\n{headers}\r\n"
                .encode() + large
            )  # fmt: skip
            answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert b"refreshed 1 warehouse(s)" in answer


def test_a_client_that_stops_reading_its_answers_is_dropped_at_the_write_deadline(
    door: Server,
) -> None:
    """No other deadline covers a connection whose answers cannot be written: 20 such
    clients held the connection cap for ever."""
    path = door.path  # type: ignore[attr-defined]
    key = "x" * 60_000  # each answer ("event <key> ignored") is 60 KB
    headers = "".join(f"{k}: {v}\r\n" for k, v in signed(b"{}", event=key).items())
    ignored = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n{headers}\r\n{{}}"
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.connect(("127.0.0.1", door.port))
        sock.settimeout(2)
        with contextlib.suppress(OSError):  # the server stopped reading, or closed
            for _ in range(40):  # 2.4 MB of answers, more than the kernel buffers
                sock.sendall(ignored.encode())
                # Paced: fewer than PIPELINE_LIMIT queue up within the 1 s deadline.
                time.sleep(0.15)
                if dropped(door, "write-timeout"):
                    break
        eventually(lambda: dropped(door, "write-timeout") == 1, what="the write deadline")
    assert dropped(door, "pipelined") == 0  # closed by the write deadline, nothing else


def test_a_client_closing_mid_body_is_recorded_as_gone_at_once(door: Server) -> None:
    """A FIN mid-body was kept open for an answer and recorded 408 at the body deadline."""
    path = door.path  # type: ignore[attr-defined]
    with connect(door) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b""
    [entry] = eventually(lambda: recorded(door), what="the delivery recorded")
    assert (entry["status"], entry["result"]) == (499, "client-disconnected")  # type: ignore[index]


@pytest.mark.parametrize(
    ("method", "path", "status"), [("POST", "/nowhere", 404), ("GET", None, 405)]
)
def test_early_answer_then_one_byte_then_silence_is_closed(
    door: Server, method: str, path: str | None, status: int
) -> None:
    path = path or door.path  # type: ignore[attr-defined]
    with connect(door) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode())
        assert read_answer(sock).startswith(f"HTTP/1.1 {status} ".encode())
        sock.sendall(b"x")
        assert read_until_closed(sock) == b""  # closed before connect()'s KEEP_ALIVE + 5 s


def test_headers_trickled_byte_by_byte_are_cut_at_the_header_deadline(door: Server) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100
    every = 0.1  # the trickle is the subject: a byte each 0.1 s would take 13 s in all
    with connect(door) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):  # broken pipe or reset once the server has closed
            for byte in head:
                sock.sendall(bytes([byte]))
                time.sleep(every)
        # Cut at the 1 s header deadline; the bound is half the trickle, for a loaded machine.
        assert time.monotonic() - started < len(head) * every / 2


def test_body_trickled_gets_408_at_the_body_deadline(door: Server) -> None:
    path = door.path  # type: ignore[attr-defined]
    trickle = 20.0  # a byte each 0.2 s for this long would finish no body deadline
    with connect(door) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode())
        started = time.monotonic()
        sock.settimeout(0.2)
        answer = b""
        while not answer and time.monotonic() - started < trickle:
            sock.sendall(b" ")
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                continue
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        # Cut at the 1 s body deadline; the bound is a quarter of the trickle, for load.
        assert time.monotonic() - started < trickle / 4
        answer += read_until_closed(sock)
    assert answer.endswith(b'{"error":"request body not received in time"}'), answer
    [entry] = recorded(door)
    assert (entry["status"], entry["result"]) == (408, "body-timeout")  # type: ignore[index]


def test_pipelined_request_gets_its_body_deadline_once_it_runs(door: Server) -> None:
    """A body behind a running request is timed from when its request starts, not before."""
    path = door.path  # type: ignore[attr-defined]
    with connect(door) as sock:
        sock.sendall(
            delivery(door)
            + f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode()
        )
        assert read_answer(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - started < 5  # the 1 s body deadline, with room for load
    assert [e["result"] for e in recorded(door)] == ["body-timeout", "refreshed"]  # type: ignore[index]


def test_half_closed_pipelined_connection_gets_every_answer_and_no_traceback(
    door: Server,
) -> None:
    with connect(door) as sock:
        sock.sendall(delivery(door) * 5)
        sock.shutdown(socket.SHUT_WR)
        answers = read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200 ") == 5, answers
    assert "Traceback" not in door.logs()


@pytest.mark.parametrize("broken_body", [False, True], ids=["no-request", "broken-body"])
def test_bytes_the_parser_refuses_get_their_400_after_the_answers_before_them(
    door: Server, broken_body: bool
) -> None:
    """Answers keep the order of the requests: a delivery followed in the same write by
    bytes that are no HTTP request, or by a request whose chunked body breaks off, gets
    its own 200 first, then the 400 that closes."""
    refused = b"NOT HTTP AT ALL\r\n\r\n"
    if broken_body:
        path = door.path  # type: ignore[attr-defined]
        refused = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"5\r\nabZZZ\r\nnot-a-size\r\n\r\n"
        )
    with connect(door) as sock:
        sock.sendall(delivery(door) + refused)
        answers = read_until_closed(sock)
    assert answers.startswith(b"HTTP/1.1 200 "), answers
    assert answers.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 400 " in answers, answers
    results = [e["result"] for e in recorded(door)]  # type: ignore[index]
    assert results.count("refreshed") == 1, results


def chunked_head(server: Server) -> bytes:
    path = server.path  # type: ignore[attr-defined]
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()


OVER_A_LIMIT = {
    "head-bytes": lambda server: (
        b"GET /x HTTP/1.1\r\nX-Big: " + b"b" * 3 * HEAD_LIMIT + b"\r\n\r\n"
    ),
    "header-count": lambda server: b"GET /x HTTP/1.1\r\n" + b"a:\r\n" * 200 + b"\r\n",
    "chunk-framing": lambda server: (
        chunked_head(server) + b"5;" + b"e" * 3 * FRAMING_LIMIT + b"\r\nhello\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("over", list(OVER_A_LIMIT))
def test_a_request_over_a_limit_gets_its_431_after_the_answers_before_it(
    door: Server, over: str
) -> None:
    """A 431 closed the connection with the 200 of the delivery before it unsent, while
    the history said refreshed: the sender saw a lost answer for a refresh that was done."""
    with connect(door) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(delivery(door) + OVER_A_LIMIT[over](door))
        answers = read_until_closed(sock)
    assert answers.startswith(b"HTTP/1.1 200 "), answers[:300]
    assert answers.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 431 " in answers, answers[:600]
    assert answers.endswith(b'{"error":"request header fields too large"}')
    results = [e["result"] for e in recorded(door)]  # type: ignore[index]
    assert results.count("refreshed") == 1, results


def test_a_head_of_many_empty_headers_is_refused_at_the_count_not_held(door: Server) -> None:
    """1,000 unfinished heads of 64 KiB of ``a:`` lines once took 1.5 GB (each 4-byte
    header a Python tuple) and stalled deliveries 10 s; now each is refused at once."""
    head = door.path.encode()  # type: ignore[attr-defined]
    head = b"POST " + head + b" HTTP/1.1\r\n" + b"a:\r\n" * ((HEAD_LIMIT - 200) // 4)
    before = rss_mib(door)
    with ExitStack() as stack:
        for _ in range(100):
            sock = stack.enter_context(connect(door))
            sock.sendall(head)  # unfinished: no blank line
            assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")
    assert rss_mib(door) - before < 30
    assert dropped(door, "too-large") == 100  # every one refused at the count, none held
    with connect(door) as sock:
        sock.sendall(delivery(door, close=True))
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")


def test_a_client_still_sending_its_head_reads_its_431_not_a_reset(door: Server) -> None:
    """Closed with the rest of an oversized head unread, the kernel reset the connection
    and the client read a reset instead of the 431; now the server half-closes and drops
    what still comes until the client is done."""
    head = b"GET /x HTTP/1.1\r\nX-Big: " + b"b" * (4 * HEAD_LIMIT)
    with connect(door) as sock:
        for start in range(0, len(head), 8192):  # as a client writes: piece by piece
            sock.sendall(head[start : start + 8192])
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert answer.endswith(b'{"error":"request header fields too large"}')
    assert dropped(door, "too-large") == 1


def sends_until_reset(sock: socket.socket, piece: bytes, most: int) -> int:
    """Bytes sent before the server's close made sending fail (at most ``most``), a piece
    every 10 ms once the socket is writable again."""
    sent = 0
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        while sent < most:
            sock.sendall(piece)
            sent += len(piece)
            time.sleep(0.01 if len(piece) < 1024 else 0)
    return sent


def test_a_refused_client_that_keeps_sending_is_closed_past_the_linger_bytes(
    door: Server,
) -> None:
    with connect(door) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"GET /x HTTP/1.1\r\nX-Big: " + b"b" * HEAD_LIMIT)
        started = time.monotonic()
        sent = sends_until_reset(sock, b"b" * 65536, 64 * LINGER_BYTES)
        assert sent < 3 * LINGER_BYTES  # not read for the whole linger
        assert time.monotonic() - started < LINGER
    assert dropped(door, "too-large") == 1


def test_a_refused_client_that_neither_finishes_nor_closes_is_closed_after_the_linger(
    door: Server,
) -> None:
    with connect(door) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nX-Big: " + b"b" * HEAD_LIMIT)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")  # and the half-close
        started = time.monotonic()
        sends_until_reset(sock, b"b", 10_000)  # dropped until the server closes
    assert LINGER - 0.1 <= time.monotonic() - started < LINGER + 5


def test_a_content_length_of_thousands_of_digits_is_read_as_its_value(door: Server) -> None:
    """``Content-Length: 000…02`` is 2 to the parser; converting its 5,001 digits raised
    in the app: a 500 and a traceback for each such request."""
    path = door.path  # type: ignore[attr-defined]
    length = "0" * 5000 + "2"
    with connect(door) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Event-Key: repo:push\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n{{}}".encode()
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    assert answer.endswith(b'{"error":"missing signature"}')
    assert "Traceback" not in door.logs()


@pytest.fixture
def capped(template: Path, tmp_path: Path) -> Iterator[Server]:
    server = demo_server(template, tmp_path, "--max-connections", "8")
    yield server
    assert server.stop() == 0


def test_at_the_cap_an_idle_keep_alive_connection_makes_room(capped: Server) -> None:
    idle = [connect(capped) for _ in range(8)]
    for sock in idle:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock).startswith(b"HTTP/1.1 200 ")
    with connect(capped) as sock:
        sock.sendall(delivery(capped, close=True))
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert dropped(capped, "idle-evicted") == 1
    assert read_until_closed(idle[0]) == b""  # the longest idle one was closed
    for sock in idle:
        sock.close()


def test_at_the_cap_the_longest_silent_connection_makes_room(capped: Server) -> None:
    silent = [connect(capped) for _ in range(8)]
    with connect(capped) as sock:
        sock.sendall(delivery(capped, close=True))
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert dropped(capped, "head-evicted") == 1
    assert read_until_closed(silent[0]) == b""  # the first to connect, silent since
    for sock in silent:
        sock.close()


def test_at_the_cap_a_connection_lingering_after_its_431_makes_room_first(
    capped: Server,
) -> None:
    idle = [connect(capped) for _ in range(4)]
    for sock in idle:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock).startswith(b"HTTP/1.1 200 ")
    refused = [connect(capped) for _ in range(4)]
    for sock in refused:
        sock.sendall(b"GET /x HTTP/1.1\r\nX-Big: " + b"b" * HEAD_LIMIT)
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")  # half-closed, lingering
    with connect(capped) as sock:
        sock.sendall(delivery(capped, close=True))
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")
    assert dropped(capped, "idle-evicted") == 0  # the idle ones were kept
    for sock in idle + refused:
        sock.close()


def running_request(server: Server) -> socket.socket:
    """A connection whose request runs: its head read by the server (which says so with a
    100 Continue once its app reads the body), its body begun and never finished."""
    sock = connect(server)
    path = server.path  # type: ignore[attr-defined]
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 100 ")
    sock.sendall(b"{")
    return sock


def test_connection_cap_refuses_with_503_logs_once_counts_and_recovers(capped: Server) -> None:
    server = capped
    flood = [running_request(server) for _ in range(8)]
    refused = []
    for _ in range(20):
        with connect(server) as sock:
            refused.append(read_until_closed(sock))
    assert all(answer.startswith(b"HTTP/1.1 503 ") for answer in refused), refused[0]
    assert server.logs().count("connection cap reached") == 1
    assert dropped(server, "cap") == 20
    for sock in flood:
        sock.close()

    def delivered() -> bytes | None:
        with connect(server) as sock:
            sock.sendall(delivery(server, close=True))
            answer = read_until_closed(sock)
        return None if answer.startswith(b"HTTP/1.1 503 ") else answer

    answer = eventually(delivered, what="room again once the flood's connections closed")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b"refreshed 1 warehouse(s)" in answer
