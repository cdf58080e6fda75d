"""Project receivers refresh their own namespace; the ClusterConfig's refresh every namespace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.builders import PUSH, signed
from tests.support import cli, request

MANIFESTS = """
apiVersion: v1
kind: Secret
metadata: {name: bb, namespace: kargo-system-resources}
stringData: {secret: topsecret}
---
apiVersion: kargo.akuity.io/v1alpha1
kind: ClusterConfig
metadata: {name: cluster}
spec:
  webhookReceivers:
    - name: everyone
      bitbucket: {secretRef: {name: bb}}
---
apiVersion: v1
kind: Secret
metadata: {name: bb, namespace: team-a}
stringData: {secret: topsecret}
---
apiVersion: kargo.akuity.io/v1alpha1
kind: ProjectConfig
metadata: {name: team-a, namespace: team-a}
spec:
  webhookReceivers:
    - name: mine
      bitbucket: {secretRef: {name: bb}}
    - name: gh
      github: {secretRef: {name: bb}}
"""

WAREHOUSE = """
---
apiVersion: kargo.akuity.io/v1alpha1
kind: Warehouse
metadata: {name: app, namespace: %s}
spec:
  subscriptions:
    - git: {repoURL: "https://bitbucket.org/acme/app.git", branch: main}
"""


def test_scopes(state: Path, server_factory: Any) -> None:
    manifests = MANIFESTS + WAREHOUSE % "team-a" + WAREHOUSE % "team-b"
    cli("apply", "-f", "-", state=state, stdin=manifests)
    server_factory(state)
    urls = {
        tuple(line.split("\t")[:2]): line.split("\t")[2]
        for line in cli("urls", state=state).stdout.splitlines()
    }
    assert set(urls) == {("cluster", "everyone"), ("team-a", "mine")}

    project = request(urls[("team-a", "mine")], PUSH, signed(PUSH)).json()
    assert project["refreshed"] == ["team-a/app"]
    cluster = request(urls[("cluster", "everyone")], PUSH, signed(PUSH)).json()
    assert cluster["refreshed"] == ["team-a/app", "team-b/app"]
    assert cluster["msg"] == "refreshed 2 warehouse(s)"

    (config,) = json.loads(cli("get", "clusterconfigs", "-o", "json", state=state).stdout)["items"]
    assert [r["name"] for r in config["status"]["webhookReceivers"]] == ["everyone"]
    assert config["status"]["webhookReceivers"][0]["path"].startswith("/bitbucket/")
