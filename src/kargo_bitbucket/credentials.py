"""Bitbucket API credentials per host, from a YAML/JSON document (file or Kubernetes Secret).

The document maps a host to its credential::

    bitbucket.org:                      # Bitbucket Cloud
      email: you@example.com            # with an API token: Basic email:token
      token: ATATT3x...                 # without email: an access token (Bearer)
    bitbucket.example.com:              # a Data Center host (or its base URL)
      token: NjM4...                    # HTTP access token (Bearer)
      api_url: https://bitbucket.example.com/bitbucket   # optional: where its REST API is

Tokens are never printed or logged: ``repr`` leaves them out, and no error message
quotes the document's values.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from kargo_bitbucket.config import ConfigError
from kargo_bitbucket.core.text import http_url_problem, plain
from kargo_bitbucket.core.webhooks import CLOUD

CREDENTIALS_ENV = "KARGO_BITBUCKET_CREDENTIALS"
SECRET_NAME = "kargo-bitbucket-credentials"
SECRET_KEY = "credentials.yaml"
CLOUD_API = "https://api.bitbucket.org"


class CredentialsError(ConfigError):
    """The credentials document is unreadable or malformed (names the place, never a value)."""


@dataclass(frozen=True, slots=True)
class Credential:
    """How to call one host's API."""

    token: str = field(repr=False)
    email: str = ""
    api_url: str = ""

    def authorization(self) -> str:
        """The ``Authorization`` header value: Basic email:token, else Bearer token."""
        if self.email:
            pair = f"{self.email}:{self.token}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return f"Bearer {self.token}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """Credentials by host key (``bitbucket.org``, a hostname, ``host:port`` or a base URL)."""

    hosts: Mapping[str, Credential] = field(default_factory=dict)

    def lookup(self, server: str) -> Credential | None:
        """The credential for a place's server: its base URL, else its host[:port], else host."""
        if server == CLOUD:
            return self.hosts.get(CLOUD)
        parts = urlsplit(server)
        for key in (server, parts.netloc, parts.hostname or ""):
            if key in self.hosts:
                return self.hosts[key]
        return None

    def api_url(self, server: str, overrides: Mapping[str, str]) -> str:
        """Where the REST API of ``server`` is: an override, the credential's, else the default."""
        parts = urlsplit(server)
        for key in (server, parts.netloc, parts.hostname or ""):
            if key in overrides:
                return overrides[key].rstrip("/")
        found = self.lookup(server)
        if found is not None and found.api_url:
            return found.api_url.rstrip("/")
        return CLOUD_API if server == CLOUD else server

    def servers(self) -> frozenset[str]:
        """Hostnames named, so SSH URLs on them are taken for Data Center repositories."""
        return frozenset(
            (urlsplit(key).hostname or "") if "://" in key else key.partition(":")[0]
            for key in self.hosts
        )


def parse(text: str, source: str) -> Credentials:
    """Read a credentials document; ``source`` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise CredentialsError(f"{source}{where}: not valid YAML or JSON") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise CredentialsError(f"{source}: must map hosts to credentials")
    hosts = {}
    for host, entry in data.items():
        hosts[str(host)] = _credential(entry, f"{source}: {host}")
    return Credentials(hosts)


def _credential(entry: Any, where: str) -> Credential:
    if not isinstance(entry, Mapping):
        raise CredentialsError(f"{where}: must be a mapping with a token")
    unknown = sorted(str(k) for k in entry if k not in ("token", "email", "api_url"))
    if unknown:
        raise CredentialsError(f"{where}: unknown field {unknown[0]!r}")
    values = {}
    for key in ("token", "email", "api_url"):
        value = entry.get(key, "")
        if not isinstance(value, str):
            raise CredentialsError(f"{where}.{key}: must be a string")
        values[key] = value.strip()
    if not values["token"]:
        raise CredentialsError(f"{where}.token: missing")
    if not plain(values["token"]):  # it goes into a header as it is
        raise CredentialsError(f"{where}.token: must be printable ASCII without spaces")
    api = values["api_url"]
    if api and (problem := http_url_problem(api)):
        raise CredentialsError(f"{where}.api_url: {problem}")
    return Credential(token=values["token"], email=values["email"], api_url=api)


def read_file(path: str) -> Credentials:
    """Read the credentials file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8"
        raise CredentialsError(f"{path}: cannot read: {reason}") from None
    return parse(text, path)
