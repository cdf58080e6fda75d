"""What the receiver reads differently from what Warehouses and receiver configs say.

In a cluster nothing checks a Warehouse's subscriptions before the receiver reads them
(Kargo's CRD leaves them untyped), and ``serve`` logs each such note only when it reads the
Warehouse, at most NOTES_RATE a second: ``kargo-bitbucket lint`` lists them all, with the
receivers a ProjectConfig or ClusterConfig left unpublished, and the configs Kargo ignores
(``Owner.honoured``), whose receivers route nowhere.
"""

from __future__ import annotations

from kargo_bitbucket.core.receivers import not_ready, owner_of
from kargo_bitbucket.store.index import Indexes


def findings(indexes: Indexes, namespace: str | None = None) -> list[str]:
    """One line for each note of each Warehouse in ``namespace`` (None: all), by namespace
    and name; then one for each config Kargo ignores or whose ``Ready`` condition says it
    left a receiver out (the ClusterConfig's count in every namespace, its receivers
    serving them all)."""
    warehouses = sorted(indexes.warehouses(namespace), key=lambda w: (w.namespace, w.name))
    lines = [note for warehouse in warehouses for note in warehouse.notes]
    for config in indexes.configs():
        owner = owner_of(config)
        if namespace is not None and owner.scope not in (None, namespace):
            continue
        if not owner.honoured:
            lines.append(owner.ignored)  # no Ready condition: serve writes none there
            continue
        problem = not_ready(config)
        if problem is not None:
            lines.append(f"{owner.kind} {owner.label}: receivers not all published: {problem}")
    return lines
