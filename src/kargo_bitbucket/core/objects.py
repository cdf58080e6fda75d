"""Typed, read-only views over the Kubernetes objects the receiver reads (Kargo's and Secrets).

A view is a thin accessor over the body as the API (or a manifest) gave it: nothing is
copied or validated up front, and a field of the wrong type reads as absent, so a
malformed object never raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

Body = Mapping[str, Any]
EMPTY: Body = MappingProxyType({})


def mapping(value: object) -> Body:
    """``value`` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else EMPTY


def sequence(value: object) -> list[Any]:
    """``value`` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def text(value: object) -> str:
    """``value`` if it is a string, else ``""``."""
    return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """An object's ``metadata``."""

    raw: Body

    @classmethod
    def of(cls, body: Body) -> ObjectMeta:
        """The metadata of ``body`` (empty when absent or not a mapping)."""
        return cls(mapping(body.get("metadata")))

    @property
    def namespace(self) -> str:
        """``""`` for cluster-scoped objects."""
        return text(self.raw.get("namespace"))

    @property
    def name(self) -> str:
        return text(self.raw.get("name"))

    @property
    def resource_version(self) -> str:
        return text(self.raw.get("resourceVersion"))

    @property
    def generation(self) -> int:
        """The spec's generation; 1 when absent (a manifest never had a first write)."""
        value = self.raw.get("generation")
        return value if isinstance(value, int) and not isinstance(value, bool) and value else 1


def key(body: Body) -> tuple[str, str]:
    """(namespace, name) of an object."""
    meta = ObjectMeta.of(body)
    return meta.namespace, meta.name


@dataclass(frozen=True, slots=True)
class ReceiverSpec:
    """One entry of a config's ``spec.webhookReceivers``."""

    raw: Body

    @property
    def name(self) -> str:
        """The receiver's name as Kargo prints it (``"None"`` when a malformed entry has none)."""
        return str(self.raw.get("name"))

    @property
    def is_bitbucket(self) -> bool:
        """True for a Bitbucket receiver; the others belong to other controllers."""
        return isinstance(self.raw.get("bitbucket"), Mapping)

    @property
    def secret_name(self) -> str:
        """The Secret a Bitbucket receiver names in ``bitbucket.secretRef.name``."""
        return text(mapping(mapping(self.raw.get("bitbucket")).get("secretRef")).get("name"))


@dataclass(frozen=True, slots=True)
class ConfigView:
    """A ProjectConfig or ClusterConfig: its receivers in spec order, and its status."""

    raw: Body

    @property
    def kind(self) -> str:
        return str(self.raw.get("kind"))

    @property
    def meta(self) -> ObjectMeta:
        return ObjectMeta.of(self.raw)

    @property
    def receivers(self) -> Iterator[ReceiverSpec]:
        """``spec.webhookReceivers``, leaving out entries that are not objects."""
        spec = mapping(self.raw.get("spec"))
        for entry in sequence(spec.get("webhookReceivers")):
            if isinstance(entry, Mapping):
                yield ReceiverSpec(entry)

    @property
    def status(self) -> Body:
        return mapping(self.raw.get("status"))

    @property
    def published(self) -> Iterator[Body]:
        """``status.webhookReceivers`` entries that are objects."""
        for entry in sequence(self.status.get("webhookReceivers")):
            if isinstance(entry, Mapping):
                yield entry


@dataclass(frozen=True, slots=True)
class WarehouseView:
    """A Warehouse: its Git subscriptions."""

    raw: Body

    @property
    def git(self) -> Iterator[tuple[int, Body]]:
        """(position in ``spec.subscriptions``, its ``git``) of each Git subscription."""
        spec = mapping(self.raw.get("spec"))
        for index, subscription in enumerate(sequence(spec.get("subscriptions"))):
            git = mapping(subscription).get("git")
            if isinstance(git, Mapping):
                yield index, git


@dataclass(frozen=True, slots=True)
class PromotionView:
    """A Promotion: its steps and how far it has come."""

    raw: Body

    @property
    def phase(self) -> str:
        return text(mapping(self.raw.get("status")).get("phase"))

    @property
    def steps(self) -> list[Any]:
        """``spec.steps`` (entries may be anything)."""
        return sequence(mapping(self.raw.get("spec")).get("steps"))

    @property
    def current_step(self) -> int | None:
        """``status.currentStep`` (0 when absent), None when it is not an integer."""
        current = mapping(self.raw.get("status")).get("currentStep") or 0
        return current if isinstance(current, int) and not isinstance(current, bool) else None

    @property
    def state(self) -> Body:
        """``status.state``: each step's output by its alias."""
        return mapping(mapping(self.raw.get("status")).get("state"))


def secret_data(body: Body) -> Body:
    """A Secret's ``data`` (base64 values by key)."""
    return mapping(body.get("data"))
