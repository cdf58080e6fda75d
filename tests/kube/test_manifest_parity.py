"""``apply``'s manifest checks give the API server's verdict (real kube-apiserver, Kargo's CRDs).

Each manifest is created with ``dryRun=All`` twice: with ``fieldValidation=Strict`` (refuses
unknown fields) and ``Ignore`` (prunes them). Ours: refused, accepted with a warning (unknown
fields kept), or accepted. Only fields the API server types are compared: inside
``spec.subscriptions`` (untyped in the CRD) we are stricter on purpose (SPEC §10).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from kargo_bitbucket.core.manifests import ManifestError
from tests.builders import parse_manifests
from tests.kube.apiserver import KubeApiServer, object_path
from tests.kube.support import new_namespace

PROMOTION = """\
apiVersion: kargo.akuity.io/v1alpha1
kind: Promotion
metadata: {name: prod.01j, namespace: NS}
spec:
  stage: prod
  freight: abc123
  steps:
  - uses: git-open-pr
    as: open-pr
  - uses: git-wait-for-pr
    as: wait
"""
RECEIVERS = """\
apiVersion: kargo.akuity.io/v1alpha1
kind: ProjectConfig
metadata: {name: NS, namespace: NS}
spec:
  webhookReceivers:
  - {name: bb, bitbucket: {secretRef: {name: bb-secret}}}
"""
SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: NS}\n"
WAIT = "    as: wait\n"

# (id, base, old, new, verdict): "refused", "warned" (Strict refuses, Ignore accepts), "accepted"
CASES = [
    ("promotion", PROMOTION, "", "", "accepted"),
    ("step-task-only", PROMOTION, "  - uses: git-open-pr\n", "  - task: {name: t}\n", "refused"),
    ("step-uses-and-task", PROMOTION, WAIT, WAIT + "    task: {name: t}\n", "refused"),
    ("steps-empty", PROMOTION, PROMOTION[PROMOTION.index("  steps:") :], "  steps: []\n",
     "refused"),
    ("no-stage", PROMOTION, "  stage: prod\n", "", "refused"),
    ("no-freight-no-origin", PROMOTION, "  freight: abc123\n", "", "refused"),
    ("origin", PROMOTION, "freight: abc123", "origin: {kind: Warehouse, name: w}", "accepted"),
    ("origin-and-freight", PROMOTION, "  stage", "  origin: {kind: Warehouse, name: w}\n  stage",
     "refused"),
    ("freight-pattern", PROMOTION, "freight: abc123", "freight: ABC_1", "refused"),
    ("freight-long", PROMOTION, "freight: abc123", "freight: " + "a" * 254, "refused"),
    ("retry", PROMOTION, WAIT, WAIT + "    retry: {errorThreshold: 3, timeout: 5m}\n", "accepted"),
    ("retry-threshold-string", PROMOTION, WAIT, WAIT + "    retry: {errorThreshold: '3'}\n",
     "refused"),
    ("retry-past-int32", PROMOTION, WAIT, WAIT + "    retry: {errorThreshold: 2147483648}\n",
     "accepted"),
    ("retry-timeout-number", PROMOTION, WAIT, WAIT + "    retry: {timeout: 5}\n", "refused"),
    ("retry-unknown", PROMOTION, WAIT, WAIT + "    retry: {backoff: 1}\n", "warned"),
    ("vars-name", PROMOTION, "  steps:\n", "  vars: [{name: 1x}]\n  steps:\n", "refused"),
    ("vars-value", PROMOTION, "  steps:\n", "  vars: [{name: x, value: 1}]\n  steps:\n", "refused"),
    ("vars-unknown", PROMOTION, WAIT, WAIT + "    vars: [{name: x, foo: a}]\n", "warned"),
    ("step-inputs", PROMOTION, WAIT, WAIT + "    inputs: [{name: x, value: a}]\n", "warned"),
    ("config-string", PROMOTION, WAIT, WAIT + "    config: main\n", "accepted"),
    ("config-list", PROMOTION, WAIT, WAIT + "    config: [a, 1]\n", "accepted"),
    ("receivers", RECEIVERS, "", "", "accepted"),
    ("github-no-secret-ref", RECEIVERS, "", "  - {name: gh, github: {}}\n", "refused"),
    ("generic-no-actions", RECEIVERS, "", "  - {name: g, generic: {secretRef: {}, actions: []}}\n",
     "refused"),
    ("newer-receiver-type", RECEIVERS, "", "  - {name: f, bitbucketdc: {secretRef: {}}}\n",
     "warned"),
    ("null-label-and-annotation", SECRET, "NS}", "NS, labels: {a: null}, annotations: {b: null}}",
     "accepted"),
    ("null-secret-data", SECRET, "", "data: {a: null}\nstringData: {b: null}\n", "accepted"),
]  # fmt: skip


@pytest.fixture(scope="module")
def parity_namespace(kube_api: KubeApiServer) -> str:
    return new_namespace(kube_api.admin, "manifest-parity")


def api_verdict(kube_api: KubeApiServer, body: dict[str, Any]) -> str:
    """What the API server does with ``body`` on create (dry run), strict first."""
    for validation, verdict in (("Strict", "accepted"), ("Ignore", "warned")):
        response = kube_api.admin.http.post(
            object_path(body, collection=True),
            content=json.dumps(body),
            params={"dryRun": "All", "fieldValidation": validation},
            headers={"Content-Type": "application/json"},
        )
        if response.status_code == 201:
            return verdict
        assert response.status_code in (400, 422), response.text  # 400: strict decoding
    return "refused"


@pytest.mark.parametrize(
    ("case", "base", "old", "new", "verdict"), CASES, ids=[c[0] for c in CASES]
)
def test_apply_gives_the_api_servers_verdict(
    kube_api: KubeApiServer,
    parity_namespace: str,
    case: str,
    base: str,
    old: str,
    new: str,
    verdict: str,
) -> None:
    text = (base + new if not old else base.replace(old, new, 1)).replace("NS", parity_namespace)
    assert api_verdict(kube_api, yaml.safe_load(text)) == verdict, "the API server changed"
    try:
        (resource,) = parse_manifests(text, f"{case}.yaml", strict=True)
    except ManifestError as error:
        assert verdict == "refused", str(error)
        assert str(error).startswith(f"{case}.yaml: document 1 (")
        return
    assert verdict == ("warned" if resource.warnings else "accepted"), resource.warnings
