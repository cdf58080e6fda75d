"""A fake Kubernetes API server for the faults a real one does not produce on demand.

Kubernetes mode is tested against a real kube-apiserver (``apiserver.py``). This fake stays
for what that server will not do when a test asks: answer 429/5xx (with ``Retry-After``),
hang or slow down chosen requests, drop watch streams, and forget its event history so that a
resuming watch gets ``410 Expired`` (as an ``ERROR`` event, or as HTTP 410 with
``expired_as_http``). It also serves the benchmark's 100,000 Warehouses without etcd.

It speaks just enough of the REST API for ``serve --kubernetes`` (lightkube): CRUD with JSON
merge patches on the kinds in :data:`RESOURCES`, the ``status`` subresource, ``resourceVersion``
preconditions, paged lists (``limit``/``continue``), and watches from a ``resourceVersion``
with bookmarks every ``bookmark_interval`` seconds and a ``metadata.name`` field selector.
It listens on 127.0.0.1 with TLS (a self-signed certificate) and a plain-HTTP twin, and
records every request. No validation, admission, RBAC, finalizers or discovery.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import collections
import contextlib
import gc
import itertools
import logging
import math
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import orjson
import uvicorn
import yaml

JSON = dict[str, Any]
_T = TypeVar("_T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FIRST_RESOURCE_VERSION = 100
MERGE_PATCH = "application/merge-patch+json"

LOG = logging.getLogger(__name__)
_TLS_LOCK = threading.Lock()
_TLS_FILES: list[tuple[Path, Path] | None] = []


def tls_files() -> tuple[Path, Path] | None:
    """(certificate, key) of a self-signed certificate for 127.0.0.1, or None without openssl.
    Made once per process."""
    with _TLS_LOCK:
        if not _TLS_FILES:
            _TLS_FILES.append(_make_certificate())
        return _TLS_FILES[0]


def _make_certificate() -> tuple[Path, Path] | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="fake-kube-tls-"))
    atexit.register(shutil.rmtree, folder, True)
    cert, key = folder / "tls.crt", folder / "tls.key"
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "3650",
        "-subj", "/CN=fake-kube-apiserver",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
        "-addext", "extendedKeyUsage=serverAuth",
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return cert, key


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True, eq=False)  # identity equality: a fast dict key
class ResourceType:
    """One served resource."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    status: bool = False  # has a /status subresource

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``warehouses.kargo.akuity.io`` / ``secrets``: how messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


KARGO = "kargo.akuity.io"
SECRETS = ResourceType("", "v1", "Secret", "secrets", True)
RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", False),
    SECRETS,
    ResourceType("", "v1", "Event", "events", True),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True),
    ResourceType(KARGO, "v1alpha1", "ProjectConfig", "projectconfigs", True, True),
    ResourceType(KARGO, "v1alpha1", "ClusterConfig", "clusterconfigs", False, True),
    ResourceType(KARGO, "v1alpha1", "Warehouse", "warehouses", True, True),
    ResourceType(KARGO, "v1alpha1", "Promotion", "promotions", True, True),
)
BY_PATH: dict[tuple[str, str, str], ResourceType] = {
    (r.group, r.version, r.plural): r for r in RESOURCES
}
BY_KIND: dict[tuple[str, str], ResourceType] = {(r.api_version, r.kind): r for r in RESOURCES}


def resource_for(api_version: str, kind: str) -> ResourceType:
    found = BY_KIND.get((api_version, kind))
    if found is None:
        raise KeyError(f"the fake API server does not serve {kind} in {api_version}")
    return found


# --------------------------------------------------------------------------- errors

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiStatusError(Exception):
    """A failure the server answers with a ``Status`` object (also raised by the Python API)."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: JSON | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code} {reason or REASONS.get(code, '')}: {message}")
        self.code = code
        self.message = message
        self.reason = reason if reason is not None else REASONS.get(code, "")
        self.details = {k: v for k, v in (details or {}).items() if v not in ("", None)}
        self.retry_after = retry_after

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": dict(self.details),
            "code": self.code,
        }
        if self.retry_after is not None:
            body["details"]["retryAfterSeconds"] = max(1, math.ceil(self.retry_after))
        if not body["details"]:
            del body["details"]
        return body


def _details(res: ResourceType, name: str) -> JSON:
    return {"name": name, "group": res.group, "kind": res.plural}


def not_found(res: ResourceType, name: str) -> ApiStatusError:
    return ApiStatusError(
        404, f'{res.group_resource} "{name}" not found', details=_details(res, name)
    )


def conflict(res: ResourceType, name: str) -> ApiStatusError:
    return ApiStatusError(
        409,
        f'Operation cannot be fulfilled on {res.group_resource} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details=_details(res, name),
    )


def bad_request(message: str) -> ApiStatusError:
    return ApiStatusError(400, message)


def expired(message: str) -> ApiStatusError:
    return ApiStatusError(410, message, reason="Expired")


def clone(value: _T) -> _T:
    """A deep copy of JSON data."""
    return cast(_T, orjson.loads(orjson.dumps(value)))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --------------------------------------------------------------------------- records and faults


@dataclass
class Request:
    """One request the fake received (recorded before auth and faults are applied)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    time: float
    verb: str = ""  # get, list, watch, create, update, patch, delete
    token: str | None = None
    body: bytes = b""
    status: int | None = None  # HTTP status answered (200 once a watch starts streaming)

    @property
    def is_watch(self) -> bool:
        return self.verb == "watch"

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class _Rule:
    action: str  # fail, hang, delay
    method: str
    pattern: re.Pattern[str]
    status: int = 0
    times: int | None = None
    retry_after: float | None = None
    seconds: float = 0.0

    def matches(self, request: Request) -> bool:
        method = self.method.upper()
        return (method in ("*", request.method) or method == request.verb.upper()) and bool(
            self.pattern.search(request.path)
        )


class _Dropped(Exception):
    """Raised inside the ASGI app to make uvicorn close the connection without a response end."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Dropped))


_QUIET = _QuietDrops()


# --------------------------------------------------------------------------- store


@dataclass(eq=False)
class _Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    res: ResourceType
    namespace: str
    obj: JSON
    line: bytes = b""

    def encoded(self) -> bytes:
        if not self.line:
            self.line = orjson.dumps({"type": self.type, "object": self.obj}) + b"\n"
        return self.line


class _Watcher:
    """One open watch stream; the store appends events to ``buffer`` under its lock."""

    def __init__(
        self,
        res: ResourceType,
        namespace: str | None,
        name: str | None,
        loop: asyncio.AbstractEventLoop,
        query: dict[str, str],
    ) -> None:
        self.res = res
        self.namespace = namespace
        self.name = name
        self.loop = loop
        self.query = query
        self.buffer: collections.deque[_Event] = collections.deque()
        self.wakeup = asyncio.Event()
        self.pending = False
        self.dropped = False
        self.closed = False
        self.disconnected = False

    def notify(self) -> None:
        if not self.pending:
            self.pending = True
            with contextlib.suppress(RuntimeError):  # loop already closed
                self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.pending = False
        self.wakeup.set()

    def render(self, event: _Event) -> bytes:
        if self.namespace is not None and event.namespace != self.namespace:
            return b""
        if self.name is not None and event.obj["metadata"].get("name") != self.name:
            return b""
        return event.encoded()


_UID_BASE = str(uuid.uuid4())[:24]
_UID_COUNTER = itertools.count(secrets.randbelow(1 << 32))


def _uid() -> str:
    """A fresh UUID-shaped uid (random per process, then a counter: cheap for bulk seeding)."""
    return f"{_UID_BASE}{next(_UID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """All objects, the event history and the open watches; every method is thread-safe."""

    def __init__(self, history: int = 1000) -> None:
        self.lock = threading.RLock()
        self.rv = FIRST_RESOURCE_VERSION
        self.compacted_rv = FIRST_RESOURCE_VERSION
        self.objects: dict[ResourceType, dict[tuple[str, str], JSON]] = {r: {} for r in RESOURCES}
        self.history: collections.deque[_Event] = collections.deque(maxlen=history)
        self.watchers: dict[ResourceType, set[_Watcher]] = {r: set() for r in RESOURCES}
        self.snapshots: collections.OrderedDict[str, list[JSON]] = collections.OrderedDict()
        self._order: dict[ResourceType, list[tuple[str, str]]] = {}  # sorted keys, cached

    def _commit(
        self, res: ResourceType, namespace: str, name: str, event_type: str, obj: JSON
    ) -> None:
        """Store ``obj`` (or delete), give it the next resourceVersion, record and fan out."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        if event_type == "DELETED":
            self.objects[res].pop((namespace, name), None)
            self._order.pop(res, None)
        else:
            if event_type == "ADDED":
                self._order.pop(res, None)
            self.objects[res][(namespace, name)] = obj
        event = _Event(self.rv, event_type, res, namespace, obj)
        if len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0].rv
        self.history.append(event)
        for watcher in self.watchers[res]:
            if watcher.namespace is None or watcher.namespace == namespace:
                watcher.buffer.append(event)
                watcher.notify()

    def _existing(self, res: ResourceType, namespace: str, name: str) -> JSON:
        obj = self.objects[res].get((namespace, name))
        if obj is None:
            raise not_found(res, name)
        return obj

    @staticmethod
    def _normalize(res: ResourceType, body: Any, namespace: str) -> JSON:
        """A fresh copy of a written object, with its apiVersion, kind and namespace."""
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request(f"the object provided is unrecognized (must be of type {res.kind})")
        obj: JSON = clone(body)
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            meta["namespace"] = namespace
        if res is SECRETS and obj.get("stringData"):
            data = obj.setdefault("data", {})
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        return obj

    def create(
        self, res: ResourceType, namespace: str, body: Any, *, keep_status: bool = False
    ) -> JSON:
        obj = self._normalize(res, body, namespace)
        if res.status and not keep_status:
            obj.pop("status", None)
        with self.lock:
            name = obj["metadata"].get("name") or ""
            if not name:
                raise ApiStatusError(422, "metadata.name: Required value")
            if (namespace, name) in self.objects[res]:
                raise ApiStatusError(
                    409,
                    f'{res.group_resource} "{name}" already exists',
                    reason="AlreadyExists",
                    details=_details(res, name),
                )
            obj["metadata"].update(uid=_uid(), creationTimestamp=_now(), generation=1)
            self._commit(res, namespace, name, "ADDED", obj)
            return obj

    def _write(
        self, res: ResourceType, namespace: str, name: str, new: JSON, subresource: str | None
    ) -> JSON:
        """Store ``new`` over the current object: a stale resourceVersion is a 409; the
        status subresource changes only status, the object itself everything else."""
        old = self._existing(res, namespace, name)
        wanted = new["metadata"].get("resourceVersion")
        if wanted not in (None, "") and wanted != old["metadata"]["resourceVersion"]:
            raise conflict(res, name)
        if subresource == "status":
            result: JSON = clone(old)
            result["status"] = new.get("status")
        else:
            result = new
            for key in ("uid", "creationTimestamp", "generation"):
                result["metadata"][key] = old["metadata"].get(key)
            if res.status:
                result["status"] = clone(old.get("status"))
            outside = ("metadata", "status")
            if {k: v for k, v in new.items() if k not in outside} != {
                k: v for k, v in old.items() if k not in outside
            }:
                result["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if result.get("status") is None:
            result.pop("status", None)
        if result != old:  # a no-op write: no new resourceVersion, no event
            self._commit(res, namespace, name, "MODIFIED", result)
        return result

    def update(
        self, res: ResourceType, namespace: str, name: str, body: Any, subresource: str | None
    ) -> JSON:
        new = self._normalize(res, body, namespace)
        with self.lock:
            return self._write(res, namespace, name, new, subresource)

    def patch(
        self,
        res: ResourceType,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str,
        subresource: str | None = None,
    ) -> JSON:
        if content_type.split(";")[0].strip().lower() != MERGE_PATCH:
            raise ApiStatusError(415, f"the fake API server accepts only {MERGE_PATCH}")
        with self.lock:
            patched = merge_patch(clone(self._existing(res, namespace, name)), patch)
            new = self._normalize(res, patched, namespace)
            return self._write(res, namespace, name, new, subresource)

    def delete(self, res: ResourceType, namespace: str, name: str) -> JSON:
        with self.lock:
            deleted = clone(self._existing(res, namespace, name))
            self._commit(res, namespace, name, "DELETED", deleted)
            return deleted

    def get(self, res: ResourceType, namespace: str, name: str) -> JSON:
        with self.lock:
            return self._existing(res, namespace, name)

    def select(self, res: ResourceType, namespace: str | None) -> tuple[int, list[JSON]]:
        """The current resourceVersion and the objects, sorted by namespace/name."""
        with self.lock:
            objects = self.objects[res]
            order = self._order.get(res)
            if order is None:
                order = self._order[res] = sorted(objects)
            items = [objects[key] for key in order if namespace is None or key[0] == namespace]
            return self.rv, items

    def list_page(self, res: ResourceType, namespace: str | None, query: Mapping[str, str]) -> JSON:
        """A list response, honouring ``limit`` and ``continue``."""
        limit = int(query.get("limit") or 0)
        token = query.get("continue") or ""
        if token:
            state = orjson.loads(base64.urlsafe_b64decode(token.encode()))
            snapshot_id, offset, rv = state["sid"], int(state["off"]), int(state["rv"])
            with self.lock:
                items = self.snapshots.get(snapshot_id)
            if items is None:
                raise expired("The provided continue parameter is too old")
        else:
            rv, items = self.select(res, namespace)
            offset, snapshot_id = 0, secrets.token_hex(8)
        metadata: JSON = {"resourceVersion": str(rv)}
        end = offset + limit if limit > 0 else len(items)
        if end < len(items):
            with self.lock:
                self.snapshots[snapshot_id] = items
                self.snapshots.move_to_end(snapshot_id)
                while len(self.snapshots) > 32:
                    self.snapshots.popitem(last=False)
            state = {"rv": rv, "sid": snapshot_id, "off": end}
            metadata["continue"] = base64.urlsafe_b64encode(orjson.dumps(state)).decode()
            metadata["remainingItemCount"] = len(items) - end
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": metadata,
            "items": items[offset:end],
        }

    def open_watch(self, watcher: _Watcher) -> tuple[list[_Event], int]:
        """Register ``watcher``; return the events it starts with and the starting version:
        every object as ADDED without a resourceVersion, else the history after it (410 when
        that is older than the history kept)."""
        version = watcher.query.get("resourceVersion", "")
        with self.lock:
            if version in ("", "0"):
                start = self.rv
                events = [
                    _Event(int(obj["metadata"]["resourceVersion"]), "ADDED", watcher.res, ns, obj)
                    for (ns, _), obj in sorted(self.objects[watcher.res].items())
                ]
            else:
                start = int(version)
                if start < self.compacted_rv:
                    raise expired(f"too old resource version: {start} ({self.compacted_rv})")
                events = [e for e in self.history if e.rv > start and e.res is watcher.res]
            self.watchers[watcher.res].add(watcher)
            return events, start

    def close_watch(self, watcher: _Watcher) -> None:
        with self.lock:
            self.watchers[watcher.res].discard(watcher)

    def open_watches(self) -> list[_Watcher]:
        with self.lock:
            return [w for group in self.watchers.values() for w in group]

    def expire_history(self) -> None:
        with self.lock:
            self.rv += 1
            self.compacted_rv = self.rv
            self.history.clear()
            self.snapshots.clear()


# --------------------------------------------------------------------------- HTTP (ASGI)


@dataclass
class _Route:
    verb: str
    res: ResourceType
    namespace: str | None = None  # None: cluster-scoped, or all namespaces
    name: str | None = None
    subresource: str | None = None


def _unrouted() -> ApiStatusError:
    return ApiStatusError(404, "the server could not find the requested resource")


def route(method: str, path: str, query: Mapping[str, str]) -> _Route:
    """The verb and object a request addresses; 404/405 as a real server answers them."""
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    if parts[0] == "api" and len(parts) > 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise _unrouted()
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in BY_PATH:
        namespace, rest = rest[1], rest[2:]
    res = BY_PATH.get((group, version, rest[0]))
    if res is None or len(rest) > 3 or (len(rest) > 1 and res.namespaced and namespace is None):
        raise _unrouted()
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if subresource is not None and not (subresource == "status" and res.status):
        raise _unrouted()
    watch = query.get("watch") in ("true", "1")
    if name is None:
        verb = {"GET": "watch" if watch else "list", "POST": "create"}.get(method, "")
    else:
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "")
    if not verb:
        raise ApiStatusError(405, "the server does not allow this method on the requested resource")
    return _Route(verb, res, namespace, name, subresource)


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _retry_header(seconds: float) -> bytes:
    return (str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}").encode()


class _Server(uvicorn.Server):
    """uvicorn's server, noticing ``should_exit`` within 10 ms instead of 100 ms."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.01)


class _App:
    """The ASGI application; state lives in the owning :class:`FakeKubernetes`."""

    def __init__(self, fake: FakeKubernetes) -> None:
        self.fake = fake

    @staticmethod
    async def _send_json(
        send: Send, code: int, body: Any, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        payload = orjson.dumps(body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _hang(self, receive: Receive) -> None:
        """Never answer: wait for the client to go away (or the server to stop)."""
        stopping = self.fake._stopping_event
        assert stopping is not None
        stop_task = asyncio.ensure_future(stopping.wait())
        try:
            while True:
                receive_task = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait(
                    {receive_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
                )
                if stop_task in done:
                    receive_task.cancel()
                    raise _Dropped
                if receive_task.result()["type"] == "http.disconnect":
                    return
        finally:
            stop_task.cancel()

    async def _faults(self, record: Request, receive: Receive) -> bool:
        """Apply delays, failures and hangs; False when the request was hung up."""
        delay = 0.0
        chosen: _Rule | None = None
        with self.fake._faults_lock:
            for rule in list(self.fake._rules):
                if not rule.matches(record):
                    continue
                if rule.action == "delay":
                    delay += rule.seconds
                elif chosen is None:
                    chosen = rule
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self.fake._rules.remove(rule)
        if delay > 0:
            await asyncio.sleep(delay)
        if chosen is None:
            return True
        if chosen.action == "hang":
            await self._hang(receive)
            return False
        code = chosen.status
        raise ApiStatusError(
            code,
            f"injected fault ({code})",
            retry_after=chosen.retry_after
            if chosen.retry_after is not None
            else (1.0 if code == 429 else None),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = str(scope["method"]).upper()
        path = str(scope["path"]) or "/"
        query = dict(
            urllib.parse.parse_qsl(
                scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
            )
        )
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        fake = self.fake
        record = Request(
            method, path, query, headers.get("content-type"), time.time(), token=_bearer(headers)
        )
        record.body = body
        fake._record(record)
        try:
            target = route(method, path, query)
            record.verb = target.verb
            if record.token != fake.token:
                raise ApiStatusError(401, "Unauthorized")
            if not await self._faults(record, receive):
                return
            if target.verb == "watch":
                await self._watch(target, record, receive, send)
                return
            code, answer = self._handle(target, query, headers, body)
            record.status = code
            await self._send_json(send, code, answer)
        except ApiStatusError as error:
            extra = []
            if error.retry_after is not None:
                extra.append((b"retry-after", _retry_header(error.retry_after)))
            record.status = error.code
            await self._send_json(send, error.code, error.status(), extra)

    def _handle(
        self, target: _Route, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]:
        store = self.fake.store
        res, namespace, name = target.res, target.namespace or "", target.name or ""
        if target.verb == "list":
            return 200, store.list_page(res, target.namespace, query)
        if target.verb == "get":
            return 200, store.get(res, namespace, name)
        if target.verb == "delete":
            store.delete(res, namespace, name)
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise bad_request(f"the request body is not valid JSON: {error}") from error
        if target.verb == "create":
            return 201, store.create(res, namespace, payload)
        if target.verb == "update":
            return 200, store.update(res, namespace, name, payload, target.subresource)
        content_type = headers.get("content-type", "")
        return 200, store.patch(res, namespace, name, payload, content_type, target.subresource)

    async def _watch(self, target: _Route, record: Request, receive: Receive, send: Send) -> None:
        res = target.res
        query = record.query
        selector = query.get("fieldSelector", "")
        name = selector.removeprefix("metadata.name=") if selector else None
        loop = asyncio.get_running_loop()
        watcher = _Watcher(res, target.namespace, name, loop, query)
        fake = self.fake
        start_headers = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
        try:
            initial, _ = fake.store.open_watch(watcher)
        except ApiStatusError as error:
            if error.code != 410 or fake.expired_as_http:
                raise
            record.status = 200
            await send(start_headers)
            line = orjson.dumps({"type": "ERROR", "object": error.status()}) + b"\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return

        async def wait_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            watcher.disconnected = True
            watcher.wakeup.set()

        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        deadline = loop.time() + timeout if timeout else math.inf

        def bookmark(version: int) -> bytes:
            meta = {"resourceVersion": str(version)}
            obj = {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}
            return orjson.dumps({"type": "BOOKMARK", "object": obj}) + b"\n"

        disconnect_task = asyncio.ensure_future(wait_disconnect())
        try:
            record.status = 200
            await send(start_headers)
            chunk = b"".join(watcher.render(event) for event in initial)
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            next_bookmark = loop.time() + fake.bookmark_interval
            while True:
                if watcher.dropped:
                    raise _Dropped
                if watcher.disconnected:
                    return
                if watcher.closed:
                    break
                with fake.store.lock:
                    events = list(watcher.buffer)
                    watcher.buffer.clear()
                    current = fake.store.rv
                chunk = b"".join(watcher.render(event) for event in events)
                now = loop.time()
                if bookmarks and now >= next_bookmark:
                    chunk += bookmark(current)
                    next_bookmark = now + fake.bookmark_interval
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if now >= deadline:
                    break
                wait = min(deadline, next_bookmark if bookmarks else math.inf) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        watcher.wakeup.wait(), None if math.isinf(wait) else max(wait, 0.001)
                    )
                watcher.wakeup.clear()
            await send({"type": "http.response.body", "body": b""})
        finally:
            fake.store.close_watch(watcher)
            disconnect_task.cancel()


# --------------------------------------------------------------------------- the facade


class FakeKubernetes:
    """A fake kube-apiserver on ``127.0.0.1``, run by uvicorn in a background thread.

    Use as a context manager or call :meth:`start` / :meth:`stop`. The Python methods change
    state as another API client would (producing the same watch events) and are thread-safe.
    """

    def __init__(
        self,
        *,
        token: str = "test-token",
        bookmark_interval: float = 1.0,
        history: int = 1000,
        expired_as_http: bool = False,
    ) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.expired_as_http = expired_as_http
        self.store = Store(history=history)
        self._requests: list[Request] = []
        self._requests_lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._faults_lock = threading.Lock()
        self._servers: list[tuple[uvicorn.Server, socket.socket]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping_event: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.url = ""  # http://127.0.0.1:PORT
        self.https_url = ""  # https://127.0.0.1:PORT2 (same API), "" without openssl
        self.ca_file: Path | None = None  # the self-signed certificate of https_url

    # -- lifecycle

    def _listener(self, ssl_files: tuple[Path, Path] | None = None) -> str:
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP; without it every keep-alive response waits ~40 ms (Nagle + delayed ACK)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            _App(self),
            lifespan="off",
            log_config=None,
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
            backlog=4096,
            ssl_certfile=ssl_files[0] if ssl_files else None,
            ssl_keyfile=ssl_files[1] if ssl_files else None,
        )
        self._servers.append((_Server(config), sock))
        scheme = "https" if ssl_files else "http"
        return f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"

    def start(self) -> FakeKubernetes:
        """Bind free ports and serve; returns once the server accepts connections."""
        if self._thread is not None:
            return self
        uvicorn_error = logging.getLogger("uvicorn.error")
        if _QUIET not in uvicorn_error.filters:
            uvicorn_error.addFilter(_QUIET)
        self._servers = []
        self.url = self._listener()
        files = tls_files()
        if files is not None:
            self.https_url = self._listener(files)
            self.ca_file = files[0]
        self._thread = threading.Thread(target=self._run, name="fake-kube-apiserver", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not all(server.started for server, _ in self._servers):
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"fake API server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("fake API server did not start within 15 s")
            time.sleep(0.005)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def serve() -> None:
            self._stopping_event = asyncio.Event()
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in self._servers))

        try:
            loop.run_until_complete(serve())
        except BaseException as error:  # reported by start()
            self._error = error
        finally:
            # Cancel what uvicorn left behind (streams cut at shutdown), so nothing is
            # destroyed while pending when the interpreter exits.
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.close()

    def stop(self) -> None:
        """End open watches and hung requests, then stop the server thread."""
        if self._thread is None:
            return
        for watcher in self.store.open_watches():
            watcher.closed = True
            watcher.notify()
        loop, event = self._loop, self._stopping_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        for server, _ in self._servers:
            server.should_exit = True
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig for this server's TLS listener (CA embedded, bearer token)."""
        if not self.https_url or self.ca_file is None:
            raise RuntimeError("no TLS listener (openssl not found)")
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "fake",
                    "cluster": {"server": self.https_url, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- state, as another client would change it

    @staticmethod
    def _target(obj: Mapping[str, Any]) -> tuple[ResourceType, str]:
        res = resource_for(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        meta = obj.get("metadata") or {}
        namespace = (meta.get("namespace") or "default") if res.namespaced else ""
        return res, namespace

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` (its ``status``, if any, is kept); returns the stored object."""
        res, namespace = self._target(obj)
        return clone(self.store.create(res, namespace, obj, keep_status=True))

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch; ``subresource="status"`` changes only status (as ``/status``)."""
        res = resource_for(api_version, kind)
        scope = (namespace or "") if res.namespaced else ""
        return clone(self.store.patch(res, scope, name, clone(patch), MERGE_PATCH, subresource))

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        """Delete an object (404 ``ApiStatusError`` if absent)."""
        res = resource_for(api_version, kind)
        self.store.delete(res, (namespace or "") if res.namespaced else "", name)

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """A copy of the stored object, or None."""
        res = resource_for(api_version, kind)
        with self.store.lock:
            found = self.store.objects[res].get(((namespace or "") if res.namespaced else "", name))
            return clone(found) if found is not None else None

    def objects(
        self, api_version: str, kind: str, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Copies of the stored objects of a kind (in ``namespace``, or all), sorted."""
        _, items = self.store.select(resource_for(api_version, kind), namespace)
        return [clone(obj) for obj in items]

    def bulk_create(self, objs: Iterable[dict[str, Any]]) -> None:
        """Create many objects fast (status kept), e.g. 100,000 Warehouses; one ADDED each."""
        stamp = _now()
        collecting = gc.isenabled()
        gc.disable()  # the cyclic GC rescans the growing heap: seconds for 100,000 objects
        try:
            with self.store.lock:
                for obj in objs:
                    res, namespace = self._target(obj)
                    new = self.store._normalize(res, obj, namespace)
                    meta = new["metadata"]
                    meta.update(uid=_uid(), creationTimestamp=stamp, generation=1)
                    self.store._commit(res, namespace, meta["name"], "ADDED", new)
        finally:
            if collecting:
                gc.enable()

    # -- faults

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with a ``status`` Status error.

        ``method`` is an HTTP method, a Kubernetes verb (``list``, ``watch``, ``patch``...)
        or ``*``; ``path_regex`` is searched in the URL path. A 429 carries ``Retry-After``
        (default 1 s; a fractional value is sent as is, which real servers never do).
        """
        rule = _Rule(
            "fail", method, re.compile(path_regex), status, times=times, retry_after=retry_after
        )
        self._add_rule(rule)

    def delay(self, method: str, path_regex: str, seconds: float) -> None:
        """Delay every matching request by ``seconds`` (until :meth:`clear_faults`)."""
        self._add_rule(_Rule("delay", method, re.compile(path_regex), seconds=seconds))

    def hang(self, method: str, path_regex: str, *, times: int = 1) -> None:
        """Never answer the next ``times`` matching requests (until the client gives up)."""
        self._add_rule(_Rule("hang", method, re.compile(path_regex), times=times))

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._rules.clear()

    def _add_rule(self, rule: _Rule) -> None:
        with self._faults_lock:
            self._rules.append(rule)

    def drop_watches(self) -> None:
        """Close every open watch stream abruptly (no end of the chunked body)."""
        for watcher in self.store.open_watches():
            watcher.dropped = True
            watcher.notify()

    def expire_history(self) -> None:
        """Forget the event history: a watch resuming from any version seen so far gets 410."""
        self.store.expire_history()

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self.store.lock:
            return str(self.store.rv)

    def wait_for_watches(self, count: int = 1, *, timeout: float = 5.0) -> None:
        """Block until at least ``count`` watch streams are open."""
        deadline = time.monotonic() + timeout
        while len(self.store.open_watches()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} watches open after {timeout} s")
            time.sleep(0.01)

    # -- recorded requests

    def _record(self, request: Request) -> None:
        with self._requests_lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[Request]:
        """A snapshot of every request received since start or :meth:`reset_requests`."""
        with self._requests_lock:
            return list(self._requests)

    def filter_requests(
        self, method: str | None = None, path: str | None = None, verb: str | None = None
    ) -> list[Request]:
        """Recorded requests by HTTP method, path regex (searched) and/or Kubernetes verb."""
        pattern = re.compile(path) if path is not None else None
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (verb is None or r.verb == verb)
            and (pattern is None or pattern.search(r.path))
        ]

    def reset_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()
