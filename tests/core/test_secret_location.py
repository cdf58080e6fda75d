"""Where a receiver's Secret lives: one rule, for routing and for the Secrets followed."""

from typing import Any

from kargo_bitbucket.core.receivers import BaseURL, referenced_secrets, resolve


def config(kind: str, namespace: str, name: str, *receivers: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace} if namespace else {"name": name}
    return {"kind": kind, "metadata": meta, "spec": {"webhookReceivers": list(receivers)}}


def bitbucket(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "bitbucket": {"secretRef": {"name": secret}}}


CONFIGS = [
    config("ProjectConfig", "demo", "demo", bitbucket("a", "s1"), bitbucket("b", "s2")),
    config("ClusterConfig", "", "cluster", bitbucket("all", "s1")),
    # Ignored as Kargo ignores them: a ProjectConfig not named as its namespace, a
    # ClusterConfig not named "cluster"; a GitHub receiver; a Bitbucket one without a name.
    config("ProjectConfig", "demo", "other", bitbucket("x", "stray")),
    config("ClusterConfig", "", "extra", bitbucket("y", "stray")),
    config("ProjectConfig", "gh", "gh", {"name": "g", "github": {"secretRef": {"name": "t"}}}),
    config("ProjectConfig", "odd", "odd", {"name": "n", "bitbucket": {"secretRef": {}}}),
]


def test_project_secrets_in_the_project_and_cluster_secrets_in_the_system_namespace() -> None:
    assert referenced_secrets(CONFIGS, "kargo-system") == {
        ("demo", "s1"),
        ("demo", "s2"),
        ("kargo-system", "s1"),
    }


def test_routing_reads_exactly_the_secrets_that_are_followed() -> None:
    asked: set[tuple[str, str]] = set()

    def lookup(namespace: str, name: str) -> None:
        asked.add((namespace, name))

    resolve(CONFIGS, lookup, BaseURL.parse("https://h"), "kargo-system")
    # A receiver naming no Secret is reported as missing; there is nothing to follow.
    assert asked - {("odd", "")} == referenced_secrets(CONFIGS, "kargo-system")
