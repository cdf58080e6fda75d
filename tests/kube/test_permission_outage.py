"""A permission taken away while ``serve --kubernetes`` runs, on the real API server.

With ``watch`` on Secrets removed from deploy/base's ClusterRole, the old receiver retried
the refused watch every 0.2-0.4 s for ever (1,198 requests in 40 s from two replicas, one
log line each). Now the retries back off, the log says so once, and when the permission
comes back the watch recovers by itself, says so once, and follows the Secret again.
"""

from __future__ import annotations

from typing import Any

from tests.builders import KARGO, PUSH, project, secret, signed, warehouse
from tests.kube.apiserver import AuditEvent, KubeApiServer, Receiver
from tests.kube.manifests import published_receivers, refreshed
from tests.kube.support import Replicas, published_url
from tests.support import eventually, request

RBAC = "rbac.authorization.k8s.io/v1"


def secret_rules(*verbs: str) -> dict[str, Any]:
    return {"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": list(verbs)}]}


def test_a_watch_refused_by_rbac_backs_off_logs_once_and_recovers(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    replicas: Replicas,
) -> None:
    admin, ns, rcv = kube_api.admin, kube_namespace, receiver_kubeconfig
    for obj in (
        secret(ns, "bb", "first"),
        secret(ns, "bb2", "second"),
        project(ns, ("bb", "bb")),
        warehouse(ns, "app"),
    ):
        admin.create(obj)

    def url_other_than(old: str) -> str | None:
        new = published_receivers(admin, ns).get("bb")
        return new if new != old else None

    def refused_watches(since: int) -> list[AuditEvent]:
        return [
            e
            for e in kube_api.audit(since, user=rcv.user)
            if e.verb == "watch" and e.code == 403 and "metadata.name%3Dbb2" in e.uri
        ]

    start = kube_api.audit_mark()
    server = replicas(rcv.kubeconfig, lease_namespace=rcv.namespace)
    first_url = published_url(admin, ns)
    role = f"kargo-bitbucket-secrets-{rcv.namespace}"
    admin.patch(RBAC, "ClusterRole", None, role, secret_rules("get"))
    # Point the receiver at another Secret: it gets it (allowed) and watches it (refused).
    mark = kube_api.audit_mark()
    admin.patch(KARGO, "ProjectConfig", ns, ns, project(ns, ("bb", "bb2")))
    second_url = eventually(lambda: url_other_than(first_url), 20, "the URL of bb2")

    def five_refused() -> list[AuditEvent] | None:
        found = refused_watches(mark)
        return found if len(found) >= 5 else None

    refused = eventually(five_refused, 30, "five refused watches of bb2")
    # Backing off, the fifth attempt comes at least 0.2+0.4+0.8+1.6 s after the first (as the
    # API server timed them); the old loop made all five within 1.6 s.
    assert refused[4].received - refused[0].received >= 3.0 - 0.1
    failing = f"watch of Secret {ns}/bb2 failing"
    assert server.logs().count(failing) == 1

    admin.patch(RBAC, "ClusterRole", None, role, secret_rules("get", "watch"))
    recovered = f"watch of Secret {ns}/bb2 works again after"
    eventually(lambda: recovered in server.logs(), 30, "the watch to recover")
    logs = server.logs()
    assert logs.count(recovered) == 1
    assert logs.count(failing) == 1

    # The watch follows the Secret again: a rotation moves the URL, and a delivery signed
    # with the new value refreshes the Warehouse.
    admin.patch("v1", "Secret", ns, "bb2", {"stringData": {"secret": "third"}})
    third_url = eventually(lambda: url_other_than(second_url), 20, "the rotated URL")
    answer = request(third_url, PUSH, signed(PUSH, "third"))
    assert answer.status == 200, answer.body
    assert refreshed(admin, "Warehouse", ns, "app") is not None
    metrics = request(server.admin + "/metrics", method="GET").body.decode()
    assert 'kargo_bitbucket_api_failures_total{kind="Secret",reason="forbidden"}' in metrics

    agents = {e.user_agent for e in kube_api.audit(start, user=rcv.user)}
    assert agents and all(a.startswith("kargo-bitbucket/") for a in agents), agents
