"""What ``hooks`` needs from the store: receivers at their URLs, and the objects they serve.

Read once from the embedded state file or, with ``--kubernetes``, from the cluster (the
Kargo kinds, the Secrets the receivers name, and the Secret holding the Bitbucket
credentials).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kargo_bitbucket.core.receivers import (
    BaseURL,
    BaseURLError,
    published,
    referenced_secrets,
)
from kargo_bitbucket.core.webhooks import Receiver
from kargo_bitbucket.credentials import SECRET_KEY, CredentialsError
from kargo_bitbucket.store.index import Indexes, decode_secret_data

if TYPE_CHECKING:
    from lightkube import AsyncClient

PLACEHOLDER = BaseURL.parse("http://hooks.invalid")
"""Routes are resolved against this; each receiver's real base is applied afterwards."""
_PUBLISHED_PATH = re.compile(r"/bitbucket/[0-9a-f]{64}$")


@dataclass(slots=True)
class Inventory:
    """What the store says: receivers with URLs, and the objects their hooks serve."""

    receivers: list[Receiver] = field(default_factory=list)
    warehouses: list[tuple[str, str, str]] = field(default_factory=list)
    pull_requests: list[tuple[str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def inventory(indexes: Indexes, base: BaseURL | None) -> Inventory:
    """Receivers at their URL (``base``, else the one their status publishes) and objects.

    The path is recomputed from the current secret, so a rotated secret gives the new
    URL even before the server has republished it.
    """
    found = Inventory()
    bases: dict[tuple[str, str], BaseURL] = {}
    for config in indexes.configs():
        for owner, name, url in published(config):
            try:
                bases[(owner, name)] = BaseURL.parse(_PUBLISHED_PATH.sub("", url))
            except BaseURLError:
                continue
    resolution = indexes.resolution
    for holder, status in resolution.statuses.items():
        found.problems += [f"receiver problem in {holder.label}: {p}" for p in status.problems]
    for route in resolution.routes.values():
        where = base or bases.get((route.owner.label, route.name))
        if where is None:
            found.problems.append(
                f"receiver {route.label}: no published URL yet; pass --base-url "
                "(the server's public base URL) or start `serve` first"
            )
            continue
        found.receivers.append(
            Receiver(
                owner=route.owner.label,
                name=route.name,
                url=where.url(where.path + route.path),
                secret=route.secret,
                scope=route.owner.scope,
            )
        )
    for warehouse in indexes.warehouses(None):
        for subscription in warehouse.subscriptions:
            found.warehouses.append((warehouse.namespace, warehouse.name, subscription.repo_url))
    found.pull_requests = indexes.awaited_pull_requests()
    return found


def load_state(path: Any, system_namespace: str) -> Indexes:
    """Indexes from the embedded state file."""
    from kargo_bitbucket.store.state_file import StateFile, load_indexes

    state = StateFile(path, create=False)
    try:
        return load_indexes(state, Indexes(PLACEHOLDER, system_namespace))
    finally:
        state.close()


async def load_cluster(
    connect: Callable[[], AsyncClient],
    system_namespace: str,
    credentials_secret: tuple[str, str] | None,
) -> tuple[Indexes, str | None]:
    """Indexes (the Secrets receivers name included) and the credentials document, if named.

    ``connect`` is called twice: listing the kinds closes its client.
    """
    from lightkube import ApiError
    from lightkube.resources.core_v1 import Secret

    from kargo_bitbucket.store.kubernetes import load_indexes
    from kargo_bitbucket.store.kubernetes.reflector import plain

    indexes = await load_indexes(connect(), Indexes(PLACEHOLDER, system_namespace))
    client = connect()
    try:
        for namespace, name in referenced_secrets(indexes.configs(), indexes.system_namespace):
            try:
                indexes.put_secret(plain(await client.get(Secret, name=name, namespace=namespace)))
            except ApiError as error:
                code = error.status.code
                if code != 404:
                    # A 401/403 is this command's credentials (a user who may list Kargo's
                    # objects but not get Secrets), not serve's, which may read it.
                    mine = ": the credentials this command runs with may not get it"
                    why = f"{code} from the API{mine if code in (401, 403) else ''}"
                    indexes.secret_unreadable(namespace, name, why)
        document = None
        if credentials_secret is not None:
            namespace, name = credentials_secret
            try:
                secret = plain(await client.get(Secret, name=name, namespace=namespace))
            except ApiError as error:
                if error.status.code != 404:
                    raise
                raise CredentialsError(
                    f"Secret {namespace}/{name} not found: create it with the Bitbucket "
                    "credentials (key credentials.yaml), or pass --credentials FILE"
                ) from None
            data = decode_secret_data(secret).get(SECRET_KEY)
            if data is None:
                raise CredentialsError(f"Secret {namespace}/{name} has no key {SECRET_KEY!r}")
            document = data.decode(errors="replace")
    finally:
        await client.close()
    indexes.reroute()
    return indexes, document
