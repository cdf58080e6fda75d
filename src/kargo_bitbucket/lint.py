"""What the receiver reads differently from what Warehouses and receiver configs say.

In a cluster nothing checks a Warehouse's subscriptions before the receiver reads them
(Kargo's CRD leaves them untyped), and ``serve`` logs each such note only when it reads the
Warehouse, at most NOTES_RATE a second: ``kargo-bitbucket lint`` lists them all, with the
receivers a ProjectConfig or ClusterConfig leaves unpublished and the configs Kargo ignores
(``Owner.honoured``), whose receivers route nowhere.
"""

from __future__ import annotations

from kargo_bitbucket.core.receivers import Owner
from kargo_bitbucket.store.index import Indexes


def findings(indexes: Indexes, namespace: str | None = None) -> list[str]:
    """One line for each note of each Warehouse in ``namespace`` (None: all), by namespace
    and name; then, from the receivers as resolved now (not as ``serve`` last published
    them), one for each config Kargo ignores and each receiver left unpublished. The
    ClusterConfig's count in every namespace: its receivers serve them all."""
    warehouses = sorted(indexes.warehouses(namespace), key=lambda w: (w.namespace, w.name))
    lines = [note for warehouse in warehouses for note in warehouse.notes]
    resolution = indexes.resolution

    def concerned(owner: Owner) -> bool:
        return namespace is None or owner.scope in (None, namespace)

    for owner in sorted(resolution.ignored, key=_order):
        if concerned(owner):
            lines.append(owner.ignored)
    for owner, status in sorted(resolution.statuses.items(), key=lambda item: _order(item[0])):
        if concerned(owner) and status.problems:
            lines.append(owner.unpublished(status.problems))
    return lines


def _order(owner: Owner) -> tuple[str, str, str]:
    return owner.kind, owner.namespace, owner.name
