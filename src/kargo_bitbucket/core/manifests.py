"""Parse YAML manifests and check them the way the API server checks Kargo's CRD schemas."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import yaml

__all__ = [
    "ACCEPTED_KINDS",
    "API_VERSIONS",
    "KARGO_API_VERSION",
    "KINDS",
    "NAMESPACED",
    "ManifestError",
    "Resource",
    "UnknownFieldError",
    "UnknownKindError",
    "canonical_kind",
    "name_problem",
    "namespace_problem",
    "parse_manifests",
    "validate_object",
]

KARGO_API_VERSION = "kargo.akuity.io/v1alpha1"
_KARGO_GROUP = "kargo.akuity.io"

# kind -> (apiVersion, namespaced, singular, plural, short names)
_KIND_TABLE: dict[str, tuple[str, bool, str, str, tuple[str, ...]]] = {
    "Secret": ("v1", True, "secret", "secrets", ()),
    "ProjectConfig": (KARGO_API_VERSION, True, "projectconfig", "projectconfigs", ()),
    "ClusterConfig": (KARGO_API_VERSION, False, "clusterconfig", "clusterconfigs", ()),
    "Warehouse": (KARGO_API_VERSION, True, "warehouse", "warehouses", ("wh",)),
    "Promotion": (KARGO_API_VERSION, True, "promotion", "promotions", ("promo", "promos")),
}

API_VERSIONS: dict[str, str] = {kind: row[0] for kind, row in _KIND_TABLE.items()}
NAMESPACED: dict[str, bool] = {kind: row[1] for kind, row in _KIND_TABLE.items()}


def _spellings() -> dict[str, str]:
    """Every accepted spelling: the kind, lower-case, singular, plural, short, ``plural.group``."""
    out: dict[str, str] = {}
    for kind, (api_version, _, singular, plural, shorts) in _KIND_TABLE.items():
        for name in (kind, kind.lower(), singular, plural, *shorts):
            out[name] = kind
        if api_version != "v1":
            out[f"{singular}.{_KARGO_GROUP}"] = kind
            out[f"{plural}.{_KARGO_GROUP}"] = kind
    return out


KINDS: dict[str, str] = _spellings()

# Decisions (the Kargo CRD facts they rest on in brackets):
# - Known fields are type-checked strictly (types, required, enums, name and URL patterns).
#   Unknown fields are kept verbatim and noted in Resource.warnings (kubectl --validate=warn),
#   neither pruned nor rejected [the newest Warehouse CRD keeps spec.subscriptions as raw JSON
#   and Kargo keeps adding fields and receiver types; a newer manifest must survive get/apply].
#   status is open: server-written fields are kept without notes.
# - null in an optional field means absent and is dropped [the API server prunes nulls of
#   non-nullable fields]; null where a value is required is an error.
# - No schema defaults are written [strictSemvers defaults to true in the typed v1.x CRD but is
#   an optional *bool in the newest types; SPEC 6.3 reads it absent as false]. The only edits:
#   Secret stringData folded into data, the namespace filled from default_namespace, a
#   ClusterConfig namespace dropped (with a note), Secret data re-encoded as canonical base64.
_MAX_NODES = 500_000  # values per document after expanding YAML aliases
_MAX_DEPTH = 200  # nesting levels
_DEPTH_SHOWN = 3  # path segments a "nested too deep" error names
# libyaml's composer recurses in C and overflowed the stack between 20,000 and 40,000
# levels (measured); a text with fewer flow openers cannot nest that deep.
_FLOW_OPENERS_CHECKED = 10_000
_MAX_SECRET_BYTES = 1024 * 1024
_MAX_ANNOTATION_BYTES = 256 * 1024

_Path = tuple[str | int, ...]
_Tokens = dict[_Path, tuple[str | None, int]]


class ManifestError(ValueError):
    """A manifest that cannot be applied; ``str(e)`` is one line saying where and why."""

    def __init__(self, message: str, *, path: str = "", line: int | None = None) -> None:
        self.path = path
        self.line = line
        super().__init__(_one_line(message))


class UnknownFieldError(ManifestError):
    """An unknown field where strict validation refuses it (inside ``spec.subscriptions``)."""


class UnknownKindError(ValueError):
    """A kind name that is none of the accepted spellings."""


@dataclass(frozen=True)
class Resource:
    """One checked object; ``warnings`` are one-line notes (unknown fields kept, ...)."""

    kind: str
    namespace: str
    name: str
    body: dict[str, Any]
    warnings: tuple[str, ...] = field(default=(), compare=False)


ACCEPTED_KINDS = "secrets, projectconfigs, clusterconfigs, warehouses (wh), promotions (promo)"


def canonical_kind(text: str) -> str:
    """The canonical kind for any accepted spelling, case-insensitively."""
    kind = KINDS.get(text.strip().lower()) if isinstance(text, str) else None
    if kind is None:
        raise UnknownKindError(
            _one_line(f"unknown kind {_quote(str(text))}; accepted: {ACCEPTED_KINDS}")
        )
    return kind


# ---------------------------------------------------------------------------- text helpers

_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_BRACKET_KEY = re.compile(r"[A-Za-z0-9_.\-/~@:+]+\Z")


def _one_line(text: str) -> str:
    """Escape every character that would break a line or a terminal."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _quote(text: str, limit: int = 80) -> str:
    """A short, quoted rendering of a user string."""
    shown = json.dumps(text[:limit], ensure_ascii=False)
    return shown + "…" if len(text) > limit else shown


def _fmt_path(path: _Path) -> str:
    """``spec.subscriptions[0].git.branch``; odd keys in brackets, as Kubernetes does."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif _PLAIN_KEY.match(seg):
            out += f".{seg}" if out else seg
        elif _BRACKET_KEY.match(seg):
            out += f"[{seg}]"
        else:
            out += f"[{_quote(seg)}]"
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- context


class _Ctx:
    """Where we are, the YAML source positions, and the warnings gathered."""

    def __init__(
        self, where: str, tokens: _Tokens | None, prefix: _Path, strict: bool = False
    ) -> None:
        self.where = where
        self.tokens = tokens
        self.prefix = prefix
        self.strict = strict
        self.ident = ""
        self.warnings: list[str] = []

    def line(self, path: _Path) -> int | None:
        """The source line of ``path`` or of its nearest ancestor."""
        if self.tokens is None:
            return None
        full = self.prefix + path
        for end in range(len(full), -1, -1):
            hit = self.tokens.get(full[:end])
            if hit is not None:
                return hit[1]
        return None

    def fail(
        self, path: _Path, problem: str, error: type[ManifestError] = ManifestError
    ) -> NoReturn:
        line = self.line(path)
        text = _fmt_path(path)
        message = f"{self.where}{self.ident}: " + (f"{text}: " if text else "") + problem
        raise error(message + (f" (line {line})" if line else ""), path=text, line=line)

    def warn(self, path: _Path, problem: str) -> None:
        self.warnings.append(_one_line(f"{self.where}{self.ident}: {_fmt_path(path)}: {problem}"))

    def got(self, path: _Path, value: Any, sensitive: bool = False) -> str:
        """``number 1.20``: the type, and the value as written unless it is secret."""
        name = _type_name(value)
        if value is None or isinstance(value, dict | list) or sensitive:
            return name
        if isinstance(value, str):
            return f"{name} {_quote(value)}"
        token = None
        if self.tokens is not None:
            hit = self.tokens.get(self.prefix + path)
            token = hit[0] if hit else None
        if token is None:
            token = json.dumps(value)
        return f"{name} {token[:40]}{'…' if len(token) > 40 else ''}"


# ---------------------------------------------------------------------------- schema


class _Spec:
    """One node of our schema; ``check`` returns the value to store."""

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        raise NotImplementedError


_Rule = Callable[[str], str | None]


class _Str(_Spec):
    def __init__(
        self,
        *,
        min_len: int = 0,
        max_len: int | None = None,
        enum: tuple[str, ...] = (),
        rule: _Rule | None = None,
        sensitive: bool = False,
    ) -> None:
        self.min_len, self.max_len, self.enum = min_len, max_len, enum
        self.rule, self.sensitive = rule, sensitive

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if not isinstance(value, str):
            ctx.fail(path, f"must be a string, got {ctx.got(path, value, self.sensitive)}")
        if len(value) < self.min_len:
            ctx.fail(path, "must not be empty")
        if self.max_len is not None and len(value) > self.max_len:
            ctx.fail(path, f"must be at most {self.max_len} characters, got {len(value)}")
        if self.enum and value not in self.enum:
            ctx.fail(path, f"must be one of {', '.join(self.enum)}; got {_quote(value)}")
        problem = self.rule(value) if self.rule else None
        if problem:
            ctx.fail(path, problem)
        return value


class _Int(_Spec):
    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if not _is_int(value):
            ctx.fail(path, f"must be an integer, got {ctx.got(path, value)}")
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            ctx.fail(path, f"must be between {low} and {high}, got {value}")
        return value


class _Bool(_Spec):
    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if not isinstance(value, bool):
            ctx.fail(path, f"must be a boolean (true or false), got {ctx.got(path, value)}")
        return value


class _Any(_Spec):
    """Free-form JSON, optionally required to be an object or a list."""

    def __init__(self, kind: str | None = None) -> None:
        self.kind = kind

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if self.kind == "object" and not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        if self.kind == "list" and not isinstance(value, list):
            ctx.fail(path, f"must be a list, got {ctx.got(path, value)}")
        return value


_Hook = Callable[[Any, _Path, _Ctx], None]


class _Obj(_Spec):
    """An object with known fields; ``unknown`` is ``warn`` (keep, note), ``keep``, or
    ``strict`` (refused when the context is strict, else as ``warn``)."""

    def __init__(
        self,
        fields: dict[str, _Spec],
        *,
        required: tuple[str, ...] = (),
        unknown: str = "warn",
        after: _Hook | None = None,
    ) -> None:
        self.fields, self.required, self.unknown, self.after = fields, required, unknown, after

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            spec = self.fields.get(key)
            if spec is None:
                if self.unknown == "strict" and ctx.strict:
                    ctx.fail(
                        (*path, key),
                        "unknown field (a misspelled filter would widen the subscription)",
                        UnknownFieldError,
                    )
                if self.unknown in ("warn", "strict"):
                    ctx.warn((*path, key), "unknown field, kept as is and not checked")
                out[key] = item
            elif item is not None or key in self.required:
                out[key] = spec.check(item, (*path, key), ctx)
            # else: null in an optional field means absent (the API server prunes it)
        for key in self.required:
            if key not in out:
                ctx.fail((*path, key), "required field is missing")
        if self.after:
            self.after(out, path, ctx)
        return out


class _List(_Spec):
    def __init__(self, item: _Spec, *, min_items: int = 0, after: _Hook | None = None) -> None:
        self.item, self.min_items, self.after = item, min_items, after

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if not isinstance(value, list):
            ctx.fail(path, f"must be a list, got {ctx.got(path, value)}")
        if len(value) < self.min_items:
            ctx.fail(path, f"must have at least {self.min_items} item(s)")
        out = [self.item.check(item, (*path, i), ctx) for i, item in enumerate(value)]
        if self.after:
            self.after(out, path, ctx)
        return out


class _Map(_Spec):
    """A map of user-chosen keys to values of one type."""

    def __init__(
        self, value: _Spec, *, key: _Rule | None = None, after: _Hook | None = None
    ) -> None:
        self.value, self.key, self.after = value, key, after

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            problem = self.key(key) if self.key else None
            if problem:
                ctx.fail((*path, key), f"invalid key {_quote(key)}: {problem}")
            out[key] = self.value.check(item, (*path, key), ctx)
        if self.after:
            self.after(out, path, ctx)
        return out


class _Base64(_Spec):
    """A Secret ``data`` value: standard base64 with padding (line breaks ignored, as Go)."""

    _SHAPE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if not isinstance(value, str):
            ctx.fail(path, f"must be a base64 string, got {ctx.got(path, value, True)}")
        compact = value.replace("\r", "").replace("\n", "")
        if not self._SHAPE.match(compact):
            ctx.fail(path, "must be valid base64 (standard alphabet, with = padding)")
        try:
            raw = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            ctx.fail(path, "must be valid base64 (standard alphabet, with = padding)")
        return base64.b64encode(raw).decode("ascii")


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


def _dns_label(value: str) -> str | None:
    if len(value) <= 63 and _DNS_LABEL.fullmatch(value):
        return None
    return (
        "must be a lowercase RFC 1123 label (at most 63 characters: a-z, 0-9 and '-', "
        f"starting and ending with a letter or digit), got {_quote(value)}"
    )


def namespace_problem(value: str) -> str | None:
    """Why ``value`` cannot be a namespace (an RFC 1123 label), or None."""
    return _dns_label(value)


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be an object name (an RFC 1123 subdomain), or None."""
    return _dns_subdomain(value)


def _dns_subdomain(value: str) -> str | None:
    if len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value):
        return None
    return (
        "must be a lowercase RFC 1123 subdomain (1-253 characters: a-z, 0-9, '-' and '.', "
        f"each part starting and ending with a letter or digit), got {_quote(value)}"
    )


def _qualified_name(key: str) -> str | None:
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


def _label_value(value: str) -> str | None:
    if value == "" or (len(value) <= 63 and _QUALIFIED.fullmatch(value)):
        return None
    return (
        "must be empty or at most 63 characters of letters, digits, '-', '_' or '.', "
        f"starting and ending with a letter or digit, got {_quote(value)}"
    )


def _config_key(key: str) -> str | None:
    if len(key) <= 253 and _CONFIG_KEY.fullmatch(key):
        return None
    return "must be 1-253 characters of letters, digits, '-', '_' or '.'"


def _branch(value: str) -> str | None:
    if _BRANCH.fullmatch(value):
        return None
    return (
        "must be a branch name (letters, digits, '.', '_', '/' and '-', starting with a "
        f"letter or digit and not ending with '.' or '/'), got {_quote(value)}"
    )


def _interval(value: str) -> str | None:
    if _INTERVAL.fullmatch(value):
        return None
    return f"must be a duration such as 5m0s, 90s or 1h, got {_quote(value)}"


def _git_url(value: str) -> str | None:
    if _GIT_URL.fullmatch(value) or _GIT_SCP.match(value):
        return None
    return (
        "must be a Git URL (https://host/path, ssh://[user@]host[:port]/path or "
        f"user@host:path), got {_quote(value)}"
    )


def _annotations_size(out: Any, path: _Path, ctx: _Ctx) -> None:
    total = sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in out.items())
    if total > _MAX_ANNOTATION_BYTES:
        ctx.fail(path, f"total size must be at most {_MAX_ANNOTATION_BYTES} bytes, got {total}")


# ---------------------------------------------------------------------------- the kinds

_STRINGS = _List(_Str())
_OBJECTS = _List(_Any("object"))

_METADATA = _Obj(
    {
        "name": _Str(min_len=1, rule=_dns_subdomain),
        "namespace": _Str(),  # checked with the kind's scope, see _scope
        "labels": _Map(_Str(rule=_label_value), key=_qualified_name),
        "annotations": _Map(_Str(), key=_qualified_name, after=_annotations_size),
        "generateName": _Str(),
        "uid": _Str(),
        "resourceVersion": _Str(),
        "generation": _Int(),
        "creationTimestamp": _Str(),
        "deletionTimestamp": _Str(),
        "deletionGracePeriodSeconds": _Int(),
        "finalizers": _STRINGS,
        "ownerReferences": _OBJECTS,
        "managedFields": _OBJECTS,
        "selfLink": _Str(),
    },
    required=("name",),
)

_CONDITION = _Obj(
    {
        "type": _Str(),
        "status": _Str(),
        "reason": _Str(),
        "message": _Str(),
        "lastTransitionTime": _Str(),
        "observedGeneration": _Int(),
    },
    unknown="keep",
)

# -- ProjectConfig / ClusterConfig

_PROVIDERS = (
    "artifactory",
    "azure",
    "bitbucket",
    "dockerhub",
    "generic",
    "gitea",
    "github",
    "gitlab",
    "harbor",
    "quay",
)
_RECEIVER_NAME = _Str(min_len=1, rule=_dns_subdomain)
_BITBUCKET = _Obj(
    {"secretRef": _Obj({"name": _Str(min_len=1, rule=_dns_subdomain)}, required=("name",))},
    required=("secretRef",),
)
_OPAQUE_OBJECT = _Any("object")


class _Receiver(_Spec):
    """``webhookReceivers[i]``: a name and exactly one receiver type."""

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        out: dict[str, Any] = {}
        providers: list[str] = []
        unknown: list[str] = []
        for key, item in value.items():
            here = (*path, key)
            if key == "name":
                out[key] = _RECEIVER_NAME.check(item, here, ctx)
            elif key not in _PROVIDERS:
                ctx.warn(here, "unknown field, kept as is and not checked")
                unknown.append(key)
                out[key] = item
            elif item is not None:
                spec = _BITBUCKET if key == "bitbucket" else _OPAQUE_OBJECT
                out[key] = spec.check(item, here, ctx)
                providers.append(key)
        if "name" not in out:
            ctx.fail((*path, "name"), "required field is missing")
        if len(providers) != 1:
            got = f"{len(providers)}: {', '.join(providers)}" if providers else "none"
            if unknown:
                got += f" (unknown fields: {', '.join(unknown)})"
            kinds = ", ".join(_PROVIDERS)
            ctx.fail(path, f"must configure exactly one receiver type ({kinds}); got {got}")
        return out


def _unique_receivers(out: Any, path: _Path, ctx: _Ctx) -> None:
    seen: dict[str, int] = {}
    for i, receiver in enumerate(out):
        name = receiver["name"]
        if name in seen:
            first = _fmt_path((*path, seen[name]))
            ctx.fail((*path, i, "name"), f"duplicate receiver name {_quote(name)} (also {first})")
        seen[name] = i


_RECEIVERS = _List(_Receiver(), after=_unique_receivers)
_CONFIG_STATUS = _Obj(
    {
        "webhookReceivers": _List(
            _Obj({"name": _Str(), "path": _Str(), "url": _Str()}, unknown="keep")
        ),
        "conditions": _List(_CONDITION),
        "observedGeneration": _Int(),
        "lastHandledRefresh": _Str(),
    },
    unknown="keep",
)
_PROJECT_CONFIG_SPEC = _Obj({"webhookReceivers": _RECEIVERS, "promotionPolicies": _OBJECTS})
_CLUSTER_CONFIG_SPEC = _Obj({"webhookReceivers": _RECEIVERS})

# -- Warehouse

_COMMIT_STRATEGIES = ("NewestFromBranch", "SemVer", "Lexical", "NewestTag")


def _old_regex_spelling(out: Any, path: _Path, ctx: _Ctx) -> None:
    for old in ("allowTagsRegex", "ignoreTagsRegex"):
        if old in out:
            ctx.warn((*path, old), f"older spelling of {old}es: kept, but only {old}es is read")


_GIT = _Obj(
    {
        "repoURL": _Str(min_len=1, rule=_git_url),
        "commitSelectionStrategy": _Str(enum=_COMMIT_STRATEGIES),
        "branch": _Str(min_len=1, max_len=255, rule=_branch),
        "semverConstraint": _Str(),  # evaluated elsewhere, never rejected here
        "strictSemvers": _Bool(),
        "allowTagsRegexes": _STRINGS,  # regexes evaluated elsewhere, never rejected here
        "ignoreTagsRegexes": _STRINGS,
        "allowTagsRegex": _STRINGS,  # the spelling of some Kargo v1.10 releases
        "ignoreTagsRegex": _STRINGS,
        "allowTags": _Str(),  # deprecated: one regex
        "ignoreTags": _STRINGS,  # deprecated: a list of literal tags
        "includePaths": _STRINGS,
        "excludePaths": _STRINGS,
        "expressionFilter": _Str(),
        "insecureSkipTLSVerify": _Bool(),
        "discoveryLimit": _Int(1, 100),
        "name": _Str(),
    },
    required=("repoURL",),
    unknown="strict",
    after=_old_regex_spelling,
)
_IMAGE = _Obj(
    {
        "repoURL": _Str(min_len=1),
        "imageSelectionStrategy": _Str(enum=("Digest", "Lexical", "NewestBuild", "SemVer")),
        "constraint": _Str(),
        "semverConstraint": _Str(),
        "strictSemvers": _Bool(),
        "allowTags": _Str(),
        "ignoreTags": _STRINGS,
        "allowTagsRegexes": _STRINGS,
        "ignoreTagsRegexes": _STRINGS,
        "allowTagsRegex": _STRINGS,
        "ignoreTagsRegex": _STRINGS,
        "platform": _Str(),
        "gitRepoURL": _Str(),
        "insecureSkipTLSVerify": _Bool(),
        "cacheByTag": _Bool(),
        "discoveryLimit": _Int(1, 100),
        "name": _Str(),
    },
    required=("repoURL",),
    unknown="strict",
)
_CHART = _Obj(
    {
        "repoURL": _Str(min_len=1),
        "name": _Str(),
        "semverConstraint": _Str(),
        "discoveryLimit": _Int(1, 100),
    },
    required=("repoURL",),
    unknown="strict",
)
_SUBSCRIPTION_TYPES: dict[str, _Spec] = {"git": _GIT, "image": _IMAGE, "chart": _CHART}


class _Subscription(_Spec):
    """``subscriptions[i]``: exactly one key; git/image/chart checked, other types opaque."""

    def check(self, value: Any, path: _Path, ctx: _Ctx) -> Any:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        if len(value) != 1:
            got = f"{len(value)}: {', '.join(value)}" if value else "none"
            problem = "must have exactly one subscription type (git, image or chart)"
            ctx.fail(path, f"{problem}; got {got}")
        ((key, item),) = value.items()
        spec = _SUBSCRIPTION_TYPES.get(key, _OPAQUE_OBJECT)  # other keys: generic subscriptions
        return {key: spec.check(item, (*path, key), ctx)}


_WAREHOUSE_SPEC = _Obj(
    {
        "subscriptions": _List(_Subscription(), min_items=1),
        "interval": _Str(rule=_interval),
        "shard": _Str(),
        "freightCreationPolicy": _Str(enum=("Automatic", "Manual")),
        "freightCreationCriteria": _Obj({"expression": _Str()}),
    },
    required=("subscriptions",),
)
_WAREHOUSE_STATUS = _Obj(
    {"conditions": _List(_CONDITION), "observedGeneration": _Int(), "lastHandledRefresh": _Str()},
    unknown="keep",
)

# -- Promotion


def _uses_or_task(out: Any, path: _Path, ctx: _Ctx) -> None:
    if "uses" not in out and "task" not in out:
        ctx.fail((*path, "uses"), "required field is missing (a step needs uses, or a task)")


_STEP = _Obj(
    {
        "uses": _Str(min_len=1),
        "as": _Str(),
        "config": _Any("object"),
        "task": _Obj(
            {
                "name": _Str(min_len=1, rule=_dns_subdomain),
                "kind": _Str(enum=("PromotionTask", "ClusterPromotionTask")),
            },
            required=("name",),
        ),
        "retry": _Any("object"),
        "inputs": _Any(),
        "vars": _OBJECTS,
        "if": _Str(),
        "continueOnError": _Bool(),
    },
    after=_uses_or_task,
)
_PROMOTION_SPEC = _Obj(
    {
        "stage": _Str(min_len=1, rule=_dns_subdomain),
        "freight": _Str(min_len=1),
        "vars": _OBJECTS,
        "steps": _List(_STEP),
    }
)
_PROMOTION_STATUS = _Obj(
    {
        "phase": _Str(),
        "currentStep": _Int(),
        "currentStepAttempt": _Int(),
        "state": _Any("object"),
        "message": _Str(),
        "lastHandledRefresh": _Str(),
        "finishedAt": _Str(),
        "healthChecks": _OBJECTS,
        "stepExecutionMetadata": _OBJECTS,
    },
    unknown="keep",
)

# -- Secret

_SECRET = _Obj(
    {
        "apiVersion": _Str(),
        "kind": _Str(),
        "metadata": _METADATA,
        "data": _Map(_Base64(), key=_config_key),
        "stringData": _Map(_Str(sensitive=True), key=_config_key),
        "type": _Str(),
        "immutable": _Bool(),
    },
    required=("metadata",),
)


def _kargo(spec: _Spec, status: _Spec, *, spec_required: bool) -> _Obj:
    return _Obj(
        {
            "apiVersion": _Str(),
            "kind": _Str(),
            "metadata": _METADATA,
            "spec": spec,
            "status": status,
        },
        required=("metadata", "spec") if spec_required else ("metadata",),
    )


_SCHEMAS: dict[str, _Obj] = {
    "Secret": _SECRET,
    "ProjectConfig": _kargo(_PROJECT_CONFIG_SPEC, _CONFIG_STATUS, spec_required=False),
    "ClusterConfig": _kargo(_CLUSTER_CONFIG_SPEC, _CONFIG_STATUS, spec_required=False),
    "Warehouse": _kargo(_WAREHOUSE_SPEC, _WAREHOUSE_STATUS, spec_required=True),
    "Promotion": _kargo(_PROMOTION_SPEC, _PROMOTION_STATUS, spec_required=True),
}


# ---------------------------------------------------------------------------- one object


def validate_object(body: Any, where: str, default_namespace: str | None = None) -> Resource:
    """Check one parsed object (the same checks as ``parse_manifests``) and normalize it."""
    ctx = _Ctx(where, None, ())
    return _validate(_plain(body, ctx), ctx, default_namespace, None)


def _plain(value: Any, ctx: _Ctx) -> Any:
    """A JSON-compatible deep copy, or a ManifestError naming the offending path."""

    def copy(item: Any, path: _Path) -> Any:
        if len(path) > _MAX_DEPTH:
            ctx.fail(path[:_DEPTH_SHOWN], f"nested more than {_MAX_DEPTH} levels deep")
        if item is None or isinstance(item, bool):
            return item
        if isinstance(item, str):
            if _SURROGATE.search(item):
                ctx.fail(path, "invalid Unicode text (lone surrogate)")
            return str(item)
        if isinstance(item, int):
            return int(item)
        if isinstance(item, float):
            if not math.isfinite(item):
                ctx.fail(path, f"numbers must be finite, got {item}")
            return float(item)
        if isinstance(item, dict):
            out: dict[str, Any] = {}
            for key, sub in item.items():
                if not isinstance(key, str):
                    ctx.fail(path, f"object keys must be strings, got {_type_name(key)}")
                if _SURROGATE.search(key):
                    ctx.fail(path, "invalid Unicode text in a key (lone surrogate)")
                out[str(key)] = copy(sub, (*path, key))
            return out
        if isinstance(item, list | tuple):
            return [copy(sub, (*path, i)) for i, sub in enumerate(item)]
        ctx.fail(path, f"unsupported value of type {type(item).__name__}")

    return copy(value, ())


def _identity(data: dict[str, Any], default_namespace: str | None) -> str:
    """`` (Warehouse demo/wh)`` from whatever is readable before checking."""
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in _KIND_TABLE:
        return ""
    meta = data.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else ""
    if NAMESPACED[kind] and not namespace:
        namespace = default_namespace or ""
    if not NAMESPACED[kind]:
        namespace = ""
    if not name:
        return f" ({kind})"
    return f" ({kind} {namespace}/{name})" if namespace else f" ({kind} {name})"


def _validate(
    data: Any,
    ctx: _Ctx,
    default_namespace: str | None,
    soft: tuple[_Path, str] | None,
) -> Resource:
    """The checks of one object; ``soft`` is a YAML problem found while reading it."""
    if not isinstance(data, dict):
        ctx.fail((), f"must be an object (a Kubernetes resource), got {ctx.got((), data)}")
    ctx.ident = _identity(data, default_namespace)
    if soft is not None:
        ctx.fail(*soft)
    kind = data.get("kind")
    if kind is None:
        ctx.fail(("kind",), "required field is missing")
    if not isinstance(kind, str):
        ctx.fail(("kind",), f"must be a string, got {ctx.got(('kind',), kind)}")
    if kind not in _KIND_TABLE:
        hint = KINDS.get(kind.lower())
        why = f" (kinds are case-sensitive: did you mean {hint}?)" if hint else ""
        ctx.fail(
            ("kind",),
            f"unknown kind {_quote(kind)}{why}; accepted: {', '.join(_KIND_TABLE)}",
        )
    api_version = data.get("apiVersion")
    if api_version is None:
        ctx.fail(("apiVersion",), "required field is missing")
    if api_version != API_VERSIONS[kind]:
        got = ctx.got(("apiVersion",), api_version)
        ctx.fail(("apiVersion",), f"must be {API_VERSIONS[kind]} for {kind}, got {got}")
    out = _SCHEMAS[kind].check(data, (), ctx)
    namespace = _scope(kind, out, ctx, default_namespace)
    if kind == "Secret":
        _fold_string_data(out, ctx)
    name = out["metadata"]["name"]
    return Resource(kind, namespace, name, out, tuple(ctx.warnings))


def _scope(kind: str, out: dict[str, Any], ctx: _Ctx, default_namespace: str | None) -> str:
    """Apply the namespace rules of ``kind``; return the namespace ("" if cluster-scoped)."""
    meta: dict[str, Any] = out["metadata"]
    name = meta["name"]
    namespace = meta.get("namespace", "")
    here = ("metadata", "namespace")
    if not NAMESPACED[kind]:
        if meta.pop("namespace", ""):
            ctx.warn(here, f"ignored: {kind} is cluster-scoped")
        if kind == "ClusterConfig" and name != "cluster":
            wrong = f'ClusterConfig must be named "cluster", got {_quote(name)}'
            ctx.fail(("metadata", "name"), wrong)
        return ""
    if not namespace:
        if default_namespace is None:
            ctx.fail(here, f"required field is missing ({kind} is namespaced; no default given)")
        namespace = default_namespace
        rebuilt = {"name": name, "namespace": namespace}
        rebuilt.update((k, v) for k, v in meta.items() if k not in rebuilt)
        out["metadata"] = rebuilt
    problem = _dns_label(namespace)
    if problem:
        ctx.fail(here, problem)
    if kind == "ProjectConfig" and name != namespace:
        ctx.fail(
            ("metadata", "name"),
            f"a ProjectConfig must be named like its namespace (the Project) {_quote(namespace)}, "
            f"got {_quote(name)}",
        )
    return str(namespace)


def _fold_string_data(out: dict[str, Any], ctx: _Ctx) -> None:
    """Merge ``stringData`` into base64 ``data`` (stringData wins), as the API server does."""
    string_data = out.pop("stringData", None)
    if string_data:
        data = out.setdefault("data", {})
        for key, text in string_data.items():
            try:
                data[key] = base64.b64encode(text.encode("utf-8")).decode("ascii")
            except UnicodeEncodeError:
                ctx.fail(("stringData", key), "must be valid Unicode text")
    total = sum(len(base64.b64decode(v)) for v in out.get("data", {}).values())
    if total > _MAX_SECRET_BYTES:
        ctx.fail(("data",), f"total size must be at most {_MAX_SECRET_BYTES} bytes, got {total}")


# ---------------------------------------------------------------------------- YAML


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loader used to compose nodes; scalars are converted by ``_Converter``.

    libyaml's parser (``CSafeLoader``) when PyYAML has it: measured 9x faster on 10,000
    Warehouses; the pure-Python one otherwise. Both compose the same nodes.
    """


_TAG = "tag:yaml.org,2002:"


class _Hard(Exception):
    """A YAML problem that stops reading the document: (path, problem, line)."""

    def __init__(self, path: _Path, problem: str, line: int) -> None:
        super().__init__(problem)
        self.path, self.problem, self.line = path, problem, line


class _Converter:
    """Nodes to plain JSON-like data, recording source lines and tokens of scalars."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.count = 0
        self.tokens: _Tokens = {}
        self.soft: tuple[_Path, str] | None = None
        self.flattened: set[int] = set()

    def convert(self, node: yaml.Node, path: _Path) -> Any:
        line = node.start_mark.line + 1
        self.count += 1
        if self.count > _MAX_NODES:
            raise _Hard(path, f"more than {_MAX_NODES} values (after expanding YAML aliases)", line)
        if len(path) > _MAX_DEPTH:
            raise _Hard(path[:_DEPTH_SHOWN], f"nested more than {_MAX_DEPTH} levels deep", line)
        if isinstance(node, yaml.ScalarNode):
            value = self.scalar(node, path, line)
            plain = not node.style and not isinstance(value, str)
            self.tokens[path] = (node.value if plain else None, line)
            return value
        self.tokens[path] = (None, line)
        if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
            return [self.convert(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
            pairs = self.pairs(node, path)
            return {key: self.convert(child, (*path, key)) for key, child in pairs}
        raise _Hard(path, f"unsupported YAML tag {node.tag}", line)

    def scalar(self, node: yaml.ScalarNode, path: _Path, line: int) -> Any:
        tag = node.tag
        if tag == _TAG + "str" or tag == _TAG + "timestamp":  # timestamps stay text, as JSON
            if _SURROGATE.search(node.value):
                raise _Hard(path, "invalid Unicode text (lone surrogate)", line)
            return node.value
        if tag == _TAG + "null":
            return None
        constructors: dict[str, Callable[[yaml.ScalarNode], Any]] = {
            _TAG + "bool": self.loader.construct_yaml_bool,
            _TAG + "int": self.loader.construct_yaml_int,
            _TAG + "float": self.loader.construct_yaml_float,
        }
        construct = constructors.get(tag)
        if construct is None:
            raise _Hard(path, f"unsupported YAML tag {tag}", line)
        try:
            value = construct(node)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, yaml.YAMLError):
            what = f"invalid {tag.removeprefix(_TAG)} {_quote(node.value)}"
            raise _Hard(path, what, line) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise _Hard(path, f"numbers must be finite, got {node.value}", line)
        return value

    def key(self, node: yaml.Node, path: _Path) -> str:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            raise _Hard(path, "mapping keys must be plain strings", line)
        if _SURROGATE.search(node.value):
            raise _Hard(path, "invalid Unicode text in a key (lone surrogate)", line)
        return str(node.value)

    def pairs(self, node: yaml.MappingNode, path: _Path) -> Iterable[tuple[str, yaml.Node]]:
        """The key/value pairs, merge keys applied; notes the first duplicate key."""
        if id(node) not in self.flattened:
            self.flattened.add(id(node))
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _TAG + "merge":
                    continue
                key = self.key(key_node, path)
                line = key_node.start_mark.line + 1
                if key in seen and self.soft is None:
                    self.soft = ((*path, key), f"duplicate key (first at line {seen[key]})")
                seen.setdefault(key, line)
            try:
                self.loader.flatten_mapping(node)
            except yaml.YAMLError as error:
                problem = getattr(error, "problem", None) or "invalid merge key"
                raise _Hard(path, str(problem), node.start_mark.line + 1) from None
        return [(self.key(k, path), v) for k, v in node.value]


def _doc_number_at(text: str, line_index: int) -> int:
    """The 1-based document holding 0-based line ``line_index`` (for reader errors)."""
    content_before_first = False
    separators = 0
    for i, line in enumerate(text.splitlines()):
        if i > line_index:
            break
        if line.startswith("---") and line[3:4] in ("", " ", "\t"):
            separators += 1
        elif separators == 0 and line.strip() and not line.lstrip().startswith(("#", "%")):
            content_before_first = True
    return max(1, separators + (1 if content_before_first else 0))


def _yaml_error(source: str, document: int, error: Exception, text: str) -> ManifestError:
    """A one-line ManifestError from whatever PyYAML raised."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or error.context or "invalid YAML"
        if error.context and error.problem and error.context_mark is not None:
            problem += f" ({error.context} at line {error.context_mark.line + 1})"
        line = mark.line + 1
        return ManifestError(
            f"{source}: document {document}: line {line}, column {mark.column + 1}: {problem}",
            line=line,
        )
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        document = _doc_number_at(text, line - 1)
        character = error.character
        shown = f"#x{character:04x}" if isinstance(character, int) else repr(character)
        return ManifestError(
            f"{source}: document {document}: line {line}: unacceptable character {shown}: "
            f"{error.reason}",
            line=line,
        )
    if isinstance(error, RecursionError):
        return ManifestError(f"{source}: document {document}: YAML nested too deeply")
    return ManifestError(f"{source}: document {document}: invalid YAML ({type(error).__name__})")


def _is_list_kind(data: Any) -> bool:
    """``kind: List`` (or ``WarehouseList``...), which kubectl unpacks into its items."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if not isinstance(kind, str):
        return False
    return kind == "List" or (kind.endswith("List") and kind[:-4] in _KIND_TABLE)


def parse_manifests(
    text: str, source: str, default_namespace: str | None = None, *, strict: bool = False
) -> list[Resource]:
    """Every object of a multi-document YAML text, checked; all-or-nothing.

    ``strict`` refuses unknown fields inside ``spec.subscriptions`` (kubectl's
    ``--validate=strict``); otherwise they are kept with a warning.
    """
    _check_flow_depth(text, source)
    resources: list[Resource] = []
    document = 1
    loader: _Loader | None = None
    try:
        while True:
            try:  # only PyYAML's own failures here: reader, scanner, parser, recursion
                if loader is None:
                    loader = _Loader(text)
                if not loader.check_node():
                    break
                node = loader.get_node()
            except Exception as error:
                raise _yaml_error(source, document, error, text) from None
            resources.extend(_document(loader, node, source, document, default_namespace, strict))
            document += 1
    finally:
        if loader is not None:
            loader.dispose()
    return resources


def _check_flow_depth(text: str, source: str) -> None:
    """Refuse nesting past _MAX_DEPTH before libyaml composes it (event by event, no recursion).

    Only texts with enough ``[`` and ``{`` to nest dangerously deep pay for this pass;
    YAML errors are left to the real parse, which words them.
    """
    if text.count("[") + text.count("{") <= _FLOW_OPENERS_CHECKED:
        return
    depth = 0
    document = 0
    loader = _Loader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.DocumentStartEvent):
                document += 1
            elif isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark else None
                    raise ManifestError(
                        f"{source}: document {document}: nested more than {_MAX_DEPTH} "
                        f"levels deep" + (f" (line {line})" if line else ""),
                        line=line,
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return
    finally:
        loader.dispose()


def _document(
    loader: _Loader,
    node: yaml.Node | None,
    source: str,
    document: int,
    default_namespace: str | None,
    strict: bool,
) -> list[Resource]:
    """The objects of one document (none if empty, several for a List)."""
    where = f"{source}: document {document}"
    if node is None:
        return []
    converter = _Converter(loader)
    try:
        data = converter.convert(node, ())
    except _Hard as hard:
        text = _fmt_path(hard.path)
        raise ManifestError(
            f"{where}: " + (f"{text}: " if text else "") + f"{hard.problem} (line {hard.line})",
            path=text,
            line=hard.line,
        ) from None
    if data is None:
        return []
    tokens, soft = converter.tokens, converter.soft
    if not _is_list_kind(data):
        return [_validate(data, _Ctx(where, tokens, (), strict), default_namespace, soft)]
    list_ctx = _Ctx(where, tokens, ())
    if soft is not None:
        list_ctx.fail(*soft)
    items = data.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        list_ctx.fail(("items",), f"must be a list, got {list_ctx.got(('items',), items)}")
    out = []
    for i, item in enumerate(items):
        ctx = _Ctx(f"{where}, items[{i}]", tokens, ("items", i), strict)
        if _is_list_kind(item):
            ctx.fail((), "a List cannot contain another List")
        out.append(_validate(item, ctx, default_namespace, None))
    return out
