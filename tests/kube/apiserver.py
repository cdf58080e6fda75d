"""A real kube-apiserver and etcd on loopback, from ``$KUBEBUILDER_ASSETS`` (envtest's layout).

:class:`KubeApiServer` starts the pair in a fresh temp dir (``--unsafe-no-fsync``, a static
admin token, ServiceAccount signing keys, an audit log of every request), applies Kargo's
CRDs from ``../shared/kube/kargo-crds`` in place, and offers an admin client (:class:`Kube`)
plus the audit log. Startup takes about 3 s; the suite shares one per session.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import yaml

from tests.support import REPO, free_ports

CRDS = REPO.parent / "shared" / "kube" / "kargo-crds"
MERGE = "application/merge-patch+json"
APPLY = "application/apply-patch+yaml"

# kind -> (plural, namespaced) for the kinds the tests touch; the group is in apiVersion.
RESOURCES: dict[str, tuple[str, bool]] = {
    "Namespace": ("namespaces", False),
    "Secret": ("secrets", True),
    "ServiceAccount": ("serviceaccounts", True),
    "Event": ("events", True),
    "Lease": ("leases", True),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
    "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    "ProjectConfig": ("projectconfigs", True),
    "ClusterConfig": ("clusterconfigs", False),
    "Warehouse": ("warehouses", True),
    "Promotion": ("promotions", True),
    "Stage": ("stages", True),
    "Freight": ("freights", True),
    "Project": ("projects", False),
}

BASE_NAMESPACE = "kargo"
"""The namespace deploy/base puts the receiver in; :func:`install_rbac` replaces it."""
RBAC_KINDS = {"ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    users: ["system:apiserver"]
  - level: Request
    resources:
      - group: kargo.akuity.io
        resources: ["projectconfigs/status", "clusterconfigs/status"]
  - level: Metadata
"""


class StartupError(RuntimeError):
    """The API server or etcd did not come up; the message holds the tail of their logs."""


def path_of(
    api_version: str,
    kind: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection or object, e.g. ``/apis/kargo.akuity.io/v1alpha1/...``."""
    plural, namespaced = RESOURCES[kind]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [prefix]
    if namespaced and namespace is not None:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name is not None:
        parts.append(name)
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


def object_path(obj: dict[str, Any], *, collection: bool = False) -> str:
    meta = obj["metadata"]
    name = None if collection else meta["name"]
    return path_of(obj["apiVersion"], obj["kind"], meta.get("namespace"), name)


def fold_string_data(obj: dict[str, Any]) -> dict[str, Any]:
    """A Secret's ``stringData`` as base64 ``data`` (as kubectl sends it), else ``obj``."""
    if obj.get("kind") != "Secret" or "stringData" not in obj:
        return obj
    folded = {k: v for k, v in obj.items() if k != "stringData"}
    folded["data"] = {
        k: base64.b64encode(v.encode()).decode() for k, v in obj["stringData"].items()
    }
    return folded


class Kube:
    """A small synchronous client of the API server with one bearer token (admin or not)."""

    def __init__(self, url: str, token: str, ca_file: Path) -> None:
        self.url = url
        self.token = token
        self.ca_file = ca_file
        self.http = httpx2.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "kargo-bitbucket-tests"},
            verify=ssl.create_default_context(cafile=str(ca_file)),
            timeout=30,
        )

    def close(self) -> None:
        self.http.close()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        ok: Iterable[int] = (200, 201),
        read: bool = True,
    ) -> Any:
        """One request; a status outside ``ok`` raises with the Status message; the answer
        decoded when ``read`` (a deleted object may nest deeper than Python's json reads)."""
        content = None
        if body is not None:
            content = body if isinstance(body, str) else json.dumps(body)
        response = self.http.request(
            method,
            path,
            content=content,
            params=params,
            headers={"Content-Type": content_type} if content is not None else None,
        )
        if response.status_code not in set(ok):
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code}: {response.text}")
        return response.json() if read and response.content else None

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = fold_string_data(obj)
        result: dict[str, Any] = self.call("POST", object_path(obj, collection=True), obj)
        return result

    def apply(self, obj: dict[str, Any], manager: str = "kube-tests") -> dict[str, Any]:
        """Server-side apply (as ``kubectl apply --server-side --force-conflicts``)."""
        result: dict[str, Any] = self.call(
            "PATCH",
            object_path(fold_string_data(obj)),
            json.dumps(fold_string_data(obj)),
            content_type=APPLY,
            params={"fieldManager": manager, "force": "true"},
        )
        return result

    def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        response = self.http.get(path_of(api_version, kind, namespace, name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def objects(
        self, api_version: str, kind: str, namespace: str | None = None, **params: str
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.call(
            "GET", path_of(api_version, kind, namespace), params=params
        )["items"]
        return items

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386), of the object or its ``status``."""
        result: dict[str, Any] = self.call(
            "PATCH",
            path_of(api_version, kind, namespace, name, subresource),
            patch,
            content_type=MERGE,
        )
        return result

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        path = path_of(api_version, kind, namespace, name)
        self.call("DELETE", path, ok=(200, 202, 404), read=False)

    def delete_all(self, api_version: str, kind: str, namespace: str | None = None) -> None:
        """``deletecollection``: every object of a kind (in ``namespace``)."""
        self.call("DELETE", path_of(api_version, kind, namespace), ok=(200, 404), read=False)

    def token_for(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A ServiceAccount token from the TokenRequest API (as ``kubectl create token``)."""
        path = path_of("v1", "ServiceAccount", namespace, service_account, "token")
        review = self.call("POST", path, {"spec": {"expirationSeconds": seconds}})
        return str(review["status"]["token"])

    def kubeconfig(
        self,
        path: Path,
        token: str | None = None,
        namespace: str = "default",
        *,
        server: str | None = None,
        token_file: Path | None = None,
    ) -> Path:
        """A kubeconfig that lightkube, kubectl and ``serve --kubernetes`` accept: ``token``
        (default this client's), or the file ``token_file`` it is written to (``tokenFile``,
        re-read after a 401); ``server`` replaces the URL (a proxy's)."""
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        user: dict[str, str] = {"token": token or self.token}
        if token_file is not None:
            token_file.write_text(user.pop("token"))
            user["tokenFile"] = str(token_file.resolve())
        cluster = {"server": server or self.url, "certificate-authority-data": ca}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "test", "user": user}],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": "test", "namespace": namespace},
                }
            ],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


@dataclass(frozen=True, eq=False)
class AuditEvent:
    """One request as the audit log recorded it (level Metadata, final stage)."""

    verb: str
    uri: str
    user: str
    code: int
    user_agent: str
    resource: str
    namespace: str
    name: str
    subresource: str
    body: Any = None
    """The request body, for status writes only (the policy logs those at level Request)."""
    received: float = 0.0
    """When the API server received the request, in seconds since the epoch."""

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]


class KubeApiServer:
    """etcd plus kube-apiserver started from ``assets`` (a folder with both binaries)."""

    def __init__(self, assets: Path) -> None:
        self.assets = assets
        self.workdir = Path(tempfile.mkdtemp(prefix="kube-apiserver-"))
        self.token = secrets.token_hex(16)
        self.audit_log = self.workdir / "audit.log"
        self.port, self.etcd_client_port, self.etcd_peer_port = free_ports(3)
        self.url = f"https://127.0.0.1:{self.port}"
        self.etcd_url = ""
        self.processes: list[subprocess.Popen[bytes]] = []
        self._admin: Kube | None = None

    @property
    def admin(self) -> Kube:
        if self._admin is None:
            raise RuntimeError("KubeApiServer not started")
        return self._admin

    def start(self, timeout: float = 60) -> KubeApiServer:
        """Start both, wait for ``/readyz``, and apply Kargo's CRDs; raise :class:`StartupError`."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        for binary in ("etcd", "kube-apiserver"):
            if not os.access(self.assets / binary, os.X_OK):
                raise StartupError(f"{self.assets / binary} is missing or not executable")
        work = self.workdir
        subprocess.run(
            ["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                "openssl",
                "rsa",
                "-in",
                str(work / "sa.key"),
                "-pubout",
                "-out",
                str(work / "sa.pub"),
            ],
            check=True,
            capture_output=True,
        )
        (work / "tokens.csv").write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        (work / "audit-policy.yaml").write_text(AUDIT_POLICY)
        client, peer = self.etcd_client_port, self.etcd_peer_port
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                "--name=t",
                f"--data-dir={work / 'etcd'}",
                "--unsafe-no-fsync",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=t=http://127.0.0.1:{peer}",
                "--quota-backend-bytes=8589934592",
                "--log-level=error",
            ],
        )
        issuer = "https://kubernetes.default.svc.cluster.local"
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={work / 'certs'}",
                f"--token-auth-file={work / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={issuer}",
                f"--api-audiences={issuer}",
                f"--service-account-key-file={work / 'sa.pub'}",
                f"--service-account-signing-key-file={work / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={work / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
            ],
        )
        deadline = time.monotonic() + timeout
        ca_file = work / "certs" / "apiserver.crt"
        self._wait(lambda: ca_file.is_file() and self._ready(ca_file), deadline, "/readyz ok")
        self._admin = Kube(self.url, self.token, ca_file)
        self._wait(self._flow_control_configured, deadline, "API Priority and Fairness configured")
        self.apply_crds(deadline)

    def _spawn(self, binary: str, args: list[str]) -> None:
        log = (self.workdir / f"{binary}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [str(self.assets / binary), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        )
        log.close()

    def _ready(self, ca_file: Path) -> bool:
        try:
            response = httpx2.get(
                f"{self.url}/readyz",
                headers={"Authorization": f"Bearer {self.token}"},
                verify=ssl.create_default_context(cafile=str(ca_file)),
                timeout=2,
            )
        except (httpx2.HTTPError, OSError):
            return False
        return response.status_code == 200

    def _flow_control_configured(self) -> bool:
        """Whether APF's suggested FlowSchemas exist: until then other users' requests get 429."""
        response = self.admin.http.get(
            "/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas/service-accounts"
        )
        return response.status_code == 200

    def _wait(self, check: Callable[[], bool], deadline: float, what: str) -> None:
        while not check():
            for process in self.processes:
                if process.poll() is not None:
                    raise StartupError(
                        f"{Path(str(process.args[0])).name} exited {process.returncode} "
                        f"before {what}:\n{self.logs()}"
                    )
            if time.monotonic() > deadline:
                raise StartupError(f"no {what} by the deadline:\n{self.logs()}")
            time.sleep(0.05)

    def logs(self, lines: int = 30) -> str:
        """The last ``lines`` of each process's log."""
        tails = []
        for name in ("etcd", "kube-apiserver"):
            log = self.workdir / f"{name}.log"
            if log.is_file():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(tails)

    def apply_crds(self, deadline: float) -> None:
        """Apply every CRD in :data:`CRDS` (server-side) and wait until each is served."""
        if not CRDS.is_dir():
            raise StartupError(f"Kargo's CRDs not found at {CRDS}")
        crds = [yaml.safe_load(p.read_text()) for p in sorted(CRDS.glob("*.yaml"))]
        for crd in crds:
            self.admin.apply(crd)

        def served() -> bool:
            for crd in crds:
                got = (
                    self.admin.get(
                        "apiextensions.k8s.io/v1",
                        "CustomResourceDefinition",
                        None,
                        crd["metadata"]["name"],
                    )
                    or {}
                )
                conditions = (got.get("status") or {}).get("conditions") or []
                if not any(
                    c["type"] == "Established" and c["status"] == "True" for c in conditions
                ):
                    return False
            # Until a kind's watch cache is filled, lists of it answer 429 "storage is
            # (re)initializing".
            for crd in crds:
                spec = crd["spec"]
                version = next(v["name"] for v in spec["versions"] if v.get("storage"))
                listed = self.admin.http.get(
                    f"/apis/{spec['group']}/{version}/{spec['names']['plural']}",
                    params={"limit": "1"},
                )
                if listed.status_code != 200:
                    return False
            return True

        self._wait(served, deadline, "Kargo's CRDs established")

    def stop(self) -> None:
        """Stop both (SIGTERM, then SIGKILL after 5 s) and remove the temp dir."""
        if self._admin is not None:
            self._admin.close()
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- the audit log

    def audit_mark(self) -> int:
        """A position in the audit log: pass it to :meth:`audit` to see only later requests."""
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def audit(self, since: int = 0, user: str | None = None) -> list[AuditEvent]:
        """The requests logged after ``since`` (one per request: its final stage), in order."""
        with self.audit_log.open("rb") as f:
            f.seek(since)
            data = f.read()
        final: dict[str, dict[str, Any]] = {}
        for line in data.splitlines():
            if not line.endswith(b"}"):
                continue  # a line still being written
            event = json.loads(line)
            final[event["auditID"]] = event
        events = []
        for raw in final.values():
            ref = raw.get("objectRef") or {}
            event = AuditEvent(
                verb=raw["verb"],
                uri=raw["requestURI"],
                user=raw["user"].get("username", ""),  # none on a 401
                code=int((raw.get("responseStatus") or {}).get("code") or 0),
                user_agent=raw.get("userAgent", ""),
                resource=ref.get("resource", ""),
                namespace=ref.get("namespace", ""),
                name=ref.get("name", ""),
                subresource=ref.get("subresource", ""),
                body=raw.get("requestObject"),
                received=datetime.fromisoformat(raw["requestReceivedTimestamp"]).timestamp(),
            )
            if user is None or event.user == user:
                events.append(event)
        return events


def render_rbac(kustomization: Path) -> list[dict[str, Any]]:
    """The ServiceAccount and RBAC objects ``kubectl kustomize <kustomization>`` renders."""
    kubectl = shutil.which("kubectl") or "kubectl"
    rendered = subprocess.run(
        [kubectl, "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in RBAC_KINDS]


@dataclass(frozen=True)
class Receiver:
    """What a replica of the receiver runs with: ``kubeconfig`` holds a ServiceAccount token
    bound to deploy/base's RBAC; ``namespace`` is its own (the Lease's) namespace."""

    kubeconfig: Path
    namespace: str
    service_account: str
    token: str

    @property
    def user(self) -> str:
        """The user name the API server (and its audit log) knows the token as."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def install_rbac(kube: Kube, docs: list[dict[str, Any]], namespace: str) -> None:
    """Create rendered RBAC with deploy/base's namespace ``kargo`` replaced by ``namespace``,
    and cluster-scoped names suffixed with it, so every test has its own ServiceAccount."""
    for doc in docs:
        doc = yaml.safe_load(yaml.safe_dump(doc))
        meta = doc["metadata"]
        if "namespace" not in meta:
            meta["name"] = f"{meta['name']}-{namespace}"
        elif meta["namespace"] == BASE_NAMESPACE:
            meta["namespace"] = namespace
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = f"{doc['roleRef']['name']}-{namespace}"
        for subject in doc.get("subjects") or []:
            if subject.get("namespace") == BASE_NAMESPACE:
                subject["namespace"] = namespace
        kube.create(doc)


def wait_for_rbac(server: KubeApiServer, token: str) -> None:
    """Until the new bindings authorise the token (the authoriser's cache lags by a moment)."""
    client = Kube(server.url, token, server.admin.ca_file)
    deadline = time.monotonic() + 10
    try:
        probe = path_of("kargo.akuity.io/v1alpha1", "Warehouse")
        while client.http.get(probe, params={"limit": "1"}).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the RBAC bindings did not take effect in 10 s")
            time.sleep(0.05)
    finally:
        client.close()


def make_receiver(
    server: KubeApiServer, docs: list[dict[str, Any]], namespace: str, folder: Path
) -> Receiver:
    install_rbac(server.admin, docs, namespace)
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    token = server.admin.token_for(namespace, account)
    wait_for_rbac(server, token)
    path = server.admin.kubeconfig(folder / f"kubeconfig-{namespace}", token, namespace)
    return Receiver(path, namespace, account, token)


def running(assets: Path) -> Iterator[KubeApiServer]:
    """A started :class:`KubeApiServer`, stopped afterwards (for fixtures and benchmarks)."""
    server = KubeApiServer(assets).start()
    try:
        yield server
    finally:
        server.stop()
