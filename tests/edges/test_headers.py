"""The request headers a delivery reads (``delivery.read_headers``), as ASGI gives them."""

from __future__ import annotations

from kargo_bitbucket.bounds import ID_LIMIT
from kargo_bitbucket.delivery import read_headers


def test_server_deliveries_are_named_by_their_request_id_and_cloud_ones_by_their_uuid() -> None:
    server = read_headers([(b"x-request-id", b"dc-1"), (b"x-event-key", b" repo:refs_changed ")])
    assert (server.delivery_id, server.event_key) == ("dc-1", "repo:refs_changed")
    cloud = read_headers([(b"x-request-id", b"dc-1"), (b"x-request-uuid", b"{cloud}")])
    assert cloud.delivery_id == "{cloud}"
    assert read_headers([]).delivery_id == ""


def test_the_last_of_a_repeated_header_counts() -> None:
    headers = read_headers([(b"x-hub-signature", b"sha256=aa"), (b"x-hub-signature", b"sha256=bb")])
    assert headers.signature == "sha256=bb"


def test_what_history_keeps_is_cut_and_the_event_key_stays_whole() -> None:
    """The id and attempt go to history and logs as they are; the key is answered whole in
    "event ... ignored" and cut only where it is recorded."""
    long = "x" * 1000
    headers = read_headers(
        [(b"x-request-uuid", long.encode()), (b"x-attempt-number", long.encode()),
         (b"x-event-key", long.encode())]
    )  # fmt: skip
    for kept in (headers.delivery_id, headers.attempt):
        assert kept.startswith("x" * ID_LIMIT) and not kept.startswith("x" * (ID_LIMIT + 1))
        assert "1000" in kept  # how long it was
    assert headers.event_key == long
