"""A permission taken away while ``serve --kubernetes`` runs, on the real API server.

With ``watch`` on Secrets removed from deploy/base's ClusterRole, the old receiver retried
the refused watch every 0.2-0.4 s for ever (1,198 requests in 40 s from two replicas, one
log line each). Now the retries back off, the log says so once, and when the permission
comes back the watch recovers by itself, says so once, and follows the Secret again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Server, request
from tests.kube.apiserver import AuditEvent, KubeApiServer
from tests.kube.conftest import Receiver

KARGO = "kargo.akuity.io/v1alpha1"
RBAC = "rbac.authorization.k8s.io/v1"
REPO_URL = "https://bitbucket.org/acme/app"
PUSH = json.dumps(
    {
        "push": {"changes": [{"new": {"type": "branch", "name": "main"}, "old": None}]},
        "repository": {"links": {"html": {"href": REPO_URL}}},
    }
).encode()


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return value


def secret(namespace: str, name: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"secret": value},
    }


def receivers(secret_name: str) -> dict[str, Any]:
    return {"webhookReceivers": [{"name": "bb", "bitbucket": {"secretRef": {"name": secret_name}}}]}


def secret_rules(*verbs: str) -> dict[str, Any]:
    return {"rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": list(verbs)}]}


def test_a_watch_refused_by_rbac_backs_off_logs_once_and_recovers(
    kube_api: KubeApiServer, kube_namespace: str, receiver_kubeconfig: Receiver, tmp_path: Path
) -> None:
    admin, ns, rcv = kube_api.admin, kube_namespace, receiver_kubeconfig
    admin.create(secret(ns, "bb", "first"))
    admin.create(secret(ns, "bb2", "second"))
    admin.create(
        {
            "apiVersion": KARGO,
            "kind": "ProjectConfig",
            "metadata": {"name": ns, "namespace": ns},
            "spec": receivers("bb"),
        }
    )
    admin.create(
        {
            "apiVersion": KARGO,
            "kind": "Warehouse",
            "metadata": {"name": "app", "namespace": ns},
            "spec": {"subscriptions": [{"git": {"repoURL": REPO_URL, "branch": "main"}}]},
        }
    )

    def url() -> str | None:
        config = admin.get(KARGO, "ProjectConfig", ns, ns) or {}
        entries = (config.get("status") or {}).get("webhookReceivers") or []
        return next((str(e["url"]) for e in entries if e["name"] == "bb"), None)

    def ours(since: int) -> list[AuditEvent]:
        return kube_api.audit(since, user=rcv.user)

    def refused_watches(since: int) -> list[AuditEvent]:
        return [
            e
            for e in ours(since)
            if e.verb == "watch" and e.code == 403 and "metadata.name%3Dbb2" in e.uri
        ]

    start = kube_api.audit_mark()
    server = Server(
        tmp_path / "replica.db",
        [
            "--kubernetes",
            "--kubeconfig",
            str(rcv.kubeconfig),
            "--lease-namespace",
            rcv.namespace,
            "--lease-duration",
            "3",
        ],
        env={"POD_NAME": "replica-a"},
    )
    try:
        first_url = eventually(url, 20, "the first URL published")
        role = f"kargo-bitbucket-secrets-{rcv.namespace}"
        admin.patch(RBAC, "ClusterRole", None, role, secret_rules("get"))
        # Point the receiver at another Secret: it gets it (allowed) and watches it (refused).
        mark = kube_api.audit_mark()
        admin.patch(KARGO, "ProjectConfig", ns, ns, {"spec": receivers("bb2")})
        second_url = eventually(lambda: (u := url()) != first_url and u, 20, "the new URL")
        eventually(lambda: refused_watches(mark), 20, "a refused watch of bb2")
        began = time.monotonic()
        eventually(lambda: len(refused_watches(mark)) >= 5, 30, "five refused watches")
        # Backing off, the fifth attempt comes at least 0.2+0.4+0.8+1.6 s after the first;
        # the old loop made it within 1.6 s at most.
        assert time.monotonic() - began >= 3.0 - 0.1
        failing = f"watch of Secret {ns}/bb2 failing"
        assert server.logs().count(failing) == 1

        admin.patch(RBAC, "ClusterRole", None, role, secret_rules("get", "watch"))
        recovered = f"watch of Secret {ns}/bb2 works again after"
        eventually(lambda: recovered in server.logs(), 30, "the watch to recover")
        logs = server.logs()
        assert logs.count(recovered) == 1
        assert logs.count(failing) == 1

        # The watch follows the Secret again: a rotation moves the URL, and a delivery
        # signed with the new value refreshes the Warehouse.
        admin.patch("v1", "Secret", ns, "bb2", {"stringData": {"secret": "third"}})
        third_url = eventually(lambda: (u := url()) != second_url and u, 20, "the rotated URL")
        signature = hmac.new(b"third", PUSH, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Event-Key": "repo:push",
            "X-Request-UUID": "outage-test",
            "X-Hub-Signature": f"sha256={signature}",
        }
        answer = request(third_url, PUSH, headers)  # the base URL is the listener's
        assert answer.status == 200, answer.body
        app = admin.get(KARGO, "Warehouse", ns, "app") or {}
        assert "kargo.akuity.io/refresh" in (app["metadata"].get("annotations") or {})

        metrics = request(server.admin + "/metrics", method="GET").body.decode()
        assert 'kargo_bitbucket_api_failures_total{kind="Secret",reason="forbidden"}' in metrics
    finally:
        server.stop()
    agents = {e.user_agent for e in ours(start)}
    assert agents and all(a.startswith("kargo-bitbucket/") for a in agents), agents
