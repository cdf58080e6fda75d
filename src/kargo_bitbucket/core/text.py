"""Text from outside (senders, Bitbucket's API, files, flags) checked before it goes into a
request, and escaped before it reaches a terminal."""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def plain(text: str) -> bool:
    """Whether ``text`` can go into a request line or header as it is: printable ASCII
    without spaces."""
    return text.isascii() and text.isprintable() and " " not in text


def http_url_problem(url: str) -> str:
    """Why ``url`` is not an http(s) URL with a host that can go into a request as it is;
    "" when it is."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError as error:  # "Invalid IPv6 URL", "Port out of range 0-65535"
        return str(error)
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not host:
        return "has no host"
    if not plain(url):
        return "must be ASCII without spaces (percent-encode the rest)"
    return ""


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped (``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


_C1 = re.compile(rb"\xc2[\x80-\x9f]")
"""C1 control characters in UTF-8, which JSON leaves as they are: U+009B is a terminal's CSI."""


def _escape_c1(control: re.Match[bytes]) -> bytes:
    """``\\u009b`` for U+009B (``\\xc2\\x9b``): the second byte is the code point."""
    return b"\\u%04x" % control[0][1]


def json_c1_escaped(rendered: bytes) -> bytes:
    """UTF-8 JSON with its C1 control characters escaped as JSON escapes C0 ones: the same
    document, which a terminal shows instead of obeying (a header's bytes 0x80-0x9F reach
    us as latin-1)."""
    if rendered.isascii():
        return rendered
    return _C1.sub(_escape_c1, rendered)
