"""A fake Kubernetes API server that speaks the real wire protocol, for the test suite.

It serves, over HTTP/1.1 on 127.0.0.1 (``url``, plain; and ``https_url``, TLS with a
self-signed certificate, because kubectl never sends a bearer token over plain HTTP), the subset
of the kube-apiserver REST API that kargo-bitbucket's Kubernetes mode, lightkube and ``kubectl``
use: legacy discovery, CRUD on a fixed set of resources (Kargo's CRDs and a few built-in kinds),
JSON merge / JSON / (on built-in kinds) strategic merge patches, the ``status`` subresource, list
pagination, selectors, and watches with bookmarks and ``410 Expired``. Errors are ``Status``
objects, with ``Content-Type: application/json`` exactly, as a real server sends them.

Behaviour follows the Kubernetes API concepts documentation:

* ``resourceVersion`` is one global, increasing counter, sent as a string. A write that changes
  nothing (a no-op update or patch) does not bump it and produces no watch event.
* A watch with ``resourceVersion`` unset or ``"0"`` starts with synthetic ``ADDED`` events for
  every current object, then streams changes; with ``resourceVersion=N`` it streams every change
  after N, or, when N is older than the kept history, answers ``200`` with one ``ERROR`` event
  whose object is a ``410 Expired`` Status (set ``expired_as_http`` for an HTTP 410 instead).
* Writes to a resource with a ``status`` subresource ignore ``status``; writes to ``/status``
  change only ``status``. ``metadata.generation`` starts at 1 and grows when anything outside
  ``metadata`` and ``status`` changes.
* Custom resources reject ``application/strategic-merge-patch+json`` with ``415``, as real
  servers do (lightkube's default patch type!); built-in kinds accept it (treated as a merge patch
  that understands the ``$patch`` directive). Server-side apply is not implemented (``415``).
* Lists of built-in kinds omit ``kind``/``apiVersion`` on their items, as real servers do; lists
  of custom resources keep them.

Lenient where it helps tests: ``timeoutSeconds`` may be fractional, a 429's ``Retry-After``
may be too (real servers send integers).

Deliberate simplifications: no admission, no schema validation beyond names and types of the
envelope, no finalizers (a delete removes the object at once, except a Namespace, which is
``Terminating`` for 0.2 s and then goes with everything in it), no ``managedFields``, no Table
output (kubectl prints NAME/AGE columns). Namespaces need not exist unless
``strict_namespaces=True``. The Python API (``create``/``replace``/``bulk_create``) keeps a
given ``status`` so tests can seed, e.g., running Promotions in one step.
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
from dataclasses import dataclass, field
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

SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}
FIRST_RESOURCE_VERSION = 100
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

LOG = logging.getLogger(__name__)
_TLS_LOCK = threading.Lock()
_TLS_FILES: list[tuple[Path, Path] | None] = []


def tls_files() -> tuple[Path, Path] | None:
    """(certificate, key) of a self-signed certificate for 127.0.0.1, or None without openssl.

    Made once per process. kubectl (client-go) never sends credentials to a plain-HTTP
    server, so the fake also listens with TLS for clients that must authenticate.
    """
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


# --------------------------------------------------------------------------- resource model


@dataclass(frozen=True, eq=False)  # identity equality: a fast dict key
class ResourceType:
    """One served resource, as discovery describes it."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status: bool = False  # has a /status subresource
    builtin: bool = False  # compiled into kube-apiserver (strategic merge patch, typed lists)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``warehouses.kargo.akuity.io`` / ``secrets``: how messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind


KARGO = "kargo.akuity.io"
NAMESPACES = ResourceType(
    "", "v1", "Namespace", "namespaces", "namespace", False, ("ns",), True, True
)
SECRETS = ResourceType("", "v1", "Secret", "secrets", "secret", True, (), False, True)
RESOURCES: tuple[ResourceType, ...] = (
    NAMESPACES,
    SECRETS,
    ResourceType("", "v1", "Event", "events", "event", True, ("ev",), False, True),
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases", "lease", True, (), False, True),
    ResourceType("events.k8s.io", "v1", "Event", "events", "event", True, ("ev",), False, True),
    ResourceType(
        KARGO, "v1alpha1", "ProjectConfig", "projectconfigs", "projectconfig", True, (), True
    ),
    ResourceType(
        KARGO, "v1alpha1", "ClusterConfig", "clusterconfigs", "clusterconfig", False, (), True
    ),
    ResourceType(KARGO, "v1alpha1", "Warehouse", "warehouses", "warehouse", True, (), True),
    ResourceType(
        KARGO, "v1alpha1", "Promotion", "promotions", "promotion", True, ("promo", "promos"), True
    ),
    ResourceType(KARGO, "v1alpha1", "Stage", "stages", "stage", True, (), True),
)
BY_PATH: dict[tuple[str, str, str], ResourceType] = {
    (r.group, r.version, r.plural): r for r in RESOURCES
}
BY_KIND: dict[tuple[str, str], ResourceType] = {(r.api_version, r.kind): r for r in RESOURCES}


def resource_for(api_version: str, kind: str) -> ResourceType:
    """The served resource for ``apiVersion``/``kind`` (``kind`` may also be the plural)."""
    found = BY_KIND.get((api_version, kind))
    if found is None:
        found = next(
            (r for r in RESOURCES if r.api_version == api_version and r.plural == kind), None
        )
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
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
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


def _res_details(res: ResourceType, name: str) -> JSON:
    return {"name": name, "group": res.group, "kind": res.plural}


def not_found(res: ResourceType, name: str) -> ApiStatusError:
    return ApiStatusError(
        404, f'{res.group_resource} "{name}" not found', details=_res_details(res, name)
    )


def already_exists(res: ResourceType, name: str) -> ApiStatusError:
    return ApiStatusError(
        409,
        f'{res.group_resource} "{name}" already exists',
        reason="AlreadyExists",
        details=_res_details(res, name),
    )


def conflict(res: ResourceType, name: str, why: str | None = None) -> ApiStatusError:
    why = why or (
        "the object has been modified; please apply your changes to the latest "
        "version and try again"
    )
    return ApiStatusError(
        409,
        f'Operation cannot be fulfilled on {res.group_resource} "{name}": {why}',
        details=_res_details(res, name),
    )


def invalid(
    res: ResourceType, name: str, path: str, detail: str, cause: str = "FieldValueInvalid"
) -> ApiStatusError:
    return ApiStatusError(
        422,
        f'{res.qualified_kind} "{name}" is invalid: {path}: {detail}',
        details={
            "name": name,
            "group": res.group,
            "kind": res.kind,
            "causes": [{"reason": cause, "message": detail, "field": path}],
        },
    )


def bad_request(message: str) -> ApiStatusError:
    return ApiStatusError(400, message)


def expired(message: str) -> ApiStatusError:
    return ApiStatusError(410, message, reason="Expired")


def unsupported_media_type(message: str) -> ApiStatusError:
    return ApiStatusError(415, message)


# --------------------------------------------------------------------------- selectors

_LABEL_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_EXISTS_RE = re.compile(rf"^(!?)\s*({_LABEL_KEY})$")
_SET_RE = re.compile(rf"^({_LABEL_KEY})\s+(in|notin)\s+\(([^()]*)\)$")
_EQ_RE = re.compile(rf"^({_LABEL_KEY})\s*(==|!=|=|>|<)\s*([-A-Za-z0-9_.]*)$")


@dataclass(frozen=True)
class Requirement:
    """One requirement of a label selector (``key=v``, ``key in (a,b)``, ``!key``...)."""

    key: str
    op: str  # exists, !, =, !=, in, notin, >, <
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, Any]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        try:  # > and < compare integers
            number = int(str(value))
        except ValueError:
            return False
        bound = int(self.values[0])
        return present and (number > bound if self.op == ">" else number < bound)


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse a ``labelSelector`` (equality- and set-based); 400 on syntax errors."""
    requirements: list[Requirement] = []
    for part in _split_top_level(text or ""):
        if match := _EXISTS_RE.match(part):
            requirements.append(Requirement(match[2], "!" if match[1] else "exists"))
        elif match := _SET_RE.match(part):
            values = tuple(v.strip() for v in match[3].split(",") if v.strip())
            requirements.append(Requirement(match[1], match[2], values))
        elif match := _EQ_RE.match(part):
            op = "=" if match[2] == "==" else match[2]
            if op in (">", "<") and not re.fullmatch(r"-?\d+", match[3]):
                raise bad_request(
                    f"unable to parse requirement: {part!r}: for 'Gt', 'Lt' "
                    "operators, the value must be an integer"
                )
            requirements.append(Requirement(match[1], op, (match[3],)))
        else:
            raise bad_request(
                f"unable to parse requirement: found '{part}', expected: "
                "identifier, '=', '==', '!=', 'in', 'notin'"
            )
    return requirements


@dataclass(frozen=True)
class FieldRequirement:
    """One requirement of a ``fieldSelector``."""

    path: str
    equal: bool
    value: str

    def matches(self, obj: JSON) -> bool:
        current: Any = obj
        for part in self.path.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        actual = "" if current is None else str(current)
        return (actual == self.value) == self.equal


def parse_field_selector(text: str, res: ResourceType) -> list[FieldRequirement]:
    """Parse a ``fieldSelector``: ``metadata.name``/``metadata.namespace`` (and Secret ``type``)."""
    allowed = {"metadata.name", "metadata.namespace"}
    if res is SECRETS:
        allowed.add("type")
    requirements: list[FieldRequirement] = []
    for part in _split_top_level(text or ""):
        match = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)", part)
        if not match:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        if match[1] not in allowed:
            if res.builtin:
                raise bad_request(f"field label not supported: {match[1]}")
            raise bad_request(
                f'"{match[1]}" is not a known field selector: only '
                '"metadata.name", "metadata.namespace"'
            )
        requirements.append(FieldRequirement(match[1], match[2] != "!=", match[3]))
    return requirements


# --------------------------------------------------------------------------- patches


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


_DELETE = object()


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A merge patch that honours ``$patch: replace|delete`` and skips other ``$`` directives.

    Lists are replaced as a whole: enough for the built-in kinds served here (Secret,
    Namespace, Lease, Event), whose patches from kubectl are maps.
    """
    if not isinstance(patch, dict):
        return patch
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return {k: v for k, v in patch.items() if not k.startswith("$")}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        merged = None if value is None else strategic_merge_patch(result.get(key), value)
        if merged is None or merged is _DELETE:
            result.pop(key, None)
        else:
            result[key] = merged
    return result


class JsonPatchError(Exception):
    """An RFC 6902 patch that cannot be applied."""


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise JsonPatchError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _index(token: str, size: int, *, adding: bool = False) -> int:
    if not re.fullmatch(r"0|[1-9][0-9]*", token):
        raise JsonPatchError(f"invalid array index {token!r}")
    index = int(token)
    if index > size or (index == size and not adding):
        raise JsonPatchError(f"array index {index} out of bounds")
    return index


def _step(current: Any, token: str) -> Any:
    if isinstance(current, dict):
        if token not in current:
            raise JsonPatchError(f"missing key {token!r}")
        return current[token]
    if isinstance(current, list):
        return current[_index(token, len(current))]
    raise JsonPatchError(f"cannot descend into {type(current).__name__} with {token!r}")


def _get(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        doc = _step(doc, token)
    return doc


def _add(doc: Any, tokens: list[str], value: Any, *, replace: bool = False) -> Any:
    if not tokens:
        return value
    parent = _get(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise JsonPatchError(f"missing key {last!r}")
        parent[last] = value
    elif isinstance(parent, list):
        if replace:
            parent[_index(last, len(parent))] = value
        elif last == "-":
            parent.append(value)
        else:
            parent.insert(_index(last, len(parent), adding=True), value)
    else:
        raise JsonPatchError(f"cannot add to {type(parent).__name__}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise JsonPatchError("cannot remove the whole document")
    parent = _get(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise JsonPatchError(f"missing key {last!r}")
        del parent[last]
    elif isinstance(parent, list):
        parent.pop(_index(last, len(parent)))
    else:
        raise JsonPatchError(f"cannot remove from {type(parent).__name__}")
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch, applied to (and mutating) ``doc``."""
    if not isinstance(operations, list):
        raise JsonPatchError("a JSON patch must be a list of operations")
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise JsonPatchError(f"invalid operation {op!r}")
        name, path = op["op"], _pointer(op["path"])
        if name in ("add", "replace", "test") and "value" not in op:
            raise JsonPatchError(f"operation {name!r} needs a value")
        if name == "add":
            doc = _add(doc, path, clone(op["value"]))
        elif name == "remove":
            doc = _remove(doc, path)
        elif name == "replace":
            doc = _add(doc, path, clone(op["value"]), replace=True)
        elif name in ("move", "copy"):
            source = _pointer(op.get("from"))
            value = clone(_get(doc, source))
            if name == "move":
                doc = _remove(doc, source)
            doc = _add(doc, path, value)
        elif name == "test":
            if _get(doc, path) != op["value"]:
                raise JsonPatchError(f"test operation failed at {op['path']!r}")
        else:
            raise JsonPatchError(f"unknown operation {name!r}")
    return doc


# --------------------------------------------------------------------------- records and faults


@dataclass
class Request:
    """One request the fake received (recorded before auth and faults are applied)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    time: float
    verb: str = ""  # get, list, watch, create, update, patch, delete, deletecollection, discovery
    token: str | None = None  # the bearer token presented, if any
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
    old: JSON | None = None
    lines: dict[str, bytes] = field(default_factory=dict)

    def line(self, event_type: str) -> bytes:
        cached = self.lines.get(event_type)
        if cached is None:
            cached = orjson.dumps({"type": event_type, "object": self.obj}) + b"\n"
            self.lines[event_type] = cached
        return cached


class _Watcher:
    """One open watch stream; the store appends events to ``buffer`` under its lock."""

    def __init__(
        self,
        res: ResourceType,
        namespace: str | None,
        labels: list[Requirement],
        fields: list[FieldRequirement],
        loop: asyncio.AbstractEventLoop,
        path: str,
        query: dict[str, str],
    ) -> None:
        self.res = res
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.loop = loop
        self.path = path
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

    def matches(self, obj: JSON | None) -> bool:
        return obj is not None and selected(obj, self.labels, self.fields)

    def render(self, event: _Event) -> bytes:
        if self.namespace is not None and event.namespace != self.namespace:
            return b""
        if not self.labels and not self.fields:
            return event.line(event.type)
        now = self.matches(event.obj)
        if event.type != "MODIFIED":
            return event.line(event.type) if now else b""
        before = self.matches(event.old)
        if now:
            return event.line("MODIFIED" if before else "ADDED")
        return event.line("DELETED") if before else b""


def selected(obj: JSON, labels: list[Requirement], fields: list[FieldRequirement]) -> bool:
    """Whether ``obj`` matches a parsed label selector and field selector."""
    if labels:
        object_labels = (obj.get("metadata") or {}).get("labels") or {}
        if not all(r.matches(object_labels) for r in labels):
            return False
    return all(f.matches(obj) for f in fields)


_UID_BASE = str(uuid.uuid4())[:24]
_UID_COUNTER = itertools.count(secrets.randbelow(1 << 32))


def _uid() -> str:
    """A fresh UUID-shaped uid (random per process, then a counter: cheap for bulk seeding)."""
    return f"{_UID_BASE}{next(_UID_COUNTER) & 0xFFFFFFFFFFFF:012x}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _content(obj: JSON) -> JSON:
    """What ``metadata.generation`` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Store:
    """All objects, the event history and the open watches; every method is thread-safe."""

    def __init__(self, history: int = 1000, strict_namespaces: bool = False) -> None:
        self.lock = threading.RLock()
        self.rv = FIRST_RESOURCE_VERSION
        self.compacted_rv = FIRST_RESOURCE_VERSION
        self.strict_namespaces = strict_namespaces
        self.namespace_termination = 0.2  # seconds a deleted Namespace stays Terminating
        self.objects: dict[ResourceType, dict[tuple[str, str], JSON]] = {r: {} for r in RESOURCES}
        self.history: collections.deque[_Event] = collections.deque(maxlen=max(0, history))
        self.watchers: dict[ResourceType, set[_Watcher]] = {r: set() for r in RESOURCES}
        self.snapshots: collections.OrderedDict[str, list[JSON]] = collections.OrderedDict()
        self._order: dict[ResourceType, list[tuple[str, str]]] = {}  # sorted keys, cached

    # -- helpers

    def _commit(
        self,
        res: ResourceType,
        namespace: str,
        name: str,
        event_type: str,
        obj: JSON,
        old: JSON | None,
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
        event = _Event(self.rv, event_type, res, namespace, obj, old)
        if self.history.maxlen == 0:
            self.compacted_rv = self.rv
        else:
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
    def _normalize(res: ResourceType, body: Any, namespace: str, name: str | None) -> JSON:
        """Check the envelope of a written object and return a fresh copy of it."""
        if not isinstance(body, dict):
            raise bad_request(f"the object provided is unrecognized (must be of type {res.kind})")
        obj: JSON = clone(body)
        if obj.get("apiVersion") not in (None, "", res.api_version):
            raise bad_request(
                f"the API version in the data ({obj['apiVersion']}) does not "
                f"match the expected API version ({res.api_version})"
            )
        if obj.get("kind") not in (None, "", res.kind):
            raise bad_request(
                f"the kind in the data ({obj['kind']}) does not match the "
                f"expected kind ({res.kind})"
            )
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if res.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if name is not None and meta.get("name", "") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name', '')}) does not match "
                f"the name on the URL ({name})"
            )
        for key in ("labels", "annotations"):
            value = meta.get(key)
            if value is None:
                meta.pop(key, None)
            elif type(value) is not dict or not all(type(v) is str for v in value.values()):
                raise invalid(
                    res,
                    str(meta.get("name", "")),
                    f"metadata.{key}",
                    "Invalid value: must be a map of strings",
                    "FieldValueTypeInvalid",
                )
        if res is SECRETS:
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                data = obj.setdefault("data", {}) or {}
                for key, value in string_data.items():
                    data[key] = base64.b64encode(str(value).encode()).decode()
                obj["data"] = data
            obj.setdefault("type", "Opaque")
        return obj

    def _new_metadata(self, res: ResourceType, obj: JSON) -> None:
        meta = obj["metadata"]
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = str(meta["generateName"]) + secrets.token_hex(3)[:5]
            meta["name"] = name
        if not name:
            raise invalid(
                res,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
                "FieldValueRequired",
            )
        if (
            not isinstance(name, str)
            or len(name) > 253
            or not NAME_RE.match(name)
            or (res is NAMESPACES and (len(name) > 63 or not LABEL_NAME_RE.match(name)))
        ):
            raise invalid(
                res,
                str(name),
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                "of lower case alphanumeric characters, '-' or '.', and must start "
                "and end with an alphanumeric character",
            )
        meta["uid"] = _uid()
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        for key in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            meta.pop(key, None)
        if res is NAMESPACES:
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}

    def _merged_update(
        self, res: ResourceType, old: JSON, new: JSON, subresource: str | None, keep_status: bool
    ) -> JSON:
        """The object an update of ``old`` with ``new`` stores (status rules, generation)."""
        if subresource == "status":
            result: JSON = clone(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        meta, old_meta = new["metadata"], old["metadata"]
        for key in (
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        meta.pop("managedFields", None)
        if (res.status and not keep_status) or res is NAMESPACES:
            if "status" in old:
                new["status"] = clone(old["status"])
            else:
                new.pop("status", None)
        if _content(new) != _content(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return new

    def _store_update(
        self, res: ResourceType, namespace: str, name: str, new: JSON, old: JSON, dry_run: bool
    ) -> JSON:
        if new == old or dry_run:  # a no-op write: no new resourceVersion, no event
            return new
        self._commit(res, namespace, name, "MODIFIED", new, old)
        return new

    # -- verbs

    def create(
        self,
        res: ResourceType,
        namespace: str,
        body: Any,
        *,
        keep_status: bool = False,
        dry_run: bool = False,
    ) -> JSON:
        obj = self._normalize(res, body, namespace, None)
        if res.status and not keep_status:
            obj.pop("status", None)
        with self.lock:
            self._new_metadata(res, obj)
            name = obj["metadata"]["name"]
            if (namespace, name) in self.objects[res]:
                raise already_exists(res, name)
            owner = self.objects[NAMESPACES].get(("", namespace)) if res.namespaced else None
            if res.namespaced and self.strict_namespaces and owner is None:
                raise not_found(NAMESPACES, namespace)
            if owner is not None and owner["metadata"].get("deletionTimestamp"):
                raise ApiStatusError(
                    403,
                    f'{res.group_resource} "{name}" is forbidden: unable to create new content '
                    f"in namespace {namespace} because it is being terminated",
                    details={
                        **_res_details(res, name),
                        "causes": [
                            {
                                "reason": "NamespaceTerminating",
                                "message": f"namespace {namespace} is being terminated",
                                "field": "metadata.namespace",
                            }
                        ],
                    },
                )
            if not dry_run:
                self._commit(res, namespace, name, "ADDED", obj, None)
            return obj

    def update(
        self,
        res: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        keep_status: bool = False,
        dry_run: bool = False,
    ) -> JSON:
        new = self._normalize(res, body, namespace, name)
        with self.lock:
            old = self._existing(res, namespace, name)
            wanted = new["metadata"].get("resourceVersion")
            if wanted not in (None, "") and wanted != old["metadata"]["resourceVersion"]:
                raise conflict(res, name)
            merged = self._merged_update(res, old, new, subresource, keep_status)
            return self._store_update(res, namespace, name, merged, old, dry_run)

    def patch(
        self,
        res: ResourceType,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> JSON:
        media = content_type.split(";")[0].strip().lower()
        if media == APPLY_PATCH:
            raise unsupported_media_type(
                "the fake API server does not implement server-side apply: accepted media types "
                f"include: {JSON_PATCH}, {MERGE_PATCH}"
                + (f", {STRATEGIC_PATCH}" if res.builtin else "")
            )
        strategic_ok = res.builtin and media == STRATEGIC_PATCH
        if media not in (MERGE_PATCH, JSON_PATCH) and not strategic_ok:
            accepted = [JSON_PATCH, MERGE_PATCH, APPLY_PATCH]
            if res.builtin:
                accepted.insert(2, STRATEGIC_PATCH)
            raise unsupported_media_type(
                "the body of the request was in an unknown format - "
                f"accepted media types include: {', '.join(accepted)}"
            )
        with self.lock:
            old = self._existing(res, namespace, name)
            current = clone(old)
            try:
                if media == MERGE_PATCH:
                    patched = merge_patch(current, patch)
                elif media == JSON_PATCH:
                    patched = json_patch(current, patch)
                else:
                    patched = strategic_merge_patch(current, patch)
            except JsonPatchError as error:
                raise ApiStatusError(
                    422, f"the server rejected our request due to an error in our request: {error}"
                ) from error
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                raise invalid(
                    res,
                    name,
                    "metadata",
                    "Required value: the patched object must be an object with metadata",
                    "FieldValueRequired",
                )
            wanted = patched["metadata"].get("resourceVersion")
            if wanted not in (None, "") and wanted != old["metadata"]["resourceVersion"]:
                raise conflict(res, name)
            if patched["metadata"].get("uid", old["metadata"]["uid"]) != old["metadata"]["uid"]:
                raise conflict(
                    res,
                    name,
                    "Precondition failed: UID in precondition: "
                    f"{patched['metadata']['uid']}, UID in object meta: "
                    f"{old['metadata']['uid']}",
                )
            new = self._normalize(res, patched, namespace, name)
            merged = self._merged_update(res, old, new, subresource, False)
            return self._store_update(res, namespace, name, merged, old, dry_run)

    def delete(
        self,
        res: ResourceType,
        namespace: str,
        name: str,
        options: JSON | None = None,
        *,
        dry_run: bool = False,
    ) -> JSON:
        with self.lock:
            old = self._existing(res, namespace, name)
            pre = (options or {}).get("preconditions") or {}
            if pre.get("uid") not in (None, old["metadata"]["uid"]):
                raise conflict(
                    res,
                    name,
                    f"Precondition failed: UID in precondition: "
                    f"{pre['uid']}, UID in object meta: "
                    f"{old['metadata']['uid']}",
                )
            if pre.get("resourceVersion") not in (None, old["metadata"]["resourceVersion"]):
                raise conflict(
                    res,
                    name,
                    "Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, ResourceVersion in object "
                    f"meta: {old['metadata']['resourceVersion']}",
                )
            deleted = clone(old)
            if dry_run:
                return deleted
            if res is NAMESPACES:
                return self._terminate_namespace(name, old)
            self._commit(res, namespace, name, "DELETED", deleted, old)
            return deleted

    def _terminate_namespace(self, name: str, old: JSON) -> JSON:
        """Mark a Namespace Terminating; its contents and itself go a moment later."""
        if old["metadata"].get("deletionTimestamp"):
            return old
        terminating = clone(old)
        terminating["metadata"]["deletionTimestamp"] = _now()
        terminating["metadata"]["deletionGracePeriodSeconds"] = 0
        terminating["status"] = {"phase": "Terminating"}
        self._commit(NAMESPACES, "", name, "MODIFIED", terminating, old)
        timer = threading.Timer(self.namespace_termination, self._finalize_namespace, (name,))
        timer.daemon = True
        timer.start()
        return terminating

    def _finalize_namespace(self, name: str) -> None:
        with self.lock:
            for other in RESOURCES:
                if other.namespaced:
                    for key in sorted(k for k in self.objects[other] if k[0] == name):
                        current = self.objects[other][key]
                        self._commit(other, key[0], key[1], "DELETED", clone(current), current)
            namespace = self.objects[NAMESPACES].get(("", name))
            if namespace is not None and namespace["metadata"].get("deletionTimestamp"):
                self._commit(NAMESPACES, "", name, "DELETED", clone(namespace), namespace)

    def get(self, res: ResourceType, namespace: str, name: str) -> JSON:
        with self.lock:
            return self._existing(res, namespace, name)

    def select(
        self,
        res: ResourceType,
        namespace: str | None,
        labels: list[Requirement],
        fields: list[FieldRequirement],
    ) -> tuple[int, list[JSON]]:
        """The current resourceVersion and the matching objects, sorted by namespace/name."""
        with self.lock:
            rv = self.rv
            objects = self.objects[res]
            order = self._order.get(res)
            if order is None:
                order = self._order[res] = sorted(objects)
            items = [objects[key] for key in order if namespace is None or key[0] == namespace]
        if labels or fields:
            items = [obj for obj in items if selected(obj, labels, fields)]
        return rv, items

    def list_page(self, res: ResourceType, namespace: str | None, query: Mapping[str, str]) -> JSON:
        """A list response, honouring selectors, ``limit`` and ``continue``."""
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as error:
            raise bad_request(f"invalid limit: {error}") from error
        token = query.get("continue") or ""
        if token:
            try:
                state = orjson.loads(base64.urlsafe_b64decode(token.encode()))
                snapshot_id, offset, rv = state["sid"], int(state["off"]), int(state["rv"])
            except (ValueError, KeyError, TypeError) as error:
                raise bad_request(f"invalid continue token: {error}") from error
            with self.lock:
                items = self.snapshots.get(snapshot_id)
            if items is None:
                raise expired(
                    "The provided continue parameter is too old to display a "
                    "consistent list result. You can start a new list without the "
                    "continue parameter."
                )
        else:
            labels = parse_label_selector(query.get("labelSelector", ""))
            fields = parse_field_selector(query.get("fieldSelector", ""), res)
            rv, items = self.select(res, namespace, labels, fields)
            offset, snapshot_id = 0, secrets.token_hex(8)
        metadata: JSON = {"resourceVersion": str(rv)}
        end = offset + limit if limit > 0 else len(items)
        if end < len(items):
            with self.lock:
                self.snapshots[snapshot_id] = items
                self.snapshots.move_to_end(snapshot_id)
                while len(self.snapshots) > 32:
                    self.snapshots.popitem(last=False)
            state = {"v": "meta.k8s.io/v1", "rv": rv, "sid": snapshot_id, "off": end}
            metadata["continue"] = base64.urlsafe_b64encode(orjson.dumps(state)).decode()
            metadata["remainingItemCount"] = len(items) - end
        page = items[offset:end]
        if res.builtin:  # typed lists of built-in kinds carry no per-item kind/apiVersion
            page = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in page]
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": metadata,
            "items": page,
        }

    def open_watch(self, watcher: _Watcher) -> tuple[list[_Event], int]:
        """Register ``watcher``; return the events it starts with and the starting version."""
        query = watcher.query
        version = query.get("resourceVersion", "")
        synthetic = version in ("", "0") or query.get("sendInitialEvents") == "true"
        with self.lock:
            if synthetic:
                start = self.rv
                events = [
                    _Event(int(obj["metadata"]["resourceVersion"]), "ADDED", watcher.res, ns, obj)
                    for (ns, _), obj in sorted(self.objects[watcher.res].items())
                ]
            else:
                try:
                    start = int(version)
                except ValueError as error:
                    raise bad_request(f"invalid resource version {version!r}") from error
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
    res: ResourceType | None = None
    namespace: str | None = None  # None: cluster-scoped, or all namespaces
    name: str | None = None
    subresource: str | None = None
    document: Any = None  # discovery answer
    error: ApiStatusError | None = None


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

    # -- discovery

    def _discovery(self, path: str) -> Any:
        groups: dict[str, list[ResourceType]] = collections.defaultdict(list)
        for res in RESOURCES:
            groups[res.group].append(res)

        def group_doc(group: str) -> JSON:
            version = groups[group][0].version
            gv = {"groupVersion": f"{group}/{version}", "version": version}
            return {"name": group, "versions": [gv], "preferredVersion": gv}

        def resource_list(group: str, version: str) -> JSON | None:
            served = [r for r in groups.get(group, []) if r.version == version]
            if not served:
                return None
            items: list[JSON] = []
            for res in served:
                entry: JSON = {
                    "name": res.plural,
                    "singularName": res.singular,
                    "namespaced": res.namespaced,
                    "kind": res.kind,
                    "verbs": VERBS,
                }
                if res.short_names:
                    entry["shortNames"] = list(res.short_names)
                items.append(entry)
                if res.status:
                    items.append(
                        {
                            "name": f"{res.plural}/status",
                            "singularName": "",
                            "namespaced": res.namespaced,
                            "kind": res.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
            doc: JSON = {
                "kind": "APIResourceList",
                "groupVersion": served[0].api_version,
                "resources": items,
            }
            if group:
                doc["apiVersion"] = "v1"
            return doc

        parts = path.strip("/").split("/")
        if path == "/version":
            return SERVER_VERSION
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.fake.url.split("//", 1)[1]}
                ],
            }
        if path == "/apis":
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [group_doc(g) for g in groups if g],
            }
        if parts[0] == "api" and len(parts) == 2:
            return resource_list("", parts[1])
        if parts[0] == "apis" and len(parts) == 2:
            return (
                {"kind": "APIGroup", "apiVersion": "v1", **group_doc(parts[1])}
                if parts[1] in groups and parts[1]
                else None
            )
        if parts[0] == "apis" and len(parts) == 3:
            return resource_list(parts[1], parts[2])
        return None

    def _route(self, method: str, path: str, query: Mapping[str, str]) -> _Route:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if (
            path in ("/version", "/api", "/apis")
            or (parts[0] == "api" and len(parts) == 2)
            or (parts[0] == "apis" and len(parts) <= 3)
        ):
            document = self._discovery(path)
            if document is None:
                return _Route(
                    "discovery",
                    error=ApiStatusError(404, "the server could not find the requested resource"),
                )
            if method != "GET":
                return _Route("discovery", error=ApiStatusError(405, f"{method} is not allowed"))
            return _Route("discovery", document=document)
        if parts[0] == "api" and len(parts) > 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return _Route(
                "get", error=ApiStatusError(404, "the server could not find the requested resource")
            )
        watch = query.get("watch") in ("true", "1")
        if rest[0] == "watch":  # the deprecated /watch/ path prefix
            watch, rest = True, rest[1:]
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in BY_PATH:
            namespace, rest = rest[1], rest[2:]
        res = BY_PATH.get((group, version, rest[0])) if rest else None
        if (
            res is None
            or len(rest) > 3
            or (namespace is not None and not res.namespaced)
            or (len(rest) > 1 and res.namespaced and namespace is None)
        ):
            return _Route(
                "get", error=ApiStatusError(404, "the server could not find the requested resource")
            )
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if subresource is not None and not (subresource == "status" and res.status):
            return _Route(
                "get", error=ApiStatusError(404, "the server could not find the requested resource")
            )
        if name is None:
            verb = {
                "GET": "watch" if watch else "list",
                "POST": "create",
                "DELETE": "deletecollection",
            }.get(method, "")
            if verb == "create" and res.namespaced and namespace is None:
                verb = ""
        else:
            verb = {
                "GET": "watch" if watch else "get",
                "PUT": "update",
                "PATCH": "patch",
                "DELETE": "delete",
            }.get(method, "")
            if subresource and verb in ("delete", "watch"):
                verb = ""
        if not verb:
            return _Route(
                method.lower(),
                res,
                namespace,
                name,
                subresource,
                error=ApiStatusError(
                    405, "the server does not allow this method on the requested resource"
                ),
            )
        return _Route(verb, res, namespace, name, subresource)

    # -- plumbing

    @staticmethod
    async def _send_json(
        send: Send, code: int, body: Any, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        payload = orjson.dumps(body)
        headers = [
            (b"content-type", b"application/json"),
            (b"cache-control", b"no-cache, private"),
            (b"content-length", str(len(payload)).encode()),
            *(extra or []),
        ]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _send_error(self, send: Send, error: ApiStatusError, record: Request) -> None:
        extra = []
        if error.retry_after is not None:
            extra.append((b"retry-after", _retry_header(error.retry_after)))
        record.status = error.code
        await self._send_json(send, error.code, error.status(), extra)

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
        messages = {
            429: "Too many requests, please try again later.",
            500: "Internal error occurred: injected fault",
            503: "the server is currently unable to handle the request",
            504: "the server was unable to return a response in the time allotted",
        }
        raise ApiStatusError(
            code,
            messages.get(code, f"injected fault ({code})"),
            retry_after=chosen.retry_after
            if chosen.retry_after is not None
            else (1.0 if code == 429 else None),
            details={"causes": [{"message": "injected fault"}]} if code == 500 else None,
        )

    # -- the app

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
            method,
            path,
            query,
            headers.get("content-type"),
            time.time(),
            token=_bearer(headers),
            body=body,
        )
        if path in PUBLIC_PATHS:
            record.verb, record.status = "health", 200
            fake._record(record)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
                }
            )
            await send({"type": "http.response.body", "body": b"ok"})
            return
        route = self._route(method, path, query)
        record.verb = route.verb
        fake._record(record)
        try:
            if record.token != fake.token:
                raise ApiStatusError(401, "Unauthorized")
            if not await self._faults(record, receive):
                return
            if route.error is not None:
                raise route.error
            if route.verb == "discovery":
                record.status = 200
                await self._send_json(send, 200, route.document)
                return
            if route.verb == "watch":
                await self._watch(route, record, receive, send)
                return
            code, answer = self._handle(route, query, headers, body)
            record.status = code
            await self._send_json(send, code, answer)
        except ApiStatusError as error:
            await self._send_error(send, error, record)
        except (_Dropped, asyncio.CancelledError):
            raise
        except Exception as error:  # a bug in the fake: say so in a Status, keep serving
            LOG.exception("fake API server failed on %s %s", method, path)
            if record.status is None:
                failure = ApiStatusError(500, f"fake API server bug: {error!r}")
                await self._send_error(send, failure, record)
            else:
                raise

    def _handle(
        self, route: _Route, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]:
        store = self.fake.store
        res = route.res
        assert res is not None
        namespace = route.namespace or ""
        dry_run = query.get("dryRun") == "All"
        if route.verb == "list":
            return 200, store.list_page(res, route.namespace, query)
        if route.verb == "get":
            return 200, store.get(res, namespace, route.name or "")
        payload = self._parse_body(body, headers.get("content-type", ""), route.verb)
        if route.verb == "create":
            return 201, store.create(res, namespace, payload, dry_run=dry_run)
        if route.verb == "update":
            return 200, store.update(
                res,
                namespace,
                route.name or "",
                payload,
                subresource=route.subresource,
                dry_run=dry_run,
            )
        if route.verb == "patch":
            return 200, store.patch(
                res,
                namespace,
                route.name or "",
                payload,
                headers.get("content-type", ""),
                subresource=route.subresource,
                dry_run=dry_run,
            )
        if route.verb == "delete":
            options = payload if isinstance(payload, dict) else None
            deleted = store.delete(res, namespace, route.name or "", options, dry_run=dry_run)
            if res is NAMESPACES:  # a real server answers with the Terminating Namespace
                return 200, deleted
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    k: v
                    for k, v in {
                        "name": route.name,
                        "group": res.group,
                        "kind": res.plural,
                        "uid": deleted["metadata"]["uid"],
                    }.items()
                    if v
                },
            }
        # deletecollection
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), res)
        rv, selected = store.select(res, route.namespace, labels, fields)
        gone = []
        for obj in selected:
            meta = obj["metadata"]
            with contextlib.suppress(ApiStatusError):
                gone.append(
                    store.delete(res, meta.get("namespace", ""), meta["name"], dry_run=dry_run)
                )
        return 200, {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": str(rv)},
            "items": gone,
        }

    @staticmethod
    def _parse_body(body: bytes, content_type: str, verb: str) -> Any:
        if not body.strip():
            if verb in ("delete",):
                return None
            raise bad_request("the request body is empty")
        media = content_type.split(";")[0].strip().lower()
        try:
            if media in ("application/yaml", APPLY_PATCH):
                return yaml.safe_load(body)
            return orjson.loads(body)
        except (orjson.JSONDecodeError, yaml.YAMLError) as error:
            raise bad_request(f"the request body is not valid JSON: {error}") from error

    async def _watch(self, route: _Route, record: Request, receive: Receive, send: Send) -> None:
        res = route.res
        assert res is not None
        query = record.query
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), res)
        if route.name is not None:  # GET .../warehouses/x?watch=true: the old single-object form
            fields.append(FieldRequirement("metadata.name", True, route.name))
        loop = asyncio.get_running_loop()
        watcher = _Watcher(res, route.namespace, labels, fields, loop, record.path, query)
        fake = self.fake
        start_headers = {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-cache, private"),
            ],
        }
        try:
            initial, start = fake.store.open_watch(watcher)
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

        def bookmark(version: int, initial_end: bool = False) -> bytes:
            meta: JSON = {"resourceVersion": str(version)}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return (
                orjson.dumps(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": res.kind,
                            "apiVersion": res.api_version,
                            "metadata": meta,
                        },
                    }
                )
                + b"\n"
            )

        disconnect_task = asyncio.ensure_future(wait_disconnect())
        try:
            record.status = 200
            await send(start_headers)
            chunk = b"".join(watcher.render(event) for event in initial)
            if query.get("sendInitialEvents") == "true" and bookmarks:
                chunk += bookmark(start, initial_end=True)
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
        strict_namespaces: bool = False,
        expired_as_http: bool = False,
        tls: bool = True,
    ) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.expired_as_http = expired_as_http
        self.store = Store(history=history, strict_namespaces=strict_namespaces)
        self._tls = tls
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
        files = tls_files() if self._tls else None
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
        except BaseException as error:  # pragma: no cover - reported by start()
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

    # -- client configuration

    def kubeconfig(
        self,
        path: Path,
        *,
        context: str = "fake",
        namespace: str = "default",
        token_file: Path | None = None,
        tls: bool | None = None,
    ) -> Path:
        """Write a kubeconfig for this server that lightkube and kubectl accept.

        It points at the TLS listener (CA embedded) when there is one: kubectl does not send a
        bearer token to an ``http://`` server. ``tls=False`` forces ``url``. With
        ``token_file``, the current token is written there and referenced (``tokenFile``), so a
        test can rotate it; lightkube re-reads such a file only after a 401.
        """
        use_tls = bool(self.https_url) if tls is None else tls
        if use_tls and not self.https_url:
            raise RuntimeError("no TLS listener (openssl not found, or tls=False)")
        cluster: JSON = {"server": self.https_url if use_tls else self.url}
        if use_tls and self.ca_file is not None:
            ca = base64.b64encode(self.ca_file.read_bytes()).decode()
            cluster["certificate-authority-data"] = ca
        user: JSON = {"token": self.token}
        if token_file is not None:
            token_file.write_text(self.token)
            user = {"tokenFile": str(token_file.resolve())}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": user}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": namespace},
                }
            ],
            "current-context": context,
            "preferences": {},
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

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace an object, spec and status alike (conflict if a stale resourceVersion)."""
        res, namespace = self._target(obj)
        name = str((obj.get("metadata") or {}).get("name", ""))
        return clone(self.store.update(res, namespace, name, obj, keep_status=True))

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
        return clone(
            self.store.patch(
                res,
                namespace or "" if res.namespaced else "",
                name,
                clone(patch),
                MERGE_PATCH,
                subresource=subresource,
            )
        )

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        """Delete an object (404 ``ApiStatusError`` if absent)."""
        res = resource_for(api_version, kind)
        self.store.delete(res, namespace or "" if res.namespaced else "", name)

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
        res = resource_for(api_version, kind)
        _, items = self.store.select(res, namespace, [], [])
        return [clone(obj) for obj in items]

    def bulk_create(self, objs: Iterable[dict[str, Any]]) -> None:
        """Create many objects fast (status kept), e.g. 100,000 Warehouses; one ADDED each."""
        stamp = _now()
        collecting = gc.isenabled()
        gc.disable()  # the cyclic GC rescans the growing heap: seconds for 100,000 objects
        try:
            self._bulk_create(objs, stamp)
        finally:
            if collecting:
                gc.enable()

    def _bulk_create(self, objs: Iterable[dict[str, Any]], stamp: str) -> None:
        store = self.store
        with store.lock:
            for obj in objs:
                res, namespace = self._target(obj)
                new = store._normalize(res, obj, namespace, None)
                meta = new["metadata"]
                name = meta.get("name")
                if not name:
                    raise invalid(
                        res,
                        "",
                        "metadata.name",
                        "Required value: name is required",
                        "FieldValueRequired",
                    )
                if (namespace, name) in store.objects[res]:
                    raise already_exists(res, name)
                meta.update(uid=_uid(), creationTimestamp=stamp, generation=1)
                store._commit(res, namespace, name, "ADDED", new, None)

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self.store.lock:
            return str(self.store.rv)

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
        self._add_rule(
            _Rule(
                "fail",
                method,
                re.compile(path_regex),
                status=status,
                times=times,
                retry_after=retry_after,
            )
        )

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

    def drop_watches(self, *, graceful: bool = False) -> None:
        """Close every open watch stream: abruptly (no end of the chunked body) by default."""
        for watcher in self.store.open_watches():
            if graceful:
                watcher.closed = True
            else:
                watcher.dropped = True
            watcher.notify()

    def expire_history(self) -> None:
        """Forget the event history: a watch resuming from any version seen so far gets 410."""
        self.store.expire_history()

    @property
    def open_watches(self) -> list[tuple[str, dict[str, str]]]:
        """(path, query) of each open watch stream."""
        return [(w.path, dict(w.query)) for w in self.store.open_watches()]

    def wait_for_watches(
        self, count: int = 1, *, path_regex: str = "", timeout: float = 5.0
    ) -> None:
        """Block until at least ``count`` watches whose path matches are open."""
        pattern = re.compile(path_regex)
        deadline = time.monotonic() + timeout
        while sum(1 for path, _ in self.open_watches if pattern.search(path)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"fewer than {count} watches matching {path_regex!r} "
                    f"open after {timeout} s: {self.open_watches}"
                )
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

    @property
    def tokens_seen(self) -> list[str | None]:
        """Distinct bearer tokens presented, in order of first use."""
        return list(dict.fromkeys(r.token for r in self.requests if r.verb != "health"))

    def reset_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()
