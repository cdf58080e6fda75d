"""Sign and POST one Bitbucket delivery the way Bitbucket does: what ``send`` runs."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

from kargo_bitbucket.config import DEFAULT_BODY_LIMIT
from kargo_bitbucket.core.payloads import is_cloud_url
from kargo_bitbucket.core.signature import sign


class UnreachableError(Exception):
    """The receiver could not be reached (refused, timed out, bad host)."""


@dataclass(frozen=True)
class Reply:
    """The receiver's answer: status code and body text."""

    status: int
    text: str

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return 200 <= self.status < 300


def headers_for(event: str, body: bytes, secret: bytes, *, cloud: bool) -> dict[str, str]:
    """The headers Bitbucket Cloud (or Data Center) sends with ``event``, signature included."""
    headers = {"Content-Type": "application/json", "X-Event-Key": event}
    if cloud:
        headers |= {
            "User-Agent": "Bitbucket-Webhooks/2.0",
            "X-Request-UUID": str(uuid.uuid4()),
            "X-Hook-UUID": str(uuid.uuid4()),
            "X-Attempt-Number": "1",
        }
    else:
        headers |= {
            "User-Agent": "Bitbucket-kargo-bitbucket-send",
            "X-Request-Id": str(uuid.uuid4()),
            "Content-Type": "application/json; charset=utf-8",
        }
    if event.lower() != "diagnostics:ping":
        headers["X-Hub-Signature"] = sign(body, secret)
    return headers


def is_cloud_event(event: str, url: str | None) -> bool:
    """Whether the delivery looks like Bitbucket Cloud's: by repository/PR URL or event key."""
    return is_cloud_url(url or "") or event.startswith(("repo:push", "pullrequest:"))


def send(url: str, event: str, body: bytes, secret: bytes, *, cloud: bool, timeout: float) -> Reply:
    """POST the signed delivery and return the answer, whatever its status."""
    headers = headers_for(event, body, secret, cloud=cloud)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read().decode(errors="replace"))
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read().decode(errors="replace"))
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        cut = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
        if len(body) > DEFAULT_BODY_LIMIT and isinstance(reason, cut):
            raise UnreachableError(
                f"{url} closed the connection while the {len(body)}-byte body was being sent: "
                f"a receiver answers 413 to a body over its --body-limit ({DEFAULT_BODY_LIMIT} "
                f"bytes by default) and closes ({reason})"
            ) from error
        raise UnreachableError(f"cannot reach {url}: {reason}") from error
