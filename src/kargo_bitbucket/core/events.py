"""Turn a Bitbucket delivery (event key + raw body) into a Push or PullRequestClosed (SPEC §5)."""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

__all__ = [
    "HANDLED_EVENTS",
    "InvalidPayload",
    "NoPullRequestURL",
    "NoRepositoryURL",
    "PullRequestClosed",
    "Push",
    "is_handled",
    "is_ping",
    "parse_event",
]


class Push(msgspec.Struct, frozen=True):
    """A push to one repository, known by all the URLs the payload gives for it.

    `repo_urls`: Cloud `(links.html.href,)`; Server every non-empty
    `links.clone[].href` in payload order, duplicates dropped. `refs`: fully
    qualified refs (`refs/heads/…`, `refs/tags/…`), duplicates dropped, in
    payload order; None means "refs unknown", so every candidate is refreshed.
    """

    repo_urls: tuple[str, ...]
    refs: tuple[str, ...] | None


class PullRequestClosed(msgspec.Struct, frozen=True):
    """A pull request was merged or declined; Promotions waiting on `pr_url` are refreshed."""

    pr_url: str


class InvalidPayload(ValueError):
    """The body is not a JSON object of the expected shape (HTTP 400 "invalid request body").

    `detail` is short, names the offending field path and never echoes input values.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NoRepositoryURL(InvalidPayload):
    """A push without any repository URL (Server 5.x has no `links`): HTTP 400 of its own."""

    def __init__(self) -> None:
        super().__init__("payload has no repository URL")


class NoPullRequestURL(InvalidPayload):
    """A PR event without a PR URL (Server 5.x has no `links`): it cannot match any Promotion.

    Answered like any other malformed body (HTTP 400 "invalid request body" with
    this detail), not 200: the sender should see that nothing was refreshed, just as
    §4 row 9 does for a push without a repository URL.
    """

    def __init__(self) -> None:
        super().__init__("payload has no pull request URL")


_PING = "diagnostics:ping"
_TAG_TYPES = frozenset({"tag", "annotated_tag"})

_Obj = dict[str, Any]


# Field access. Each helper checks the type with isinstance only, so a well-formed
# payload raises nothing; `where` is the dotted path of the containing value, used
# only to build an error detail.


def _kind(expected: type) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}[expected]


def _need(obj: _Obj, key: str, expected: type, where: str) -> Any:
    """Return obj[key], which must be present, non-null and of `expected` type."""
    value = obj.get(key)
    if isinstance(value, expected):
        return value
    path = f"{where}.{key}" if where else key
    if value is None:
        raise InvalidPayload(f"{path} is {'null' if key in obj else 'missing'}")
    raise InvalidPayload(f"{path} is not {_kind(expected)}")


def _optional(obj: _Obj, key: str, expected: type, where: str) -> Any:
    """Return obj[key], or None if it is missing or null; a wrong type is still an error."""
    value = obj.get(key)
    if value is None or isinstance(value, expected):
        return value
    raise InvalidPayload(f"{f'{where}.{key}' if where else key} is not {_kind(expected)}")


def _element(items: list[Any], index: int, where: str) -> _Obj:
    """Return items[index], which must be an object (an array element is never optional)."""
    value = items[index]
    if isinstance(value, dict):
        return value
    path = f"{where}[{index}]"
    raise InvalidPayload(f"{path} is null" if value is None else f"{path} is not an object")


def _optional_objects(root: _Obj, *keys: str) -> _Obj | None:
    """Follow nested optional objects from the root; None as soon as one is missing or null."""
    obj = root
    where = ""
    for key in keys:
        value = _optional(obj, key, dict, where)
        if value is None:
            return None
        obj = value
        where = f"{where}.{key}" if where else key
    return obj


def _nonblank(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


def _cloud_ref(ref_type: str | None, name: str) -> str:
    """A Cloud change's ref, qualified: tags by their type, anything else a branch (SPEC §5)."""
    return ("refs/tags/" if ref_type in _TAG_TYPES else "refs/heads/") + name


# Extraction per flavour.


def _cloud_repo_urls(root: _Obj) -> tuple[str, ...]:
    html = _optional_objects(root, "repository", "links", "html")
    if html is None:
        return ()
    href = _nonblank(_optional(html, "href", str, "repository.links.html"))
    return (href,) if href is not None else ()


def _server_repo_urls(root: _Obj) -> tuple[str, ...]:
    links = _optional_objects(root, "repository", "links")
    clone = None if links is None else _optional(links, "clone", list, "repository.links")
    if not clone:
        return ()
    urls: dict[str, None] = {}
    for i in range(len(clone)):
        entry = _element(clone, i, "repository.links.clone")
        href = _optional(entry, "href", str, f"repository.links.clone[{i}]")
        if href is not None and href.strip():
            urls[href] = None
    return tuple(urls)


def _cloud_refs(root: _Obj) -> tuple[str, ...] | None:
    push = _need(root, "push", dict, "")
    changes = _need(push, "changes", list, "push")
    refs: dict[str, None] = {}
    for i in range(len(changes)):
        where = f"push.changes[{i}]"
        change = _element(changes, i, "push.changes")
        side = "new"
        state = _optional(change, "new", dict, where)
        if state is None:  # deletion: the ref that went away is in `old`
            side = "old"
            state = _optional(change, "old", dict, where)
            if state is None:
                raise InvalidPayload(f"{where} has neither new nor old")
        ref_type = _optional(state, "type", str, f"{where}.{side}")  # absent: a branch
        name = _need(state, "name", str, f"{where}.{side}")
        if not name:
            raise InvalidPayload(f"{where}.{side}.name is empty")
        refs[_cloud_ref(ref_type, name)] = None
    return tuple(refs) or None


def _server_refs(root: _Obj) -> tuple[str, ...] | None:
    changes = _need(root, "changes", list, "")
    refs: dict[str, None] = {}
    for i in range(len(changes)):
        where = f"changes[{i}]"
        change = _element(changes, i, "changes")
        ref = _optional(change, "ref", dict, where)
        ref_id = None if ref is None else _optional(ref, "id", str, f"{where}.ref")
        field = "ref.id"
        if ref_id is None:
            field = "refId"
            ref_id = _optional(change, "refId", str, where)
            if ref_id is None:
                raise InvalidPayload(f"{where} has neither ref.id nor refId")
        if not ref_id.startswith("refs/"):
            raise InvalidPayload(f"{where}.{field} is not a fully qualified ref")
        refs[ref_id] = None
    return tuple(refs) or None


def _push(urls: tuple[str, ...], refs: tuple[str, ...] | None) -> Push:
    # The body's shape is checked before the URL (§4: row 8 before row 9).
    if not urls:
        raise NoRepositoryURL()
    return Push(repo_urls=urls, refs=refs)


def _parse_cloud_push(root: _Obj) -> Push:
    urls = _cloud_repo_urls(root)
    return _push(urls, _cloud_refs(root))


def _parse_server_push(root: _Obj) -> Push:
    urls = _server_repo_urls(root)
    return _push(urls, _server_refs(root))


def _parse_mirror_sync(root: _Obj) -> Push:
    urls = _server_repo_urls(root)
    if _optional(root, "refLimitExceeded", bool, ""):
        return _push(urls, None)  # the mirror did not list the refs: refresh everything
    return _push(urls, _server_refs(root))


def _parse_cloud_pr(root: _Obj) -> PullRequestClosed:
    html = _optional_objects(root, "pullrequest", "links", "html")
    href = None if html is None else _optional(html, "href", str, "pullrequest.links.html")
    href = _nonblank(href)
    if href is None:
        raise NoPullRequestURL()
    return PullRequestClosed(pr_url=href)


def _parse_server_pr(root: _Obj) -> PullRequestClosed:
    links = _optional_objects(root, "pullRequest", "links")
    self_links = None if links is None else _optional(links, "self", list, "pullRequest.links")
    if not self_links:
        raise NoPullRequestURL()
    first = _element(self_links, 0, "pullRequest.links.self")
    href = _nonblank(_optional(first, "href", str, "pullRequest.links.self[0]"))
    if href is None:
        raise NoPullRequestURL()
    return PullRequestClosed(pr_url=href)


# The schema path. Most deliveries are well formed: decoding only the fields above into
# typed structs, and skipping everything else unconverted, takes a 10 KB Cloud push from
# 26 to 14 us. It returns None instead of deciding anything hard; the walk above then
# parses the body again and gives the verdict (the only source of error details).


class _Href(msgspec.Struct):
    href: str | None = None


class _CloudLinks(msgspec.Struct):
    html: _Href | None = None


class _CloudObject(msgspec.Struct):
    links: _CloudLinks | None = None


class _CloudRef(msgspec.Struct):
    name: str
    type: str | None = None


class _CloudChange(msgspec.Struct):
    new: _CloudRef | None = None
    old: _CloudRef | None = None


class _CloudChanges(msgspec.Struct):
    changes: list[_CloudChange]


class _CloudPush(msgspec.Struct):
    push: _CloudChanges
    repository: _CloudObject | None = None


class _CloudPullRequest(msgspec.Struct):
    pullrequest: _CloudObject | None = None


class _ServerLinks(msgspec.Struct):
    clone: list[_Href] | None = None


class _ServerRepository(msgspec.Struct):
    links: _ServerLinks | None = None


class _ServerRef(msgspec.Struct):
    id: str | None = None


class _ServerChange(msgspec.Struct, rename={"ref_id": "refId"}):
    ref: _ServerRef | None = None
    ref_id: str | None = None


class _ServerPush(msgspec.Struct):
    changes: list[_ServerChange]
    repository: _ServerRepository | None = None


class _PullRequestLinks(msgspec.Struct, rename={"self_": "self"}):
    self_: list[_Href] | None = None


class _ServerPullRequestLinks(msgspec.Struct):
    links: _PullRequestLinks | None = None


class _ServerPullRequest(msgspec.Struct, rename={"pull_request": "pullRequest"}):
    pull_request: _ServerPullRequestLinks | None = None


class _Undecided(Exception):
    """The schema path leaves this body to the walk."""


def _decided(value: str | None) -> str:
    """A URL the schema path found, or _Undecided when there is none to use."""
    url = _nonblank(value)
    if url is None:
        raise _Undecided
    return url


def _schema_cloud_push(body: _CloudPush) -> Push:
    links = body.repository.links if body.repository else None
    url = _decided(links.html.href if links and links.html else None)
    refs: dict[str, None] = {}
    for change in body.push.changes:
        state = change.new or change.old
        if state is None or not state.name:
            raise _Undecided
        refs[_cloud_ref(state.type, state.name)] = None
    return Push((url,), tuple(refs) or None)


def _schema_server_push(body: _ServerPush) -> Push:
    links = body.repository.links if body.repository else None
    clone = links.clone or [] if links else []
    urls = tuple({c.href: None for c in clone if c.href is not None and c.href.strip()})
    if not urls:
        raise _Undecided
    refs: dict[str, None] = {}
    for change in body.changes:
        ref_id = change.ref.id if change.ref and change.ref.id is not None else change.ref_id
        if ref_id is None or not ref_id.startswith("refs/"):
            raise _Undecided
        refs[ref_id] = None
    return Push(urls, tuple(refs) or None)


def _schema_cloud_pr(body: _CloudPullRequest) -> PullRequestClosed:
    links = body.pullrequest.links if body.pullrequest else None
    return PullRequestClosed(_decided(links.html.href if links and links.html else None))


def _schema_server_pr(body: _ServerPullRequest) -> PullRequestClosed:
    links = body.pull_request.links if body.pull_request else None
    return PullRequestClosed(_decided(links.self_[0].href if links and links.self_ else None))


def _schema_parser(
    schema: type[msgspec.Struct], extract: Callable[[Any], Push | PullRequestClosed]
) -> Callable[[bytes], Push | PullRequestClosed | None]:
    decoder = msgspec.json.Decoder(schema)

    def parse(body: bytes) -> Push | PullRequestClosed | None:
        try:
            return extract(decoder.decode(body))
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, _Undecided):
            # msgspec checks a string's UTF-8 only when it converts it, and says so with
            # UnicodeDecodeError: the walk then names the field (issue 9: this was a 500).
            return None

    return parse


_SCHEMA_PARSERS: dict[str, Callable[[bytes], Push | PullRequestClosed | None]] = {
    "repo:push": _schema_parser(_CloudPush, _schema_cloud_push),
    "repo:refs_changed": _schema_parser(_ServerPush, _schema_server_push),
    "pullrequest:fulfilled": _schema_parser(_CloudPullRequest, _schema_cloud_pr),
    "pullrequest:rejected": _schema_parser(_CloudPullRequest, _schema_cloud_pr),
    "pr:merged": _schema_parser(_ServerPullRequest, _schema_server_pr),
    "pr:declined": _schema_parser(_ServerPullRequest, _schema_server_pr),
}


_PARSERS: dict[str, Callable[[_Obj], Push | PullRequestClosed]] = {
    "repo:push": _parse_cloud_push,
    "repo:refs_changed": _parse_server_push,
    "mirror:repo_synchronized": _parse_mirror_sync,
    "pullrequest:fulfilled": _parse_cloud_pr,
    "pullrequest:rejected": _parse_cloud_pr,
    "pr:merged": _parse_server_pr,
    "pr:declined": _parse_server_pr,
}

HANDLED_EVENTS: frozenset[str] = frozenset(_PARSERS)
"""Lower-case event keys that trigger work (SPEC §5); `diagnostics:ping` is not one of them."""


def _normalize_key(event_key: str) -> str:
    # ASCII-only case folding: str.lower() maps e.g. the Kelvin sign to "k".
    return event_key.lower() if event_key.isascii() else event_key


def is_ping(event_key: str) -> bool:
    """True for Server/DC's unsigned "Test connection" event, answered before any check."""
    return _normalize_key(event_key) == _PING


def is_handled(event_key: str) -> bool:
    """True if the event key (compared case-insensitively) triggers refreshes."""
    return _normalize_key(event_key) in HANDLED_EVENTS


def parse_event(event_key: str, body: bytes) -> Push | PullRequestClosed:
    """Parse the raw body of a handled event into what the refresh logic needs.

    Raises InvalidPayload (HTTP 400) for a body that is not a JSON object (invalid UTF-8
    and lone surrogates included: the detail names the field holding them) or has a
    field we need missing, null or of the wrong type; its subclass NoRepositoryURL
    for a push whose payload carries no repository URL at all (checked after the
    rest of the body, per §4 row 8 before row 9), and NoPullRequestURL for a PR
    event without a PR URL (Server 5.x `pr:merged`). On the way to a URL a missing
    or null field means "no URL"; anywhere else a missing or null field we need is
    InvalidPayload, and a wrong type is InvalidPayload everywhere. Fields we do not
    need are never looked at. Raises plain ValueError for a key that is not handled:
    that is the caller's bug, not the sender's.
    """
    key = _normalize_key(event_key)
    parser = _PARSERS.get(key)
    if parser is None:
        raise ValueError(f"event key {event_key!r} is not handled")
    by_schema = _SCHEMA_PARSERS.get(key)
    event = by_schema(body) if by_schema is not None else None
    return event if event is not None else _walk(parser, body)


def _walk(
    parser: Callable[[_Obj], Push | PullRequestClosed], body: bytes
) -> Push | PullRequestClosed:
    """Decode the whole body and let ``parser`` check each field it reads on the way."""
    return parser(_decode(body))


def _decode(body: bytes) -> _Obj:
    """The body as a JSON object, or InvalidPayload naming what is wrong and where.

    orjson refuses invalid UTF-8 anywhere, lone surrogate escapes and nesting past 1,024
    levels; its message and position say what and where without quoting the input.
    """
    try:
        root = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidPayload(_not_json(body, error)) from None
    if not isinstance(root, dict):
        raise InvalidPayload("body is not a JSON object")
    return root


_BAD_BYTE = "\ufdd0"
"""Stands in for an invalid byte while looking for where it is: a noncharacter, never text."""
_PATH_LIMIT = 200
"""Characters of a field path an error detail may carry: keys of unread fields are input."""
_NAMED_LIMIT = 64 * 1024
"""Bytes of a body up to which the detail names the field holding an invalid byte; past
them it gives the byte's offset (finding the field in a signed 2 MB body of 400,000 small
arrays held the event loop 2.7 s: most of it building their objects)."""


def _not_json(body: bytes, error: orjson.JSONDecodeError) -> str:
    """Why orjson refused the body: the field holding invalid UTF-8, or its message and offset."""
    try:
        body.decode()
    except UnicodeDecodeError as bad:
        if len(body) <= _NAMED_LIMIT:
            with contextlib.suppress(orjson.JSONDecodeError):
                root = orjson.loads(body.decode(errors=_MARK_BAD_BYTES))
                return f"{_marked_path(root)} is not valid UTF-8"
        return f"body is not valid UTF-8 (byte {bad.start})"
    return f"body is not valid JSON: {error.msg} at character {error.pos}"


def _marked_path(root: Any) -> str:
    """Where the first invalid-byte mark is: the path of a string, or the object of a key."""
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and _BAD_BYTE in value:
            break
        if isinstance(value, dict):
            if any(_BAD_BYTE in key for key in value):
                path = f"a key of {path or 'the body'}"
                break
            items = [(_child(path, f".{key}" if path else key), v) for key, v in value.items()]
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(_child(path, f"[{i}]"), v) for i, v in enumerate(value)]))
    else:
        return "body"
    return path


def _child(path: str, segment: str) -> str:
    """``path`` + ``segment``, cut at _PATH_LIMIT with a marker (a long key deep down would
    otherwise be copied into the path of every value under it)."""
    if len(path) > _PATH_LIMIT:
        return path
    joined = path + segment
    return joined if len(joined) <= _PATH_LIMIT else joined[:_PATH_LIMIT] + "…"


def _mark(error: UnicodeError) -> tuple[str, int]:
    """A codecs error handler: each invalid byte becomes one _BAD_BYTE."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return _BAD_BYTE * (error.end - error.start), error.end


_MARK_BAD_BYTES = "kargo-bitbucket.mark-bad-bytes"
codecs.register_error(_MARK_BAD_BYTES, _mark)
