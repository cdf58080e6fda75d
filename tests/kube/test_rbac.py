"""deploy/base's RBAC as a real kube-apiserver enforces it (runs against ``kube_api``).

The token is a TokenRequest token of the ServiceAccount deploy/base renders, bound to exactly
its Roles and ClusterRoles: what the receiver needs is allowed, nothing around it is.
"""

from __future__ import annotations

import pytest

from tests.builders import KARGO
from tests.kube.apiserver import Kube, KubeApiServer, Receiver, path_of


@pytest.fixture
def as_receiver(kube_api: KubeApiServer, receiver_kubeconfig: Receiver) -> Kube:
    client = Kube(kube_api.url, receiver_kubeconfig.token, kube_api.admin.ca_file)
    yield client  # type: ignore[misc]
    client.close()


def status(client: Kube, method: str, path: str, body: object = None) -> int:
    return client.http.request(
        method,
        path,
        json=body,
        headers={"Content-Type": "application/merge-patch+json"} if method == "PATCH" else None,
    ).status_code


def test_the_receiver_token_may_do_what_the_receiver_does_and_no_more(
    kube_api: KubeApiServer,
    kube_namespace: str,
    receiver_kubeconfig: Receiver,
    as_receiver: Kube,
) -> None:
    ns, own = kube_namespace, receiver_kubeconfig.namespace
    kube_api.admin.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "bb", "namespace": ns},
            "stringData": {"secret": "s"},
        }
    )
    kube_api.admin.create(
        {
            "apiVersion": KARGO,
            "kind": "Warehouse",
            "metadata": {"name": "app", "namespace": ns},
            "spec": {"subscriptions": [{"git": {"repoURL": "https://bitbucket.org/a/b"}}]},
        }
    )
    refresh = {"metadata": {"annotations": {"kargo.akuity.io/refresh": "x"}}}
    allowed = [
        ("GET", path_of(KARGO, "Warehouse"), None),
        ("GET", path_of(KARGO, "Promotion"), None),
        ("GET", path_of(KARGO, "ProjectConfig"), None),
        ("GET", path_of(KARGO, "ClusterConfig"), None),
        ("PATCH", path_of(KARGO, "Warehouse", ns, "app"), refresh),
        ("GET", path_of("v1", "Secret", ns, "bb"), None),
        ("GET", path_of("coordination.k8s.io/v1", "Lease", own, "kargo-bitbucket"), None),  # 404
    ]
    forbidden = [
        ("GET", path_of("v1", "Secret", ns), None),  # no list: Secrets by name only
        ("GET", path_of("v1", "Secret"), None),
        ("PATCH", path_of("v1", "Secret", ns, "bb"), {"data": {}}),
        ("GET", path_of(KARGO, "Warehouse", ns, "app"), None),  # the caches come from watches
        ("DELETE", path_of(KARGO, "Warehouse", ns, "app"), None),
        ("GET", path_of("coordination.k8s.io/v1", "Lease", own, "other"), None),
        ("GET", path_of("coordination.k8s.io/v1", "Lease", ns, "kargo-bitbucket"), None),
        ("GET", path_of("v1", "Event", ns), None),
        ("GET", path_of(KARGO, "Stage", ns), None),
    ]
    answers = {(m, p): status(as_receiver, m, p, b) for m, p, b in allowed + forbidden}
    assert [(m, p, answers[m, p]) for m, p, _ in allowed if answers[m, p] in (401, 403)] == []
    assert [(m, p, answers[m, p]) for m, p, _ in forbidden if answers[m, p] != 403] == []


def test_the_audit_log_names_the_receivers_requests(
    kube_api: KubeApiServer, receiver_kubeconfig: Receiver, as_receiver: Kube
) -> None:
    mark = kube_api.audit_mark()
    assert status(as_receiver, "GET", path_of("v1", "Secret")) == 403
    (event,) = [
        e for e in kube_api.audit(mark, user=receiver_kubeconfig.user) if e.resource == "secrets"
    ]
    assert (event.verb, event.code) == ("list", 403)
