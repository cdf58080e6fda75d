"""Which Bitbucket webhooks should exist, how the existing ones differ, and what a sync does.

Pure planning for ``hooks check`` and ``hooks sync`` (issue 11): the receivers and the
objects give, per repository (or per Cloud workspace / Data Center project), the webhook
each receiver needs; comparing with what Bitbucket lists gives one finding each.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import SplitResult, urlsplit

from kargo_bitbucket.core.identity import repository_identity

CLOUD = "bitbucket.org"
CLOUD_EVENTS = ("repo:push", "pullrequest:fulfilled", "pullrequest:rejected")
SERVER_EVENTS = ("repo:refs_changed", "pr:merged", "pr:declined")
MIRROR_EVENT = "mirror:repo_synchronized"
MARKER = re.compile(r"^kargo [^/\s]+/[^/\s]+$")
"""Name (Data Center) or description (Cloud) of the hooks this tool created; no other is touched."""

REPOSITORY, WORKSPACE = "repository", "workspace"
"""Scopes: one hook per repository, or one per Cloud workspace / Data Center project."""

# Finding states, in the order a line names them.
OK = "ok"
MISSING = "missing"
WRONG_URL = "wrong URL"
MISSING_EVENTS = "missing events"
INACTIVE = "inactive"
NO_SECRET = "secret not set"
NO_ACCESS = "no access"
NOT_SUBSCRIBED = "not subscribed"
DUPLICATE = "duplicate"
UNREACHABLE = "unreachable URL"

# Actions of a sync.
NONE, CREATE, UPDATE, DELETE, MANUAL = "none", "create", "update", "delete", "manual"


@dataclass(frozen=True, slots=True, order=True)
class Place:
    """Where a webhook lives: a repository, or (``slug`` empty) a workspace or project.

    ``server`` is ``bitbucket.org`` or a Data Center base URL with its context path;
    ``owner`` the Cloud workspace (lower case) or the Data Center project key (upper case).
    """

    server: str
    owner: str
    slug: str = ""

    @property
    def cloud(self) -> bool:
        """Whether this is Bitbucket Cloud."""
        return self.server == CLOUD

    @property
    def container(self) -> Place:
        """The workspace or project holding this repository."""
        return Place(self.server, self.owner)

    @property
    def label(self) -> str:
        """How a person names it: ``bitbucket.org/ws/repo``, ``https://host/ctx PROJ/repo``."""
        path = f"{self.owner}/{self.slug}" if self.slug else self.owner
        return f"{CLOUD}/{path}" if self.cloud else f"{self.server} {path}"


@dataclass(frozen=True, slots=True)
class Receiver:
    """A published receiver: its URL and secret, and the namespace its objects live in."""

    owner: str
    """Its project, or ``cluster`` for the ClusterConfig's."""
    name: str
    url: str
    secret: bytes
    scope: str | None
    """Namespace of the objects it refreshes; ``None`` for all (a ClusterConfig receiver)."""

    @property
    def marker(self) -> str:
        """The name/description its hooks carry: ``kargo <project>/<receiver>``."""
        return f"kargo {self.owner}/{self.name}"


@dataclass(frozen=True, slots=True)
class Hook:
    """A webhook as Bitbucket lists it (``id`` empty for one still to create)."""

    marker: str
    url: str
    events: frozenset[str]
    active: bool
    secret_set: bool
    id: str = ""


@dataclass(frozen=True, slots=True)
class Wanted:
    """The hook one receiver needs at one place, and the objects that need it."""

    place: Place
    receiver: Receiver
    events: tuple[str, ...]
    sources: tuple[str, ...]
    """``Warehouse ns/name`` or ``Promotion ns/name`` of each object served."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of ``check``: a place, the receiver, what is off, and what sync does."""

    place: Place
    marker: str
    problems: tuple[str, ...]
    action: str
    hook_id: str = ""
    detail: str = ""
    wanted: Wanted | None = None

    @property
    def status(self) -> str:
        """``ok`` or the problems, comma-separated."""
        return ", ".join(self.problems) or OK


@dataclass(slots=True)
class Plan:
    """The hooks to have, and the repositories none could be placed for (not Bitbucket)."""

    wanted: list[Wanted] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def repository_place(url: str, servers: Iterable[str] = ()) -> Place | None:
    """The Bitbucket repository a Git URL names, or ``None`` when it is not Bitbucket's.

    Cloud: ``bitbucket.org/<workspace>/<slug>`` in any spelling the identity accepts.
    Data Center: HTTP(S) ``<base>/scm/<KEY>/<slug>.git`` (the base keeps its context
    path and port), ``ssh://git@host:7999/<key>/<slug>.git`` with a port, or an SSH
    form on a host in ``servers`` (hosts named in the credentials); SSH has no context
    path, so its base is ``https://<host>``.
    """
    identity = repository_identity(url)
    host, _, path = identity.partition("/")
    segments = path.split("/")
    if not all(segments):
        return None
    if host == CLOUD:
        return Place(CLOUD, segments[0], segments[1]) if len(segments) == 2 else None
    parts = urlsplit(url.strip().lower())
    if parts.scheme in ("http", "https"):
        if len(segments) < 3 or segments[-3] != "scm":
            return None
        context = "".join("/" + s for s in segments[:-3])
        return Place(_origin(parts) + context, segments[-2].upper(), segments[-1])
    ssh = parts.scheme == "ssh" or "://" not in url
    explicit_port = parts.scheme == "ssh" and _port(parts) is not None
    if ssh and len(segments) == 2 and (explicit_port or host in set(servers)):
        return Place(f"https://{host}", segments[0].upper(), segments[1])
    return None


def pull_request_place(url: str) -> Place | None:
    """The repository of a Cloud or Data Center pull request URL, or ``None``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    segments = [s for s in parts.path.lower().split("/") if s]
    host = parts.hostname.lower()
    if host == CLOUD:
        if len(segments) >= 3 and segments[2] in ("pull-requests", "pullrequests"):
            return Place(CLOUD, segments[0], segments[1])
        return None
    for i in range(len(segments) - 4):
        if segments[i] == "projects" and segments[i + 2] == "repos":
            if segments[i + 4] != "pull-requests":
                return None
            context = "".join("/" + s for s in segments[:i])
            return Place(_origin(parts) + context, segments[i + 1].upper(), segments[i + 3])
    return None


def _port(parts: SplitResult) -> int | None:
    """The URL's port; ``None`` when absent or not a number."""
    try:
        return parts.port
    except ValueError:
        return None


def _origin(parts: SplitResult) -> str:
    """``scheme://host[:port]`` in lower case, the default port left out."""
    port = _port(parts)
    default = {"http": 80, "https": 443}[parts.scheme]
    host = str(parts.hostname).lower()
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def plan(
    receivers: Sequence[Receiver],
    warehouses: Iterable[tuple[str, str, str]],
    pull_requests: Iterable[tuple[str, str, str]],
    *,
    scope: str = REPOSITORY,
    mirrors: bool = False,
    servers: Iterable[str] = (),
) -> Plan:
    """The hook every receiver needs, per place, from the objects in its scope.

    ``warehouses`` and ``pull_requests`` are ``(namespace, name, URL)``: a Warehouse's
    subscribed repository URL, a Running Promotion's awaited PR URL. ``mirrors`` adds
    ``mirror:repo_synchronized`` to Data Center hooks (for repositories read through a
    smart mirror, whose pushes arrive as that event).
    """
    known = frozenset(servers)
    result = Plan()
    located: list[tuple[str, str, Place]] = []
    for namespace, name, url in warehouses:
        place = repository_place(url, known)
        if place is None:
            result.skipped.append(f"Warehouse {namespace}/{name}: {url}")
        else:
            located.append((namespace, f"Warehouse {namespace}/{name}", place))
    for namespace, name, url in pull_requests:
        place = pull_request_place(url)
        if place is None:
            result.skipped.append(f"Promotion {namespace}/{name}: {url}")
        else:
            located.append((namespace, f"Promotion {namespace}/{name}", place))
    for receiver in receivers:
        sources: dict[Place, dict[str, None]] = {}
        for namespace, source, place in located:
            if receiver.scope is None or receiver.scope == namespace:
                where = place.container if scope == WORKSPACE else place
                sources.setdefault(where, {})[source] = None
        for place in sorted(sources):
            events: tuple[str, ...] = CLOUD_EVENTS if place.cloud else SERVER_EVENTS
            if mirrors and not place.cloud:
                events = (*events, MIRROR_EVENT)
            result.wanted.append(Wanted(place, receiver, events, tuple(sources[place])))
    return result


def desired_hook(wanted: Wanted) -> Hook:
    """The hook a sync creates or updates to for ``wanted``."""
    return Hook(
        marker=wanted.receiver.marker,
        url=wanted.receiver.url,
        events=frozenset(wanted.events),
        active=True,
        secret_set=True,
    )


def compare(
    wanted: Sequence[Wanted],
    existing: Mapping[Place, Sequence[Hook] | str],
    *,
    prune: bool = False,
    local_servers: Collection[str] = (),
) -> list[Finding]:
    """One finding per wanted hook; with ``prune``, also our hooks nothing wants any more.

    A hook whose receiver URL the place's Bitbucket cannot reach (``unreachable``; servers
    in ``local_servers`` run on this machine) is reported and never created or updated.

    ``existing`` maps each place looked at to its hooks, or to why they could not be
    listed (401/403/404...). A hook with our marker is ours to update or delete; one
    without it but with the receiver's URL is the user's: its problems are reported for
    them to fix (``manual``), and none is created beside it.
    """
    findings: list[Finding] = []
    claimed: set[tuple[Place, str]] = set()
    for want in wanted:
        hooks = existing.get(want.place, ())
        if isinstance(hooks, str):
            findings.append(
                Finding(
                    want.place,
                    want.receiver.marker,
                    (NO_ACCESS,),
                    MANUAL,
                    detail=hooks,
                    wanted=want,
                )
            )
            continue
        finding = _judge(want, hooks)
        here = want.place.server in local_servers
        why = unreachable(want.receiver.url, want.place, from_this_machine=here)
        if why:  # a hook there could never deliver: nothing to create or update it to
            problems = (UNREACHABLE, *finding.problems)
            detail = f"{why}; {finding.detail}" if finding.detail else why
            finding = replace(finding, problems=problems, action=MANUAL, detail=detail)
        if finding.hook_id:
            claimed.add((want.place, finding.hook_id))
        findings.append(finding)
    if prune:
        for place, hooks in sorted(existing.items()):
            if isinstance(hooks, str):
                continue
            for hook in hooks:
                if (place, hook.id) in claimed or not MARKER.match(hook.marker):
                    continue
                served = any(w.place == place and w.receiver.marker == hook.marker for w in wanted)
                problem = DUPLICATE if served else NOT_SUBSCRIBED
                findings.append(Finding(place, hook.marker, (problem,), DELETE, hook.id, hook.url))
    return findings


def unreachable(url: str, place: Place, *, from_this_machine: bool = False) -> str:
    """Why Bitbucket at ``place`` cannot deliver to the receiver ``url``; "" when it may.

    Only addresses are judged (a host name is its DNS's business): nothing can send to an
    unspecified address (``0.0.0.0``); a Bitbucket ``from_this_machine`` (its API answers on
    a loopback address: a local instance, a test double) reaches any other; Bitbucket Cloud
    reaches only public ones, and a Data Center server any but loopback ones.
    """
    if nowhere := unaddressable(url):
        return nowhere
    if from_this_machine:
        return ""
    host = (urlsplit(url).hostname or "").lower()
    address = _address(host)
    if place.cloud and (is_local(host) or (address is not None and not address.is_global)):
        return f"Bitbucket Cloud cannot reach {host}, not a public address: {_PUBLISH}"
    if is_local(host):
        return f"{place.server} cannot reach {host}, this machine's own address: {_PUBLISH}"
    return ""


_PUBLISH = "publish the receivers at the address Bitbucket reaches (serve --base-url)"


def unaddressable(url: str) -> str:
    """Why nothing can send to ``url`` (its host is ``0.0.0.0`` or ``::``); "" otherwise."""
    host = (urlsplit(url).hostname or "").lower()
    address = _address(host)
    if address is not None and address.is_unspecified:
        return f"{host} is not an address anyone can send to: {_PUBLISH}"
    return ""


def is_local(host: str) -> bool:
    """``localhost`` (and its subdomains) or a loopback address."""
    name = host.lower().rstrip(".")
    address = _address(name)
    local_name = name == "localhost" or name.endswith(".localhost")
    return local_name or (address is not None and address.is_loopback)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally, as a resolver reads it: ``127.1`` and
    ``2130706433`` are 127.0.0.1, ``::ffff:127.0.0.1`` is that IPv4 address."""
    host = host.rstrip(".")
    if _NUMERIC.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_NUMERIC = re.compile(r"[0-9.]+")


def _judge(want: Wanted, hooks: Sequence[Hook]) -> Finding:
    """The finding for one wanted hook among the place's hooks."""
    marker, url = want.receiver.marker, want.receiver.url
    hook = next((h for h in hooks if h.marker == marker), None)
    ours = hook is not None
    if hook is None:
        # A user's hook to our URL stands in for ours; another receiver's marked hook never.
        hook = next((h for h in hooks if h.url == url and not MARKER.match(h.marker)), None)
    if hook is None:
        return Finding(want.place, marker, (MISSING,), CREATE, wanted=want)
    problems = []
    if hook.url != url:
        problems.append(WRONG_URL)
    missing = [e for e in want.events if e not in hook.events]
    if missing:
        problems.append(MISSING_EVENTS)
    if not hook.active:
        problems.append(INACTIVE)
    if not hook.secret_set:
        problems.append(NO_SECRET)
    detail = f"lacks {', '.join(missing)}" if missing else ""
    if not ours:
        detail = f"hook {hook.id} was not created by kargo-bitbucket"
        detail += ": fix it by hand, or delete it for sync to create ours" if problems else ""
    action = NONE if not problems else UPDATE if ours else MANUAL
    return Finding(want.place, marker, tuple(problems), action, hook.id, detail, want)


def prune_places(
    wanted: Sequence[Wanted], repositories: Mapping[Place, Sequence[str]]
) -> list[Place]:
    """Repositories to look at for ``--prune``: the others in each workspace or project.

    ``repositories`` lists the slugs of each container the wanted hooks live in.
    """
    have = {w.place for w in wanted}
    return sorted(
        place
        for container, slugs in repositories.items()
        for place in (Place(container.server, container.owner, slug) for slug in slugs)
        if place not in have
    )
