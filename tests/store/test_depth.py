"""depth.py's fallback decoders, on objects deeper than lightkube's own decoder takes on any
Python (the real API server test, tests/kube, covers them in the receiver)."""

from __future__ import annotations

import json
import logging

import msgspec
import pytest

from kargo_bitbucket.store.kubernetes import depth
from kargo_bitbucket.store.kubernetes.resources import RESOURCES

WAREHOUSE = RESOURCES["Warehouse"]
TOO_DEEP = 100_000
"""Past Python 3.11's recursion limit, 3.12's C limit (~1,500) and 3.13's (~10,000)."""
REPO = "https://bitbucket.org/acme/deep"


def warehouse(name: str, levels: int = 1) -> bytes:
    """A Warehouse whose first subscription nests ``levels`` objects deep, and whose second
    is an ordinary git subscription."""
    meta = json.dumps({"name": name, "namespace": "demo", "resourceVersion": "7"})
    nested = '{"x": ' * levels + "{}" + "}" * levels
    git = json.dumps({"git": {"repoURL": REPO, "branch": "main"}})
    return (
        f'{{"apiVersion": "kargo.akuity.io/v1alpha1", "kind": "Warehouse", "metadata": {meta}, '
        f'"spec": {{"subscriptions": [{{"image": {nested}}}, {git}]}}}}'
    ).encode()


def page(*items: bytes) -> bytes:
    return (
        b'{"apiVersion": "v1", "kind": "WarehouseList", "items": ['
        + b", ".join(items)
        + b'], "metadata": {"resourceVersion": "42", "continue": "next"}}'
    )


def levels_kept(body: dict[str, object]) -> int:
    node = body["spec"]["subscriptions"][0]["image"]  # type: ignore[index]
    count = 0
    while isinstance(node, dict):
        node, count = node.get("x"), count + 1
    return count


def test_cut_reads_what_lies_deeper_as_null_and_skips_brackets_in_strings() -> None:
    data = b'{"a": "[{\\"]", "b": [[1], {"c": []}, 2], "d": {}}'
    shallow, spans = depth.cut(data, 2)
    assert shallow == b'{"a": "[{\\"]", "b": [null, null, 2], "d": {}}'
    assert [data[begin:end] for begin, end in spans] == [b"[1]", b'{"c": []}']
    assert depth.cut(data, 3) == (data.replace(b"[]", b"null"), [(32, 34)])
    assert depth.cut(data, 4) == (data, [])


def test_a_list_page_holding_an_object_too_deep_keeps_every_other_item_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = page(warehouse("a"), warehouse("deep", TOO_DEEP), warehouse("b"))
    with pytest.raises(RecursionError):  # what lightkube's decoder, msgspec, does with it
        msgspec.json.decode(data)
    caplog.set_level(logging.WARNING, logger=depth.__name__)
    cont, version, items = depth.decode_list(data, WAREHOUSE)
    assert (cont, version) == ("next", "42")
    assert [item["metadata"]["name"] for item in items] == ["a", "deep", "b"]
    assert items[0] == json.loads(warehouse("a"))
    assert items[1]["spec"]["subscriptions"][1] == {"git": {"repoURL": REPO, "branch": "main"}}
    # The image subscription is the 5th level: the Warehouse, spec, subscriptions, [0], image.
    assert levels_kept(items[1]) == depth.CUT_DEPTH - 4
    assert caplog.messages == [
        "Warehouse demo/deep nests deeper than Python decodes: read with 1 value(s) deeper "
        f"than {depth.CUT_DEPTH} levels cut to null"
    ]


def test_a_watch_event_of_an_object_too_deep_is_read_cut() -> None:
    line = '{"type": "MODIFIED", "object": ' + warehouse("deep", TOO_DEEP).decode() + "}"
    with pytest.raises(RecursionError):
        msgspec.json.decode(line)
    event = depth.decode_watch_event(line)
    assert event.type == "MODIFIED"
    assert isinstance(event.object, msgspec.Raw)
    obj = depth.decode_object(event.object, WAREHOUSE)
    assert (obj.metadata.name, obj.metadata.resourceVersion) == ("deep", "7")
    assert levels_kept(obj) == depth.CUT_DEPTH - 4
