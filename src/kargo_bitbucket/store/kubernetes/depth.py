"""Objects nested deeper than Python decodes, read with their deepest values cut to null.

Kargo's CRDs keep unknown fields, so a Warehouse may nest up to the API server's 10,000
levels; lightkube's decoder (msgspec) raises RecursionError far sooner (at Python 3.11's
recursion limit, at 3.12's fixed C limit of about 1,500), and one such object stopped a
watch and failed every list holding it. These fallbacks run only once that decode failed.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec

from kargo_bitbucket.compat import decoders
from kargo_bitbucket.logs import Throttle

log = logging.getLogger(__name__)

CUT_DEPTH = 500
"""Levels of an object kept; what lies deeper is read as null. Half Python's default
recursion limit: decodable on every Python, with room for the caller's frames, and far
deeper than any field the receiver reads."""
CUT_LOG_RATE = 5
"""Lines a second about objects read cut (whoever may create one may change it often)."""
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')
_cut_lines = Throttle(CUT_LOG_RATE)
_decoders = decoders()
_decode_list = _decoders.decode_list
_decode_object = _decoders.decode_object
_decode_watch_event = _decoders.decode_watch_event


def cut(data: bytes, depth: int) -> tuple[bytes, list[tuple[int, int]]]:
    """``data`` (JSON) with each array or object nested deeper than ``depth`` read as null,
    and the spans in ``data`` of those it replaced (found without recursion)."""
    spans: list[tuple[int, int]] = []
    level = start = 0
    for token in _TOKEN.finditer(data):
        char = data[token.start()]
        if char in b"[{":
            level += 1
            if level == depth + 1:
                start = token.start()
        elif char in b"]}":
            if level == depth + 1:
                spans.append((start, token.end()))
            level -= 1
    pieces, kept = [], 0
    for begin, end in spans:
        pieces += [data[kept:begin], b"null"]
        kept = end
    pieces.append(data[kept:])
    return b"".join(pieces), spans


def _bytes(data: bytes | str | msgspec.Raw) -> bytes:
    """What lightkube decodes (a body, a watch stream's line, an event's object) as bytes."""
    return data.encode() if isinstance(data, str) else bytes(data)


def decode_object(data: bytes | msgspec.Raw, res: Any) -> Any:
    """lightkube's decode of one object; one too deep for it is read cut, and logged."""
    try:
        return _decode_object(data, res)
    except RecursionError:
        shallow, spans = cut(_bytes(data), CUT_DEPTH)
        obj = _decode_object(shallow, res)
        kind = getattr(res, "__name__", "object")
        if _cut_lines.admit(kind) is not None:
            meta = obj.metadata
            log.warning(
                "%s %s/%s nests deeper than Python decodes: read with %d value(s) deeper "
                "than %d levels cut to null",
                kind,
                meta.namespace or "",
                meta.name,
                len(spans),
                CUT_DEPTH,
            )
        return obj


def decode_list(data: bytes, res: Any) -> tuple[str | None, str | None, list[Any]]:
    """lightkube's decode of a list page; if it fails, each item is decoded on its own, so
    only the one too deep is read cut."""
    try:
        result: tuple[str | None, str | None, list[Any]] = _decode_list(data, res)
        return result
    except RecursionError:
        # The page's only values three levels deep are its items (a ListMeta holds none).
        shallow, items = cut(data, 2)
        meta = msgspec.json.decode(shallow).get("metadata") or {}
        decoded = [decode_object(data[begin:end], res) for begin, end in items]
        return meta.get("continue") or None, meta.get("resourceVersion"), decoded


def decode_watch_event(line: str | bytes) -> Any:
    """lightkube's decode of one watch event; one too deep keeps its object undecoded, for
    :func:`decode_object` to read cut."""
    try:
        return _decode_watch_event(line)
    except RecursionError:
        data = _bytes(line)
        shallow, ((begin, end),) = cut(data, 1)  # the event's object, as null
        event = _decode_watch_event(shallow)
        event.object = msgspec.Raw(data[begin:end])
        return event


def tolerate_deep_objects() -> None:
    """Make every lightkube list, watch and read fall back to the decoders above."""
    _decoders.decode_list = decode_list
    _decoders.decode_object = decode_object
    _decoders.decode_watch_event = decode_watch_event
