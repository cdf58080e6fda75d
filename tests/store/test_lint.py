"""``lint.findings``: what ``kargo-bitbucket lint`` prints, from indexes as one-shot
commands load them."""

from __future__ import annotations

from kargo_bitbucket.config import DEFAULT_SYSTEM_NAMESPACE
from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.lint import findings
from kargo_bitbucket.store.index import Indexes
from tests.builders import cluster_config, project


def loaded(*configs: dict[str, object]) -> Indexes:
    index = Indexes(BaseURL.parse("http://one-shot.invalid"), DEFAULT_SYSTEM_NAMESPACE)
    for config in configs:
        index.put_config(config)
    index.reroute()
    return index


def test_a_config_kargo_ignores_is_a_finding_in_its_namespace() -> None:
    """A ProjectConfig not named after its namespace (or a ClusterConfig not named cluster)
    publishes nothing, in Kargo or here, and has no Ready condition to say so: serve says it
    once in its log, and lint must too, not "no receiver left out"."""
    misnamed = project("proj2", ("bb", "bb-secret"))
    misnamed["metadata"]["name"] = "config"
    other = cluster_config(("bb", "bb-secret"))
    other["metadata"]["name"] = "default"
    index = loaded(misnamed, other, project("proj3", ("bb", "bb-secret")))
    project_line = (
        "ProjectConfig proj2/config is ignored, as Kargo ignores it: only the one named "
        "'proj2' is read"
    )
    cluster_line = (
        "ClusterConfig default is ignored, as Kargo ignores it: only the one named "
        "'cluster' is read"
    )
    missing = (
        "receivers of ProjectConfig proj3 not all published: receiver 'bb': Secret "
        "proj3/bb-secret not found"
    )
    assert findings(index) == [cluster_line, project_line, missing]
    assert findings(index, "proj2") == [cluster_line, project_line]
    assert findings(index, "proj3") == [cluster_line, missing]
