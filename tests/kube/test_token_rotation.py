"""A rotated token file on a real API server: the lean refresh path (store/kubernetes/wire.py)
meets the 401 of a revoked token by re-reading the file once, as lightkube does for its own
requests, so an in-cluster replica keeps refreshing after the kubelet rotates its token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kargo_bitbucket.store.base import REFRESH_ANNOTATION, Target
from kargo_bitbucket.store.kubernetes.client import USER_AGENT, connect
from kargo_bitbucket.store.kubernetes.refresher import Refresher
from kargo_bitbucket.store.kubernetes.wire import Wire, open_wire
from tests.builders import KARGO, warehouse
from tests.kube.apiserver import Kube, KubeApiServer, Receiver, path_of
from tests.kube.support import seed
from tests.support import eventually


def bound_token(kube: Kube, receiver: Receiver, secret: dict[str, Any]) -> str:
    """A token of the receiver's ServiceAccount that dies with ``secret``."""
    meta = secret["metadata"]
    bound = {"kind": "Secret", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}
    path = path_of("v1", "ServiceAccount", receiver.namespace, receiver.service_account, "token")
    review = kube.call("POST", path, {"spec": {"expirationSeconds": 3600, "boundObjectRef": bound}})
    return str(review["status"]["token"])


def test_a_revoked_token_is_replaced_from_the_token_file_and_the_refresh_lands(
    kube_api: KubeApiServer, kube_namespace: str, receiver_kubeconfig: Receiver, tmp_path: Path
) -> None:
    admin, receiver = kube_api.admin, receiver_kubeconfig
    seed(admin, [warehouse(kube_namespace, "app")])
    holder = admin.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "holder", "namespace": receiver.namespace},
        }
    )
    old = bound_token(admin, receiver, holder)
    token_file = tmp_path / "token"
    kubeconfig = admin.kubeconfig(
        tmp_path / "kubeconfig", old, receiver.namespace, token_file=token_file
    )
    target = Target("Warehouse", kube_namespace, "app")

    def annotation() -> str:
        found = admin.get(KARGO, "Warehouse", kube_namespace, "app") or {}
        return str((found["metadata"].get("annotations") or {}).get(REFRESH_ANNOTATION))

    def refused(token: str) -> bool:
        probe = Kube(kube_api.url, token, admin.ca_file)
        try:
            return probe.http.get(path_of(KARGO, "Warehouse", kube_namespace)).status_code == 401
        finally:
            probe.close()

    async def scenario() -> list[str]:
        client = connect(str(kubeconfig), None)
        wire = open_wire(client.config, USER_AGENT)
        assert isinstance(wire, Wire)
        refresher = Refresher(client, "replica-a", wire=wire, emit_events=False)
        try:
            first = await refresher.refresh([target], "before-rotation")
            seen = [annotation()]
            admin.delete("v1", "Secret", receiver.namespace, "holder")
            await asyncio.to_thread(eventually, lambda: refused(old), 30, "the old token refused")
            token_file.write_text(admin.token_for(receiver.namespace, receiver.service_account))
            mark = kube_api.audit_mark()
            second = await refresher.refresh([target], "after-rotation")
            assert first.refreshed == [target] and second.refreshed == [target]
            seen.append(annotation())
            codes = await asyncio.to_thread(
                eventually,
                lambda: (
                    [e.code for e in kube_api.audit(mark) if e.verb == "patch"][-1:] == [200]
                    and [e.code for e in kube_api.audit(mark) if e.verb == "patch"]
                ),
                10,
                "the patches in the audit log",
            )
            seen.append(",".join(map(str, codes)))
            return seen
        finally:
            await refresher.close()
            await client.close()

    assert asyncio.run(scenario()) == ["before-rotation", "after-rotation", "401,200"]
