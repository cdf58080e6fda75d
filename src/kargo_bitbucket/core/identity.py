"""Repository identity: one key per Git repository, however its URL is spelled (SPEC §6.2)."""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")
_SCP = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>(?!//).*)$")


URL_LIMIT = 4096
"""Characters past which a URL is its own identity, unnormalised: no Git host serves a
repository at such a URL, and normalising a signed 1.8 MB URL of ``%2F`` held the event
loop 0.5 s. Every shorter URL's identity is at most this long, so none can equal it."""
CACHED_URLS = 1024
CACHED_URL_LENGTH = 256
"""Identities of up to ``CACHED_URLS`` URLs of at most this length are remembered (0.5 MB
at most): every push names its repository, and the same ones push again and again."""


def repository_identity(url: str) -> str:
    """Return ``host/path`` for a Git URL in URL or SCP syntax (see ``_identity``); a URL
    longer than ``URL_LIMIT`` is returned as it is."""
    if len(url) <= CACHED_URL_LENGTH:
        return _remembered(url)
    return _identity(url) if len(url) <= URL_LIMIT else url


def _identity(url: str) -> str:
    """Return ``host/path`` for a Git URL in URL or SCP syntax.

    Whitespace and non-printable characters are dropped, the result is lower-cased,
    scheme, userinfo, port, query and fragment are removed, percent-escapes decoded (Go's
    URL parser, which Kargo uses, re-escapes ``%7E`` as ``~``), and one trailing ``/``
    then one trailing ``.git`` are stripped, so every spelling Bitbucket or a Warehouse
    may use of one repository gives the same key.
    """
    if url.isprintable() and " " not in url:  # the common case, checked in C
        text = url.lower()
    else:
        text = "".join(ch for ch in url if ch.isprintable() and not ch.isspace()).lower()
    scheme = _SCHEME.match(text)
    if scheme:
        rest = text[scheme.end() :]
        authority, slash, path = rest.partition("/")
        host = authority.rpartition("@")[2]
        host = _strip_port(host)
        text = host + slash + path.partition("?")[0].partition("#")[0]
    else:
        scp = _SCP.match(text)
        if scp:
            text = scp.group("host") + "/" + scp.group("path").lstrip("/")
    if "%" in text:
        text = unquote(text)
    text = text.removesuffix("/")
    return text.removesuffix(".git")


_remembered = functools.lru_cache(maxsize=CACHED_URLS)(_identity)


def _strip_port(host: str) -> str:
    """Drop a ``:port`` suffix, keeping bracketed IPv6 literals intact."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.partition(":")[0]
