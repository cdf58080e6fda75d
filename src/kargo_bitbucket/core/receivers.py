"""Receiver URLs and publication: Kargo-exact paths, routes, and each owner's status (SPEC §3)."""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kargo_bitbucket.core.objects import ConfigView, sequence

CLUSTER_CONFIG_NAME = "cluster"
OUR_PATH = re.compile(r"/bitbucket/[0-9a-f]{64}$")
SECRET_KEY = "secret"
FAILED_REASON = "SyncWebhookReceiversFailed"
SYNCED_REASON = "Synced"
_PATH_AS_IS = frozenset(string.ascii_letters + string.digits + "-._~$&+,/:;=@")
"""What Go's ``url.URL`` writes into a path as it is; Kargo's published URL escapes the rest,
and Bitbucket would then post to a path that is not the one we route."""
CONDITION_MESSAGE_LIMIT = 32_768
"""Bytes a condition's message may hold (the CRDs' ``maxLength``): the API refuses the whole
status past it, and no receiver's URL would be published."""


class BaseURLError(ValueError):
    """The configured base URL cannot yield reachable receiver URLs."""


@dataclass(frozen=True, slots=True)
class BaseURL:
    """A validated base URL: receiver URLs are ``origin + path + /bitbucket/<hash>``."""

    origin: str
    path: str

    @classmethod
    def parse(cls, text: str) -> BaseURL:
        """Validate ``text``; reject what Kargo would silently turn into a dead URL.

        Dot segments are resolved as Kargo's ``url.JoinPath`` (Go's ``path.Join``) does.
        """
        text = text.strip()
        if "%" in text:
            raise BaseURLError(f"base URL {text!r} must not contain percent-escapes")
        if any(not char.isascii() or not char.isprintable() or char == " " for char in text):
            raise BaseURLError(
                f"base URL {text!r} must be ASCII without spaces or control characters"
            )
        try:
            parts = urlsplit(text)
            host = parts.hostname
        except ValueError as error:  # "Invalid IPv6 URL"
            raise BaseURLError(f"base URL {text!r}: {error}") from None
        if parts.scheme not in ("http", "https") or not host:
            raise BaseURLError(f"base URL {text!r} needs an http:// or https:// scheme and a host")
        try:
            parts.port  # noqa: B018 (urlsplit checks the port only when asked)
        except ValueError:
            raise BaseURLError(f"base URL {text!r} has an invalid port") from None
        if parts.username is not None:
            raise BaseURLError("the base URL must not contain credentials (it is published)")
        if parts.query or "?" in text:
            raise BaseURLError(f"base URL {text!r} must not have a query")
        if parts.fragment or "#" in text:
            raise BaseURLError(f"base URL {text!r} must not have a fragment")
        if escaped := sorted(set(parts.path) - _PATH_AS_IS):
            raise BaseURLError(
                f"base URL {text!r}: Kargo percent-encodes {''.join(escaped)!r} in the URLs it "
                "publishes; use letters, digits and -._~$&+,:;=@ in the path"
            )
        if parts.path.startswith("//"):  # Kargo keeps it, and a client reads a host there
            raise BaseURLError(f"base URL {text!r}: its path must not begin with //")
        segments: list[str] = []
        for segment in parts.path.split("/"):
            if segment == "..":
                segments = segments[:-1]
            elif segment not in ("", "."):
                segments.append(segment)
        path = "".join("/" + s for s in segments)
        return cls(origin=f"{parts.scheme}://{parts.netloc}", path=path)

    def receiver_path(self, project: str, receiver: str, secret: bytes) -> str:
        """The path Kargo derives: ``<base path>/bitbucket/<sha256(project+name+secret)>``."""
        digest = hashlib.sha256(project.encode() + receiver.encode() + secret).hexdigest()
        return f"{self.path}/bitbucket/{digest}"

    def url(self, path: str) -> str:
        """The full URL for a receiver path."""
        return self.origin + path


@dataclass(frozen=True, slots=True)
class Owner:
    """The ProjectConfig (namespace = project) or the ClusterConfig (namespace "") of receivers."""

    kind: str
    namespace: str
    name: str
    scope: str | None = field(init=False, compare=False, repr=False)
    """Namespace whose objects this owner's receivers refresh; ``None`` means all."""
    label: str = field(init=False, compare=False, repr=False)
    """How people name the owner: its project, or ``cluster``."""

    def __post_init__(self) -> None:
        project = self.kind == "ProjectConfig"
        object.__setattr__(self, "scope", self.namespace if project else None)
        object.__setattr__(self, "label", self.namespace if project else CLUSTER_CONFIG_NAME)

    @property
    def honoured_name(self) -> str:
        """The name Kargo reads a config by, which is the one people call it by (``label``):
        its namespace's for a ProjectConfig, ``cluster`` for the ClusterConfig."""
        return self.label

    @property
    def honoured(self) -> bool:
        """Whether Kargo reads this object (it is named ``honoured_name``); any other is
        ignored, as Kargo ignores it."""
        return self.name == self.honoured_name

    def unpublished(self, problems: Iterable[str]) -> str:
        """What to say of an owner that left receivers out, and why (serve's log, lint)."""
        return f"receivers of {self.kind} {self.label} not all published: {'; '.join(problems)}"

    @property
    def ignored(self) -> str:
        """What to say of an owner that is not ``honoured`` (serve's log, lint)."""
        where = f"{self.namespace}/" if self.namespace else ""
        return (
            f"{self.kind} {where}{self.name} is ignored, as Kargo ignores it: only the one "
            f"named {self.honoured_name!r} is read"
        )


@dataclass(frozen=True, slots=True)
class Route:
    """A routable receiver: what an incoming request on ``path`` is checked and scoped with."""

    owner: Owner
    name: str
    path: str
    secret: bytes = field(repr=False)
    secret_ref: str
    """``namespace/name`` of the Secret, to name it in messages (never its data)."""
    label: str = field(init=False, compare=False, repr=False)
    """``namespace/name`` of the receiver, ``cluster/name`` for the ClusterConfig's."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", f"{self.owner.label}/{self.name}")


@dataclass(slots=True)
class OwnerStatus:
    """What to publish in one owner's ``status``: receivers and the Ready condition."""

    receivers: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    spec_order: list[str] = field(default_factory=list)
    """Names of all the owner's receivers, Bitbucket or not, in spec order."""
    others: set[str] = field(default_factory=set)
    """Names of its receivers of other types: what another controller published for them stays."""

    def render(self, previous: Mapping[str, Any], generation: int, now: str) -> dict[str, Any]:
        """The status fields to publish; unchanged conditions keep their transition time."""
        kept = {
            entry["name"]: entry
            for entry in sequence(previous.get("webhookReceivers"))
            if isinstance(entry, Mapping)
            and entry.get("name") in self.others
            and not OUR_PATH.search(str(entry.get("path") or ""))  # was Bitbucket until now
        }
        ours = iter(self.receivers)  # in spec order too, and names may repeat
        mine = next(ours, None)
        receivers: list[Mapping[str, Any]] = []
        for name in self.spec_order:
            if mine is not None and mine["name"] == name:
                receivers.append(mine)
                mine = next(ours, None)
            elif name in kept:
                receivers.append(kept.pop(name))
        before = {
            c.get("type"): c for c in sequence(previous.get("conditions")) if isinstance(c, Mapping)
        }
        conditions = []
        for condition in self.conditions():
            # As Kubernetes' SetStatusCondition: the time moves only when the status does.
            old = before.get(condition["type"]) or {}
            same = old.get("status") == condition["status"]
            stamp = old.get("lastTransitionTime") if same else None
            conditions.append(
                {**condition, "observedGeneration": generation, "lastTransitionTime": stamp or now}
            )
        return {
            "webhookReceivers": receivers,
            "conditions": conditions,
            "observedGeneration": generation,
        }

    def conditions(self) -> list[dict[str, str]]:
        """Kubernetes-style conditions (``lastTransitionTime`` is added by the writer)."""
        if self.problems:
            return [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": FAILED_REASON,
                    "message": _listed(self.problems, CONDITION_MESSAGE_LIMIT),
                },
                {
                    "type": "Reconciling",
                    "status": "False",
                    "reason": FAILED_REASON,
                    "message": "webhook receivers reconciled with errors",
                },
            ]
        count = len(self.receivers)
        return [
            {
                "type": "Ready",
                "status": "True",
                "reason": SYNCED_REASON,
                "message": f"{count} webhook receiver(s) published",
            },
            {
                "type": "Reconciling",
                "status": "False",
                "reason": SYNCED_REASON,
                "message": "webhook receivers reconciled",
            },
        ]


@dataclass(slots=True)
class Resolution:
    """Every routable path, and the status each owner should show."""

    routes: dict[str, Route]
    statuses: dict[Owner, OwnerStatus]
    ignored: list[Owner] = field(default_factory=list)
    """Configs Kargo ignores (``Owner.honoured``), and so do we: their receivers route nowhere."""


SecretLookup = Callable[[str, str], Mapping[str, bytes] | None]
"""(namespace, name) -> decoded Secret data, or None when the Secret does not exist."""


def owner_of(config: Mapping[str, Any]) -> Owner:
    """The owner identity of a ProjectConfig or ClusterConfig body."""
    view = ConfigView(config)
    kind = view.kind
    meta = view.meta
    namespace = meta.namespace if kind == "ProjectConfig" else ""
    return Owner(kind=kind, namespace=namespace, name=meta.name)


def secret_namespace(owner: Owner, system_namespace: str) -> str:
    """Where the Secrets an owner's receivers name live, as Kargo looks them up: a
    ProjectConfig's in its project namespace, the ClusterConfig's in the system namespace."""
    return owner.namespace if owner.kind == "ProjectConfig" else system_namespace


def referenced_secrets(
    configs: Iterable[Mapping[str, Any]], system_namespace: str
) -> set[tuple[str, str]]:
    """(namespace, name) of every Secret a Bitbucket receiver of an honoured config names."""
    wanted = set()
    for config in configs:
        owner = owner_of(config)
        if not owner.honoured:
            continue
        namespace = secret_namespace(owner, system_namespace)
        for receiver in ConfigView(config).receivers:
            if receiver.is_bitbucket and receiver.secret_name:
                wanted.add((namespace, receiver.secret_name))
    return wanted


def published(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(owner label, receiver name, URL) of the Bitbucket receivers in a config's status.

    Entries another controller published for receivers of other types are left out.
    """
    owner = owner_of(config)
    if not owner.honoured:
        return []
    view = ConfigView(config)
    bitbucket = {receiver.name for receiver in view.receivers if receiver.is_bitbucket}
    return [
        (owner.label, str(entry.get("name")), str(entry.get("url")))
        for entry in view.published
        if str(entry.get("name")) in bitbucket
    ]


def not_ready(config: Mapping[str, Any]) -> str | None:
    """The message of a config's ``Ready`` condition when it is ``False`` (a receiver left
    unpublished: its Secret or key missing, a path collision), else None."""
    if not owner_of(config).honoured:
        return None
    for condition in sequence(ConfigView(config).status.get("conditions")):
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            if condition.get("status") == "False":
                return str(condition.get("message") or condition.get("reason") or "not ready")
            return None
    return None


def publications(
    configs: Iterable[Mapping[str, Any]],
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """What ``urls`` shows of ``configs``: (owner label, receiver name, URL) of every published
    Bitbucket receiver, and (owner label, message) of each config that left one out."""
    found: list[tuple[str, str, str]] = []
    left_out: list[tuple[str, str]] = []
    for config in configs:
        found += published(config)
        if (problem := not_ready(config) or _never_published(config)) is not None:
            left_out.append((owner_of(config).label, problem))
    return found, left_out


def _never_published(config: Mapping[str, Any]) -> str | None:
    """Why a config with Bitbucket receivers has no status at all: applied while no
    ``serve`` ran, so its receivers have no URL yet (rather than leave them unmentioned)."""
    view = ConfigView(config)
    if not owner_of(config).honoured or not any(r.is_bitbucket for r in view.receivers):
        return None
    if any(True for _ in view.published) or any(
        isinstance(c, Mapping) and c.get("type") == "Ready"
        for c in sequence(view.status.get("conditions"))
    ):
        return None
    return "no status yet: nothing has published its receivers (`kargo-bitbucket serve` does)"


def resolve(
    configs: Iterable[Mapping[str, Any]],
    secrets: SecretLookup,
    base: BaseURL,
    system_namespace: str,
    unreadable: Callable[[str, str], str | None] = lambda namespace, name: None,
) -> Resolution:
    """Derive routes and statuses from all configs and the current Secrets.

    Configs Kargo would ignore are ignored (``Owner.honoured``). Receivers are taken
    in spec order; one whose Secret or key is missing is left
    out with a reason (``unreadable`` says why a Secret we could not read is absent);
    paths claimed by more than one receiver route nowhere.
    """
    statuses: dict[Owner, OwnerStatus] = {}
    in_spec_order: list[Route] = []
    ignored: list[Owner] = []
    for config in configs:
        owner = owner_of(config)
        if not owner.honoured:
            ignored.append(owner)
            continue
        status = statuses.setdefault(owner, OwnerStatus())
        secrets_in = secret_namespace(owner, system_namespace)
        project = owner.namespace if owner.kind == "ProjectConfig" else ""
        for receiver in ConfigView(config).receivers:
            name = receiver.name
            status.spec_order.append(name)
            if not receiver.is_bitbucket:
                status.others.add(name)
                continue
            secret_name = receiver.secret_name
            data = secrets(secrets_in, secret_name)
            where = f"receiver {name!r}: Secret {secrets_in}/{secret_name}"
            if data is None:
                why = unreadable(secrets_in, secret_name)
                status.problems.append(
                    f"{where} cannot be read ({why})" if why else f"{where} not found"
                )
                continue
            secret = data.get(SECRET_KEY)
            if secret is None:
                status.problems.append(f"{where} has no key {SECRET_KEY!r}")
                continue
            path = base.receiver_path(project, name, secret)
            in_spec_order.append(
                Route(
                    owner=owner,
                    name=name,
                    path=path,
                    secret=secret,
                    secret_ref=f"{secrets_in}/{secret_name}",
                )
            )
    claims: dict[str, list[Route]] = {}
    for route in in_spec_order:
        claims.setdefault(route.path, []).append(route)
    routes: dict[str, Route] = {}
    for path, claimants in claims.items():
        if len(claimants) == 1:
            routes[path] = claimants[0]
            continue
        names = ", ".join(f"{c.owner.label}/{c.name}" for c in claimants)
        for claimant in claimants:
            statuses[claimant.owner].problems.append(
                f"receiver {claimant.name!r}: path {path} is also derived by {names}; "
                "none of them is routable"
            )
    for route in in_spec_order:
        if routes.get(route.path) is route:
            statuses[route.owner].receivers.append(
                {"name": route.name, "path": route.path, "url": base.url(route.path)}
            )
    return Resolution(routes=routes, statuses=statuses, ignored=ignored)


def _listed(problems: Sequence[str], limit: int) -> str:
    """``problems`` joined by "; ", as many whole ones as fit in ``limit`` UTF-8 bytes with
    how many more there are (the first is cut if even it does not fit)."""
    joined = "; ".join(problems)
    if len(joined.encode()) <= limit:
        return joined
    room = limit - len(f"; and {len(problems)} more".encode())
    shown: list[str] = []
    used = 0
    for problem in problems:
        size = len(problem.encode()) + (2 if shown else 0)
        if used + size > room:
            break
        shown.append(problem)
        used += size
    if not shown:
        shown = [problems[0].encode()[:room].decode(errors="ignore")]
    return "; ".join(shown) + f"; and {len(problems) - len(shown)} more"
