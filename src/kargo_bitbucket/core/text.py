"""Text from outside (senders, Bitbucket's API, files, flags) checked before it goes into a
request, and escaped before it reaches a terminal."""

from __future__ import annotations

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
