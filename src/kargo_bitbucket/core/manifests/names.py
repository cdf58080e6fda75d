"""Kubernetes and Kargo name rules: each returns why a value breaks it, or None."""

from __future__ import annotations

import re
from typing import Any

from kargo_bitbucket.core.manifests.schema import (
    MAX_ANNOTATION_BYTES,
    Ctx,
    Path,
    quote,
)

# ---------------------------------------------------------------------------- name rules

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL, re.ASCII)
_DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
_QUALIFIED = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", re.ASCII)
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+", re.ASCII)
_BRANCH = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]*[A-Za-z0-9_-])?", re.ASCII)
_INTERVAL = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?[smh])+", re.ASCII)
_GIT_URL = re.compile(
    r"(?:ssh|https?)://(?:[\w-]+(?::.+)?@)?[\w-]+(?:\.[\w-]+)*(?::\d{1,5})?/.*", re.ASCII
)
_GIT_SCP = re.compile(r"[\w-]+@[\w+]+(?:\.[\w-]+)*:", re.ASCII)


def dns_label(value: str) -> str | None:
    """Why ``value`` is not an RFC 1123 label (a namespace), or None."""
    if len(value) <= 63 and _DNS_LABEL.fullmatch(value):
        return None
    return (
        "must be a lowercase RFC 1123 label (at most 63 characters: a-z, 0-9 and '-', "
        f"starting and ending with a letter or digit), got {quote(value)}"
    )


def dns_subdomain(value: str) -> str | None:
    """Why ``value`` is not an RFC 1123 subdomain (an object name), or None."""
    if len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value):
        return None
    return (
        "must be a lowercase RFC 1123 subdomain (1-253 characters: a-z, 0-9, '-' and '.', "
        f"each part starting and ending with a letter or digit), got {quote(value)}"
    )


def qualified_name(key: str) -> str | None:
    """Label and annotation keys: ``[prefix/]name``, as Kubernetes requires."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "the prefix before '/' must be a lowercase DNS subdomain"
    if not name or len(name) > 63 or not _QUALIFIED.fullmatch(name):
        return (
            "the name must be 1-63 characters of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def annotation_key(key: str) -> str | None:
    """Annotation keys: checked lower-cased, as Kubernetes does (``Example.COM/owner`` is valid
    for an annotation, not for a label)."""
    return qualified_name(key.lower())


_VAR_NAME = re.compile(r"[a-zA-Z_]\w*", re.ASCII)


def var_name(value: str) -> str | None:
    """A Promotion's or step's ``vars[].name`` (the CRD's ``^[a-zA-Z_]\\w*$``, read as Go)."""
    if _VAR_NAME.fullmatch(value):
        return None
    return f"must be a letter or _, then letters, digits or _; got {quote(value)}"


def label_value(value: str) -> str | None:
    if value == "" or (len(value) <= 63 and _QUALIFIED.fullmatch(value)):
        return None
    return (
        "must be empty or at most 63 characters of letters, digits, '-', '_' or '.', "
        f"starting and ending with a letter or digit, got {quote(value)}"
    )


def config_key(key: str) -> str | None:
    if len(key) <= 253 and _CONFIG_KEY.fullmatch(key):
        return None
    return "must be 1-253 characters of letters, digits, '-', '_' or '.'"


def branch(value: str) -> str | None:
    if _BRANCH.fullmatch(value):
        return None
    return (
        "must be a branch name (letters, digits, '.', '_', '/' and '-', starting with a "
        f"letter or digit and not ending with '.' or '/'), got {quote(value)}"
    )


def interval(value: str) -> str | None:
    if _INTERVAL.fullmatch(value):
        return None
    return f"must be a duration such as 5m0s, 90s or 1h, got {quote(value)}"


def git_url(value: str) -> str | None:
    if _GIT_URL.fullmatch(value) or _GIT_SCP.match(value):
        return None
    return (
        "must be a Git URL (https://host/path, ssh://[user@]host[:port]/path or "
        f"user@host:path), got {quote(value)}"
    )


def annotations_size(out: Any, path: Path, ctx: Ctx) -> None:
    total = sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in out.items())
    if total > MAX_ANNOTATION_BYTES:
        ctx.fail(path, f"total size must be at most {MAX_ANNOTATION_BYTES} bytes, got {total}")
