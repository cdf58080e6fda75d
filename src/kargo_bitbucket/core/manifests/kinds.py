"""Kargo's kinds (and Secret): their fields, names and scope, and checking one object."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

from kargo_bitbucket.core.manifests.names import (
    annotation_key,
    annotations_size,
    branch,
    config_key,
    dns_label,
    dns_subdomain,
    git_url,
    interval,
    label_value,
    qualified_name,
    var_name,
)
from kargo_bitbucket.core.manifests.schema import (
    DEPTH_SHOWN,
    MAX_DEPTH,
    MAX_SECRET_BYTES,
    SURROGATE,
    AnyOf,
    Base64,
    Bool,
    Ctx,
    Int,
    List,
    Map,
    NullAsEmpty,
    Obj,
    Path,
    Spec,
    Str,
    UnknownKindError,
    fmt_path,
    one_line,
    quote,
    type_name,
)

KARGO_API_VERSION = "kargo.akuity.io/v1alpha1"
_KARGO_GROUP = "kargo.akuity.io"

# kind -> (apiVersion, namespaced, singular, plural, short names)
KIND_TABLE: dict[str, tuple[str, bool, str, str, tuple[str, ...]]] = {
    "Secret": ("v1", True, "secret", "secrets", ()),
    "ProjectConfig": (KARGO_API_VERSION, True, "projectconfig", "projectconfigs", ()),
    "ClusterConfig": (KARGO_API_VERSION, False, "clusterconfig", "clusterconfigs", ()),
    "Warehouse": (KARGO_API_VERSION, True, "warehouse", "warehouses", ("wh",)),
    "Promotion": (KARGO_API_VERSION, True, "promotion", "promotions", ("promo", "promos")),
}

API_VERSIONS: dict[str, str] = {kind: row[0] for kind, row in KIND_TABLE.items()}
NAMESPACED: dict[str, bool] = {kind: row[1] for kind, row in KIND_TABLE.items()}


def _spellings() -> dict[str, str]:
    """Every accepted spelling: the kind, lower-case, singular, plural, short, ``plural.group``."""
    out: dict[str, str] = {}
    for kind, (api_version, _, singular, plural, shorts) in KIND_TABLE.items():
        for name in (kind, kind.lower(), singular, plural, *shorts):
            out[name] = kind
        if api_version != "v1":
            out[f"{singular}.{_KARGO_GROUP}"] = kind
            out[f"{plural}.{_KARGO_GROUP}"] = kind
    return out


KINDS: dict[str, str] = _spellings()


# Decisions (the Kargo CRD facts they rest on in brackets):
# - Known fields are type-checked strictly (types, required, enums, name and URL patterns).
#   Unknown fields are kept verbatim and noted in Resource.warnings, neither pruned nor
#   rejected [the newest Warehouse CRD keeps spec.subscriptions as raw JSON and Kargo keeps
#   adding fields and receiver types; a newer manifest must survive get/apply] -- except,
#   when the caller asks for strict checking, inside a git/image/chart subscription, where a
#   misspelled filter (brnach:) would silently widen what the Warehouse matches.
#   status is open: server-written fields are kept without notes.
# - null in an optional field means absent and is dropped [the API server prunes nulls of
#   non-nullable fields]; null where a value is required is an error, except a map value
#   (labels, annotations, Secret data), stored as "" [as the API server stores it].
# - No schema defaults are written [strictSemvers defaults to true in the typed v1.x CRD but is
#   an optional *bool in the newest types; SPEC 6.3 reads it absent as false]. The only edits:
#   Secret stringData folded into data, the namespace filled from default_namespace, a
#   ClusterConfig namespace dropped (with a note), Secret data re-encoded as canonical base64.


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
            one_line(f"unknown kind {quote(str(text))}; accepted: {ACCEPTED_KINDS}")
        )
    return kind


# ---------------------------------------------------------------------------- the kinds

_STRINGS = List(Str())
_OBJECTS = List(AnyOf("object"))

_METADATA = Obj(
    {
        "name": Str(min_len=1, rule=dns_subdomain),
        "namespace": Str(),  # checked with the kind's scope, see _scope
        "labels": Map(NullAsEmpty(Str(rule=label_value)), key=qualified_name),
        "annotations": Map(NullAsEmpty(Str()), key=annotation_key, after=annotations_size),
        "generateName": Str(),
        "uid": Str(),
        "resourceVersion": Str(),
        "generation": Int(),
        "creationTimestamp": Str(),
        "deletionTimestamp": Str(),
        "deletionGracePeriodSeconds": Int(),
        "finalizers": _STRINGS,
        "ownerReferences": _OBJECTS,
        "managedFields": _OBJECTS,
        "selfLink": Str(),
    },
    required=("name",),
)

_CONDITION = Obj(
    {
        "type": Str(),
        "status": Str(),
        "reason": Str(),
        "message": Str(),
        "lastTransitionTime": Str(),
        "observedGeneration": Int(),
    },
    unknown="keep",
)

# -- ProjectConfig / ClusterConfig

_RECEIVER_NAME = Str(min_len=1, rule=dns_subdomain)
_BITBUCKET = Obj(
    {"secretRef": Obj({"name": Str(min_len=1, rule=dns_subdomain)}, required=("name",))},
    required=("secretRef",),
)
# The other types as the CRD has them (their Secret is never read, so its name is not checked).
_SECRET_REF = Obj({"name": Str()})
_SECRET_ONLY = Obj({"secretRef": _SECRET_REF}, required=("secretRef",))
_LABEL_SELECTOR = Obj(
    {
        "matchLabels": Map(Str()),
        "matchExpressions": List(
            Obj({"key": Str(), "operator": Str(), "values": _STRINGS}, required=("key", "operator"))
        ),
    }
)
_INDEX_SELECTOR = Obj(
    {
        "matchIndices": List(
            Obj(
                {
                    "key": Str(enum=("subscribedURLs", "receiverPaths")),
                    "operator": Str(),
                    "value": Str(),
                },
                required=("key", "operator", "value"),
            ),
            min_items=1,
        )
    }
)
_GENERIC_ACTION = Obj(
    {
        "action": Str(enum=("Refresh",)),
        "parameters": Map(Str()),
        "targetSelectionCriteria": List(
            Obj(
                {
                    "kind": Str(enum=("Warehouse",)),
                    "name": Str(),
                    "labelSelector": _LABEL_SELECTOR,
                    "indexSelector": _INDEX_SELECTOR,
                },
                required=("kind",),
            ),
            min_items=1,
        ),
        "whenExpression": Str(),
    },
    required=("action",),
)
_RECEIVER_TYPES: dict[str, Spec] = {
    "artifactory": Obj(
        {"secretRef": _SECRET_REF, "virtualRepoName": Str()}, required=("secretRef",)
    ),
    "azure": _SECRET_ONLY,
    "bitbucket": _BITBUCKET,
    "dockerhub": _SECRET_ONLY,
    "generic": Obj(
        {"secretRef": _SECRET_REF, "actions": List(_GENERIC_ACTION, min_items=1)},
        required=("secretRef",),
    ),
    "gitea": _SECRET_ONLY,
    "github": _SECRET_ONLY,
    "gitlab": _SECRET_ONLY,
    "harbor": _SECRET_ONLY,
    "quay": _SECRET_ONLY,
}
# Fields of a receiver type: one of them beside the receiver's name is a mis-indentation.
_RECEIVER_TYPE_FIELDS = frozenset(
    key for spec in _RECEIVER_TYPES.values() if isinstance(spec, Obj) for key in spec.fields
)
_OPAQUE_OBJECT = AnyOf("object")


def _newer_receiver_type(value: dict[str, Any], unknown: list[str]) -> str | None:
    """The one unknown key that can only be a receiver type newer than this build (an
    object, not a field of a known type), or None when the entry looks like a mistake."""
    if len(unknown) != 1 or unknown[0] in _RECEIVER_TYPE_FIELDS:
        return None
    return unknown[0] if isinstance(value[unknown[0]], dict) else None


class _Receiver(Spec):
    """``webhookReceivers[i]``: a name and exactly one receiver type; a single unknown type
    (newer Kargo) is kept with a warning and publishes nothing (SPEC §2)."""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        out: dict[str, Any] = {}
        providers: list[str] = []
        unknown: list[str] = []
        for key, item in value.items():
            here = (*path, key)
            if key == "name":
                out[key] = _RECEIVER_NAME.check(item, here, ctx)
            elif key not in _RECEIVER_TYPES:
                unknown.append(key)
                out[key] = item
            elif item is not None:
                out[key] = _RECEIVER_TYPES[key].check(item, here, ctx)
                providers.append(key)
        if "name" not in out:
            ctx.fail((*path, "name"), "required field is missing")
        newer = None if providers else _newer_receiver_type(value, unknown)
        if newer is None and len(providers) != 1:
            got = f"{len(providers)}: {', '.join(providers)}" if providers else "none"
            if unknown:
                got += f" (unknown fields: {', '.join(unknown)})"
            kinds = ", ".join(_RECEIVER_TYPES)
            ctx.fail(path, f"must configure exactly one receiver type ({kinds}); got {got}")
        for key in unknown:
            note = (
                "receiver type this build does not know (newer Kargo?): kept as is, "
                "no URL is published for it"
                if key == newer
                else "unknown field, kept as is and not checked"
            )
            ctx.warn((*path, key), note)
        return out


def _unique_receivers(out: Any, path: Path, ctx: Ctx) -> None:
    seen: dict[str, int] = {}
    for i, receiver in enumerate(out):
        name = receiver["name"]
        if name in seen:
            first = fmt_path((*path, seen[name]))
            ctx.fail((*path, i, "name"), f"duplicate receiver name {quote(name)} (also {first})")
        seen[name] = i


_RECEIVERS = List(_Receiver(), after=_unique_receivers)
_CONFIG_STATUS = Obj(
    {
        "webhookReceivers": List(Obj({"name": Str(), "path": Str(), "url": Str()}, unknown="keep")),
        "conditions": List(_CONDITION),
        "observedGeneration": Int(),
        "lastHandledRefresh": Str(),
    },
    unknown="keep",
)
_PROJECT_CONFIG_SPEC = Obj({"webhookReceivers": _RECEIVERS, "promotionPolicies": _OBJECTS})
_CLUSTER_CONFIG_SPEC = Obj({"webhookReceivers": _RECEIVERS})

# -- Warehouse

_COMMIT_STRATEGIES = ("NewestFromBranch", "SemVer", "Lexical", "NewestTag")


def _old_regex_spelling(out: Any, path: Path, ctx: Ctx) -> None:
    for old in ("allowTagsRegex", "ignoreTagsRegex"):
        if old in out:
            ctx.warn((*path, old), f"older spelling of {old}es: kept, but only {old}es is read")


_GIT = Obj(
    {
        "repoURL": Str(min_len=1, rule=git_url),
        "commitSelectionStrategy": Str(enum=_COMMIT_STRATEGIES),
        "branch": Str(min_len=1, max_len=255, rule=branch),
        "semverConstraint": Str(),  # evaluated elsewhere, never rejected here
        "strictSemvers": Bool(),
        "allowTagsRegexes": _STRINGS,  # regexes evaluated elsewhere, never rejected here
        "ignoreTagsRegexes": _STRINGS,
        "allowTagsRegex": _STRINGS,  # the spelling of some Kargo v1.10 releases
        "ignoreTagsRegex": _STRINGS,
        "allowTags": Str(),  # deprecated: one regex
        "ignoreTags": _STRINGS,  # deprecated: a list of literal tags
        "includePaths": _STRINGS,
        "excludePaths": _STRINGS,
        "expressionFilter": Str(),
        "insecureSkipTLSVerify": Bool(),
        "discoveryLimit": Int(1, 100),
        "name": Str(),
    },
    required=("repoURL",),
    unknown="strict",
    after=_old_regex_spelling,
)
GIT_FIELDS = frozenset(_GIT.fields)
"""The fields of Kargo's Git subscription (``spec.subscriptions[i].git``)."""
_IMAGE = Obj(
    {
        "repoURL": Str(min_len=1),
        "imageSelectionStrategy": Str(enum=("Digest", "Lexical", "NewestBuild", "SemVer")),
        "constraint": Str(),
        "semverConstraint": Str(),
        "strictSemvers": Bool(),
        "allowTags": Str(),
        "ignoreTags": _STRINGS,
        "allowTagsRegexes": _STRINGS,
        "ignoreTagsRegexes": _STRINGS,
        "allowTagsRegex": _STRINGS,
        "ignoreTagsRegex": _STRINGS,
        "platform": Str(),
        "gitRepoURL": Str(),
        "insecureSkipTLSVerify": Bool(),
        "cacheByTag": Bool(),
        "discoveryLimit": Int(1, 100),
        "name": Str(),
    },
    required=("repoURL",),
    unknown="strict",
)
_CHART = Obj(
    {
        "repoURL": Str(min_len=1),
        "name": Str(),
        "semverConstraint": Str(),
        "discoveryLimit": Int(1, 100),
    },
    required=("repoURL",),
    unknown="strict",
)
_SUBSCRIPTION_TYPES: dict[str, Spec] = {"git": _GIT, "image": _IMAGE, "chart": _CHART}


class _Subscription(Spec):
    """``subscriptions[i]``: exactly one key; git/image/chart checked, other types opaque."""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        if len(value) != 1:
            got = f"{len(value)}: {', '.join(value)}" if value else "none"
            problem = "must have exactly one subscription type (git, image or chart)"
            ctx.fail(path, f"{problem}; got {got}")
        ((key, item),) = value.items()
        spec = _SUBSCRIPTION_TYPES.get(key, _OPAQUE_OBJECT)  # other keys: generic subscriptions
        return {key: spec.check(item, (*path, key), ctx)}


_WAREHOUSE_SPEC = Obj(
    {
        "subscriptions": List(_Subscription(), min_items=1),
        "interval": Str(rule=interval),
        "shard": Str(),
        "freightCreationPolicy": Str(enum=("Automatic", "Manual")),
        "freightCreationCriteria": Obj({"expression": Str()}),
    },
    required=("subscriptions",),
)
_WAREHOUSE_STATUS = Obj(
    {"conditions": List(_CONDITION), "observedGeneration": Int(), "lastHandledRefresh": Str()},
    unknown="keep",
)

# -- Promotion


_VARS = List(Obj({"name": Str(min_len=1, rule=var_name), "value": Str()}, required=("name",)))
_STEP_RULE = "a Promotion step must have uses set and must not reference a task"


def _uses_not_task(out: Any, path: Path, ctx: Ctx) -> None:
    """The CRD's rule on a step (``has(self.uses) && !has(self.task)``): the tasks of a
    Promotion are inflated into steps before it is created."""
    if "uses" not in out:
        ctx.fail((*path, "uses"), f"required field is missing ({_STEP_RULE})")
    if "task" in out:
        ctx.fail((*path, "task"), f"not allowed ({_STEP_RULE})")


def _freight_or_origin(out: Any, path: Path, ctx: Ctx) -> None:
    """The CRD's rule on the spec (``has(self.freight) != has(self.origin)``)."""
    if ("freight" in out) == ("origin" in out):
        ctx.fail(path, "exactly one of freight or origin must be set")


_STEP = Obj(
    {
        "uses": Str(min_len=1),
        "as": Str(),
        "config": AnyOf(),  # any JSON (preserve-unknown-fields without a type)
        "task": AnyOf(),  # refused by _uses_not_task when set
        "retry": Obj({"errorThreshold": Int(), "timeout": Str()}),
        "vars": _VARS,
        "if": Str(),
        "continueOnError": Bool(),
    },
    after=_uses_not_task,
)
_PROMOTION_SPEC = Obj(
    {
        "stage": Str(min_len=1, rule=dns_subdomain),
        "freight": Str(min_len=1, rule=dns_subdomain),
        "origin": Obj({"kind": Str(enum=("Warehouse",)), "name": Str()}, required=("kind", "name")),
        "target": Str(rule=dns_subdomain),
        "vars": _VARS,
        "steps": List(_STEP, min_items=1),
    },
    required=("stage", "steps"),
    after=_freight_or_origin,
)
_PROMOTION_STATUS = Obj(
    {
        "phase": Str(),
        "currentStep": Int(),
        "currentStepAttempt": Int(),
        "state": AnyOf("object"),
        "message": Str(),
        "lastHandledRefresh": Str(),
        "finishedAt": Str(),
        "healthChecks": _OBJECTS,
        "stepExecutionMetadata": _OBJECTS,
    },
    unknown="keep",
)

# -- Secret

_SECRET = Obj(
    {
        "apiVersion": Str(),
        "kind": Str(),
        "metadata": _METADATA,
        "data": Map(NullAsEmpty(Base64()), key=config_key),
        "stringData": Map(NullAsEmpty(Str(sensitive=True)), key=config_key),
        "type": Str(),
        "immutable": Bool(),
    },
    required=("metadata",),
)


def _kargo(spec: Spec, status: Spec, *, spec_required: bool) -> Obj:
    return Obj(
        {
            "apiVersion": Str(),
            "kind": Str(),
            "metadata": _METADATA,
            "spec": spec,
            "status": status,
        },
        required=("metadata", "spec") if spec_required else ("metadata",),
    )


_SCHEMAS: dict[str, Obj] = {
    "Secret": _SECRET,
    "ProjectConfig": _kargo(_PROJECT_CONFIG_SPEC, _CONFIG_STATUS, spec_required=False),
    "ClusterConfig": _kargo(_CLUSTER_CONFIG_SPEC, _CONFIG_STATUS, spec_required=False),
    "Warehouse": _kargo(_WAREHOUSE_SPEC, _WAREHOUSE_STATUS, spec_required=True),
    "Promotion": _kargo(_PROMOTION_SPEC, _PROMOTION_STATUS, spec_required=True),
}


# ---------------------------------------------------------------------------- one object


def validate_object(body: Any, where: str, default_namespace: str | None = None) -> Resource:
    """Check one parsed object (the same checks as ``parse_documents``) and normalize it."""
    ctx = Ctx(where, None, ())
    return validate(_plain(body, ctx), ctx, default_namespace, None)


def _plain(value: Any, ctx: Ctx) -> Any:
    """A JSON-compatible deep copy, or a ManifestError naming the offending path."""

    def copy(item: Any, path: Path) -> Any:
        if len(path) > MAX_DEPTH:
            ctx.fail(path[:DEPTH_SHOWN], f"nested more than {MAX_DEPTH} levels deep")
        if item is None or isinstance(item, bool):
            return item
        if isinstance(item, str):
            if SURROGATE.search(item):
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
                    ctx.fail(path, f"object keys must be strings, got {type_name(key)}")
                if SURROGATE.search(key):
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
    if not isinstance(kind, str) or kind not in KIND_TABLE:
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


def validate(
    data: Any,
    ctx: Ctx,
    default_namespace: str | None,
    soft: tuple[Path, str] | None,
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
    if kind not in KIND_TABLE:
        hint = KINDS.get(kind.lower())
        why = f" (kinds are case-sensitive: did you mean {hint}?)" if hint else ""
        ctx.fail(
            ("kind",),
            f"unknown kind {quote(kind)}{why}; accepted: {', '.join(KIND_TABLE)}",
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


def _scope(kind: str, out: dict[str, Any], ctx: Ctx, default_namespace: str | None) -> str:
    """Apply the namespace rules of ``kind``; return the namespace ("" if cluster-scoped)."""
    meta: dict[str, Any] = out["metadata"]
    name = meta["name"]
    namespace = meta.get("namespace", "")
    here = ("metadata", "namespace")
    if not NAMESPACED[kind]:
        if meta.pop("namespace", ""):
            ctx.warn(here, f"ignored: {kind} is cluster-scoped")
        if kind == "ClusterConfig" and name != "cluster":
            wrong = f'ClusterConfig must be named "cluster", got {quote(name)}'
            ctx.fail(("metadata", "name"), wrong)
        return ""
    if not namespace:
        if default_namespace is None:
            ctx.fail(here, f"required field is missing ({kind} is namespaced; no default given)")
        namespace = default_namespace
        rebuilt = {"name": name, "namespace": namespace}
        rebuilt.update((k, v) for k, v in meta.items() if k not in rebuilt)
        out["metadata"] = rebuilt
    problem = dns_label(namespace)
    if problem:
        ctx.fail(here, problem)
    if kind == "ProjectConfig" and name != namespace:
        ctx.fail(
            ("metadata", "name"),
            f"a ProjectConfig must be named like its namespace (the Project) {quote(namespace)}, "
            f"got {quote(name)}",
        )
    return str(namespace)


def _fold_string_data(out: dict[str, Any], ctx: Ctx) -> None:
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
    if total > MAX_SECRET_BYTES:
        ctx.fail(("data",), f"total size must be at most {MAX_SECRET_BYTES} bytes, got {total}")
