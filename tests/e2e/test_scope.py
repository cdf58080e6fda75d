"""Project receivers refresh their own namespace; the ClusterConfig's refresh every namespace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.builders import (
    CLUSTER_SECRETS,
    PUSH,
    REPO,
    cluster_config,
    project,
    secret,
    signed,
    to_yaml,
    warehouse,
)
from tests.support import cli, request


def manifests() -> str:
    """A cluster-wide receiver, team-a's own (and a GitHub one, not ours), and Warehouse app
    on ``main`` in team-a and team-b."""
    team_a = project("team-a", ("mine", "bb"))
    team_a["spec"]["webhookReceivers"].append(
        {"name": "gh", "github": {"secretRef": {"name": "bb"}}}
    )
    return to_yaml(
        secret(CLUSTER_SECRETS),
        cluster_config(("everyone", "bb")),
        secret("team-a"),
        team_a,
        *(warehouse(ns, "app", repo=REPO + ".git") for ns in ("team-a", "team-b")),
    )


def test_scopes(state: Path, server_factory: Any) -> None:
    cli("apply", "-f", "-", state=state, stdin=manifests())
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
