"""The Bitbucket REST calls ``hooks`` makes: list, create, update and delete webhooks.

Cloud: ``/2.0/repositories/{workspace}/{slug}/hooks`` and ``/2.0/workspaces/{ws}/hooks``
(pages linked by ``next``). Data Center: ``/rest/api/latest/projects/{KEY}/repos/{slug}/
webhooks`` and ``/rest/api/latest/projects/{KEY}/webhooks`` (pages by ``isLastPage`` /
``nextPageStart``). A 429 waits for ``Retry-After`` (at most ``MAX_WAIT`` each time,
``ATTEMPTS`` tries); every error becomes a ``BitbucketError`` naming the status, so one
repository's 403 never stops the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2 as httpx

from kargo_bitbucket.core.webhooks import Hook, Place
from kargo_bitbucket.credentials import Credential

TIMEOUT = 10.0
"""Seconds per request: Bitbucket answers these calls in well under one."""
ATTEMPTS = 4
MAX_WAIT = 10.0
"""Longest wait for one ``Retry-After``; a longer one is reported instead of waited for."""
MAX_PAGES = 100
"""Pages followed per listing (10,000 hooks or repositories at 100 a page)."""
PAGE = 100


class BitbucketError(Exception):
    """A call that failed: ``status`` is the HTTP status, 0 when Bitbucket was not reached."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BitbucketClient:
    """One host's webhook API (Cloud or Data Center), authenticated with its credential."""

    def __init__(
        self,
        api_url: str,
        credential: Credential,
        cloud: bool,
        timeout: float = TIMEOUT,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.cloud = cloud
        self.timeout = timeout
        self._origin = urlsplit(self.api_url)[:2]
        self._http = httpx.AsyncClient(
            timeout=timeout,
            headers={"Authorization": credential.authorization(), "Accept": "application/json"},
        )

    async def close(self) -> None:
        """Release the connections."""
        await self._http.aclose()

    def _hooks_path(self, place: Place) -> str:
        owner, slug = quote(place.owner, safe=""), quote(place.slug, safe="")
        if self.cloud:
            if slug:
                return f"/2.0/repositories/{owner}/{slug}/hooks"
            return f"/2.0/workspaces/{owner}/hooks"
        if slug:
            return f"/rest/api/latest/projects/{owner}/repos/{slug}/webhooks"
        return f"/rest/api/latest/projects/{owner}/webhooks"

    async def hooks(self, place: Place) -> list[Hook]:
        """Every webhook at ``place``."""
        return [self._hook(item) for item in await self._list(self._hooks_path(place))]

    async def repositories(self, container: Place) -> list[str]:
        """The slugs of every repository in a workspace or project."""
        owner = quote(container.owner, safe="")
        if self.cloud:
            path = f"/2.0/repositories/{owner}"
        else:
            path = f"/rest/api/latest/projects/{owner}/repos"
        return [str(item.get("slug")) for item in await self._list(path) if item.get("slug")]

    async def create(self, place: Place, hook: Hook, secret: bytes) -> str:
        """Create ``hook`` at ``place``; returns its id."""
        body = await self._call("POST", self._hooks_path(place), self._body(hook, secret))
        hook_id = self._hook(body).id
        if not hook_id:
            raise BitbucketError(0, "the answer to the creation names no hook id")
        return hook_id

    async def update(self, place: Place, hook_id: str, hook: Hook, secret: bytes) -> None:
        """Replace our hook ``hook_id`` with ``hook`` (secret included: it may have rotated)."""
        path = f"{self._hooks_path(place)}/{quote(hook_id, safe='')}"
        await self._call("PUT", path, self._body(hook, secret))

    async def delete(self, place: Place, hook_id: str) -> None:
        """Delete our hook ``hook_id``."""
        await self._call("DELETE", f"{self._hooks_path(place)}/{quote(hook_id, safe='')}")

    def _body(self, hook: Hook, secret: bytes) -> dict[str, Any]:
        common = {"url": hook.url, "active": hook.active, "events": sorted(hook.events)}
        if self.cloud:
            return {"description": hook.marker, **common, "secret": secret.decode()}
        return {"name": hook.marker, **common, "configuration": {"secret": secret.decode()}}

    def _hook(self, item: Mapping[str, Any]) -> Hook:
        events = item.get("events")
        if self.cloud:
            marker, hook_id = item.get("description"), item.get("uuid")
            secret_set = item.get("secret_set") is True
        else:
            marker, hook_id = item.get("name"), item.get("id")
            configuration = item.get("configuration")
            secret_set = isinstance(configuration, Mapping) and bool(configuration.get("secret"))
        return Hook(
            marker=str(marker or ""),
            url=str(item.get("url") or ""),
            events=frozenset(str(e) for e in events) if isinstance(events, list) else frozenset(),
            active=item.get("active") is True,
            secret_set=secret_set,
            id=str(hook_id if hook_id is not None else ""),
        )

    async def _list(self, path: str) -> list[Mapping[str, Any]]:
        """Every item of a paged listing, following ``next`` or ``nextPageStart``."""
        items: list[Mapping[str, Any]] = []
        url: str | None = f"{self.api_url}{path}"
        params: dict[str, Any] | None = {"pagelen": PAGE} if self.cloud else {"limit": PAGE}
        for _ in range(MAX_PAGES):
            if url is None:
                return items
            page = await self._call("GET", url, params=params)
            values = page.get("values")
            if not isinstance(values, list):
                raise BitbucketError(0, f"the answer at {path} is not a listing (no values)")
            items += [v for v in values if isinstance(v, Mapping)]
            if self.cloud:
                url, params = self._next(page.get("next")), None  # the link has the query
            elif page.get("isLastPage") is False and isinstance(page.get("nextPageStart"), int):
                params = {"limit": PAGE, "start": page["nextPageStart"]}
            else:
                url = None
        if url is not None:
            raise BitbucketError(0, f"more than {MAX_PAGES} pages at {path}")
        return items

    def _next(self, link: Any) -> str | None:
        """The next page, only on the API's own origin (the token goes nowhere else)."""
        if not isinstance(link, str) or not link:
            return None
        if urlsplit(link)[:2] != self._origin:
            raise BitbucketError(0, "the next page link points to another host; not followed")
        return link

    async def _call(
        self,
        method: str,
        url: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Mapping[str, Any]:
        """One request, retried after a 429 as ``Retry-After`` says; JSON object or error."""
        if url.startswith("/"):
            url = self.api_url + url
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self._http.request(method, url, json=body, params=params)
            except httpx.TimeoutException:
                message = f"no answer from {self.api_url} in {self.timeout:g} s"
                raise BitbucketError(0, message) from None
            except httpx.LocalProtocolError:  # its text quotes the request's headers
                raise BitbucketError(0, f"cannot send a request to {self.api_url}") from None
            except httpx.HTTPError as error:
                raise BitbucketError(0, f"cannot reach {self.api_url}: {error}") from None
            if response.status_code != 429:
                break
            wait = _retry_after(response.headers.get("Retry-After"))
            if attempt == ATTEMPTS or wait > MAX_WAIT:
                raise BitbucketError(429, f"rate limited (Retry-After {wait:g} s)")
            await asyncio.sleep(wait)
        status = response.status_code
        if not 200 <= status < 300:  # a redirect too: an SSO page or the wrong API URL
            raise BitbucketError(status, _error_text(response))
        if status == 204 or not response.content:
            return {}
        try:
            data = response.json()
        except ValueError:
            raise BitbucketError(status, "answer is not JSON") from None
        if not isinstance(data, Mapping):
            raise BitbucketError(status, "answer is not a JSON object")
        return data


def _retry_after(value: str | None) -> float:
    """Seconds from a ``Retry-After`` header (an HTTP date or absent counts as 1)."""
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


def _error_text(response: httpx.Response) -> str:
    """``<status> <reason>: <Bitbucket's message>``, at most 200 characters of it."""
    message = ""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, Mapping):
        error = data.get("error")
        errors = data.get("errors")
        if isinstance(error, Mapping):
            message = str(error.get("message") or "")
        elif isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
            message = str(errors[0].get("message") or "")
    head = f"{response.status_code} {response.reason_phrase}".strip()
    if 300 <= response.status_code < 400:
        return f"{head}: a redirect, not an answer (is the API URL right?)"
    return f"{head}: {message[:200]}" if message else head
