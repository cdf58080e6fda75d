"""A fake Bitbucket webhook API on a free loopback port: Cloud or Data Center shapes.

Built from Atlassian's documented shapes: Cloud hooks have ``uuid`` (in braces),
``url``, ``description``, ``active``, ``events`` and ``secret_set`` (the secret itself
is accepted, never returned), listed in pages linked by ``next``; Data Center webhooks
have a numeric ``id``, ``name``, ``url``, ``active``, ``events`` and
``configuration.secret``, listed in pages with ``isLastPage``/``nextPageStart``. Pages
are ``page_size`` long whatever the client asks, so every listing spans several.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MASK = "********"


@dataclass
class Call:
    """One request the fake answered."""

    method: str
    path: str
    authorization: str
    body: Any


@dataclass
class FakeBitbucket:
    """State and behaviour of one fake host; ``repositories`` maps ``owner/slug`` → hooks."""

    cloud: bool
    token: str = "t0ken"
    authorization: str = ""
    page_size: int = 2
    repositories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    containers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Workspace- or project-level hooks by owner."""
    forbidden: set[str] = field(default_factory=set)
    rate_limited: int = 0
    """How many of the next requests get a 429."""
    retry_after: str = "0"
    latency: float = 0.0
    """Seconds each answer is held back (a WAN round trip, for measurements)."""
    answer_with: tuple[int, Any, dict[str, str]] | None = None
    """One fixed answer (status, JSON body, headers) to every request, when set: a proxy
    or an SSO page in front of the API."""
    secrets: dict[str, str] = field(default_factory=dict)
    """The secret each hook id was last given (what Bitbucket would sign with)."""
    calls: list[Call] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _next_id: int = 1

    def __post_init__(self) -> None:
        if not self.authorization:
            self.authorization = f"Bearer {self.token}"

    def add_repository(self, owner: str, slug: str, *hooks: dict[str, Any]) -> None:
        """A repository holding ``hooks`` (given in the host's own shape)."""
        key = f"{owner}/{slug}"
        self.repositories[key] = []
        for hook in hooks:
            self._store(self.repositories[key], dict(hook))

    def hooks(self, owner: str, slug: str = "") -> list[dict[str, Any]]:
        """The hooks of a repository (or of the workspace/project when ``slug`` is empty)."""
        return self.repositories[f"{owner}/{slug}"] if slug else self.containers[owner]

    def _store(self, hooks: list[dict[str, Any]], hook: dict[str, Any]) -> dict[str, Any]:
        key = "uuid" if self.cloud else "id"
        if key not in hook:
            hook[key] = "{" + str(uuid.uuid4()) + "}" if self.cloud else self._next_id
            self._next_id += 1
        secret = (
            hook.pop("secret", None)
            if self.cloud
            else (hook.get("configuration") or {}).get("secret")
        )
        if secret:
            self.secrets[str(hook[key])] = secret
        if self.cloud:
            hook["secret_set"] = bool(secret) or bool(hook.get("secret_set"))
        hooks.append(hook)
        return hook

    def _shown(self, hook: dict[str, Any]) -> dict[str, Any]:
        shown = dict(hook)
        if not self.cloud and (shown.get("configuration") or {}).get("secret"):
            shown["configuration"] = {**shown["configuration"], "secret": MASK}
        return shown

    # Serving
    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _answer(
                self, status: int, body: Any = None, headers: dict[str, str] | None = None
            ) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                auth = self.headers.get("Authorization", "")
                fake.calls.append(Call(self.command, self.path, auth, body))
                status, answer, headers = fake.route(self.command, self.path, auth, body)
                time.sleep(fake.latency)
                self._answer(status, answer, headers)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def route(
        self, method: str, target: str, auth: str, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """Status, JSON body and headers for one request."""
        if self.answer_with is not None:
            return self.answer_with
        if self.rate_limited > 0:
            self.rate_limited -= 1
            return 429, self._error("Rate limit exceeded"), {"Retry-After": self.retry_after}
        if auth != self.authorization:
            return 401, self._error("Authentication required"), {}
        parts = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        segments = [unquote(s) for s in parts.path.split("/") if s]
        found = self._resolve(segments)
        if found is None:
            return 404, self._error("No such resource"), {}
        kind, owner, slug, hook_id = found
        if f"{owner}/{slug}" in self.forbidden or owner in self.forbidden:
            return 403, self._error("You do not have admin access to this repository"), {}
        if kind == "repositories":
            return 200, self._page(parts.path, query, [{"slug": s} for s in self._slugs(owner)]), {}
        key = f"{owner}/{slug}"
        if slug and key not in self.repositories:
            return 404, self._error(f"Repository {key} not found"), {}
        hooks = self.repositories[key] if slug else self.containers.setdefault(owner, [])
        if hook_id is None:
            if method == "GET":
                return 200, self._page(parts.path, query, [self._shown(h) for h in hooks]), {}
            if method == "POST":
                return 201, self._shown(self._store(hooks, dict(body))), {}
            return 405, self._error("Method not allowed"), {}
        id_key = "uuid" if self.cloud else "id"
        match = [h for h in hooks if str(h[id_key]) == hook_id]
        if not match:
            return 404, self._error("No such webhook"), {}
        if method == "DELETE":
            hooks.remove(match[0])
            return 204, None, {}
        if method == "PUT":
            hooks.remove(match[0])
            return (
                200,
                self._shown(self._store(hooks, {**dict(body), id_key: match[0][id_key]})),
                {},
            )
        return 200, self._shown(match[0]), {}

    def _resolve(self, s: list[str]) -> tuple[str, str, str, str | None] | None:
        """(kind, owner, slug, hook id) of a path this fake serves, else None."""
        if self.cloud:
            if s[:2] == ["2.0", "repositories"] and len(s) == 3:
                return "repositories", s[2], "", None
            if s[:2] == ["2.0", "repositories"] and len(s) in (5, 6) and s[4] == "hooks":
                return "hooks", s[2], s[3], s[5] if len(s) == 6 else None
            if s[:2] == ["2.0", "workspaces"] and len(s) in (4, 5) and s[3] == "hooks":
                return "hooks", s[2], "", s[4] if len(s) == 5 else None
            return None
        if s[:4] != ["rest", "api", "latest", "projects"] or len(s) < 6:
            return None
        owner = s[4].upper()
        if s[5:] == ["repos"]:
            return "repositories", owner, "", None
        if s[5] == "repos" and len(s) in (8, 9) and s[7] == "webhooks":
            return "hooks", owner, s[6], s[8] if len(s) == 9 else None
        if s[5] == "webhooks" and len(s) in (6, 7):
            return "hooks", owner, "", s[6] if len(s) == 7 else None
        return None

    def _slugs(self, owner: str) -> list[str]:
        return sorted(k.split("/")[1] for k in self.repositories if k.split("/")[0] == owner)

    def _page(self, path: str, query: dict[str, str], values: list[Any]) -> dict[str, Any]:
        if self.cloud:
            page = int(query.get("page", "1"))
            chunk = values[(page - 1) * self.page_size : page * self.page_size]
            answer: dict[str, Any] = {"page": page, "pagelen": self.page_size, "size": len(values)}
            answer["values"] = chunk
            if page * self.page_size < len(values):
                answer["next"] = f"{self.url}{path}?page={page + 1}&pagelen={self.page_size}"
            return answer
        start = int(query.get("start", "0"))
        chunk = values[start : start + self.page_size]
        last = start + self.page_size >= len(values)
        answer = {"size": len(chunk), "limit": self.page_size, "start": start, "values": chunk}
        answer["isLastPage"] = last
        if not last:
            answer["nextPageStart"] = start + self.page_size
        return answer

    def _error(self, message: str) -> dict[str, Any]:
        if self.cloud:
            return {"type": "error", "error": {"message": message}}
        return {"errors": [{"context": None, "message": message, "exceptionName": None}]}


@contextmanager
def running(fake: FakeBitbucket) -> Iterator[FakeBitbucket]:
    """Start ``fake`` for the ``with`` block, then stop it."""
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
