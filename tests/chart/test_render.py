"""The chart rendered offline: lint, the values schema, clear failures, and what each value
changes in the objects an operator gets."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kargo_bitbucket.metrics import Metrics
from kargo_bitbucket.outcomes import Outcome, Result
from tests.chart.support import CHART, VALUES, VALUES_FILES, Helm, objects, of_kind, one
from tests.support import REPO, TOOLS

BASE_URL = ("--set", "baseURL=https://kargo-webhooks.example.com")


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(found)


def services(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Services by name, each as its type, labels, annotations and port name -> (port,
    target)."""
    return {
        s["metadata"]["name"]: {
            "type": s["spec"]["type"],
            "labels": s["metadata"]["labels"],
            "annotations": s["metadata"].get("annotations") or {},
            "ports": {p["name"]: (p["port"], p["targetPort"]) for p in s["spec"]["ports"]},
        }
        for s in of_kind(docs, "Service")
    }


def selected(selector: dict[str, str], docs: list[dict[str, Any]]) -> list[str]:
    """The Services whose labels a ServiceMonitor's matchLabels select."""
    return [
        s["metadata"]["name"]
        for s in of_kind(docs, "Service")
        if selector.items() <= s["metadata"]["labels"].items()
    ]


def rules(role: dict[str, Any]) -> list[tuple[str, ...]]:
    """A role's grants as (resource, verb, names) triples, flattened."""
    return sorted(
        (resource, verb, ",".join(rule.get("resourceNames") or []))
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    )


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_lint_strict(helm: Helm, values: Path) -> None:
    result = helm.run("lint", "--strict", str(CHART), "--values", str(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_missing_base_url_fails_with_what_to_set(helm: Helm) -> None:
    result = helm.run("template", str(CHART), check=False)
    assert result.returncode != 0
    assert "baseURL is required" in result.stderr
    assert "--set baseURL=https://" in result.stderr


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ('replicas="two"', "replicas"),
        ('publish="yes"', "publish"),
        ('server.bodyLimit="2MB"', "server.bodyLimit"),
        ("server.leaseDuration=1", "server.leaseDuration"),
        ('secretAccess.mode="everything"', "secretAccess.mode"),
        ('secretAccess.namespaced=[{"namespace":"demo","secrets":"bb"}]', "secrets"),
        ('image.digest="latest"', "image.digest"),
        ('logLevel="verbose"', "logLevel"),
        ('networkPolicy.apiServer.ports=["https"]', "networkPolicy.apiServer.ports"),
        ('ingress.enabled="true"', "ingress.enabled"),
        ('extraArgs="--no-publish"', "extraArgs"),
        ('tolerations={"key":"a"}', "tolerations"),
        ('metrics.service.port="9090"', "metrics.service.port"),
        ('metrics.service.labels={"team":1}', "metrics.service.labels"),
        ('baseURL="https://kargo.example.com/?x=1"', "baseURL"),
        ('baseURL="https://kargo.example.com/hooks(v2)"', "baseURL"),
        ('baseURL="CHANGE-ME-to-the-public-URL-Bitbucket-reaches"', "baseURL"),
        # The server refuses credentials in the base URL (it is published): pods would crash.
        ('baseURL="https://hooks@kargo.example.com"', "baseURL"),
        ('baseURL="https://user:pass@kargo.example.com/webhooks"', "baseURL"),
        ('baseURl="https://kargo.example.com"', "baseURl"),
        ("server.historySize=2000000", "server.historySize"),
        ("server.bodyTimeout=100000", "server.bodyTimeout"),
        ("server.shutdownGrace=0", "server.shutdownGrace"),
    ],
)
def test_schema_rejects_wrong_values_naming_the_field(helm: Helm, setting: str, field: str) -> None:
    # --set-json after --set-json: a baseURL setting overrides the valid one.
    valid = ("--set-json", 'baseURL="https://kargo-webhooks.example.com"')
    result = helm.run("template", str(CHART), *valid, "--set-json", setting, check=False)
    assert result.returncode != 0, f"{setting} was accepted"
    assert "schema" in result.stderr and field in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["secretAccess.mode=namespaced"],
            "secretAccess.mode=namespaced needs secretAccess.namespaced",
        ),
        (["server.shutdownGrace=30"], "terminationGracePeriodSeconds (30) must exceed"),
        (["extraArgs[0]=--shutdown-grace=60"], "plus the shutdown grace (60 s)"),
        (["baseURL=https://kargo.example.com:99999"], "has an invalid port"),
        (["baseURL=https://kargo.example.com:80:80"], "has an invalid port"),
        (["metrics.port=8080"], "metrics.port must not be 8080"),
        (["metrics.enabled=false", "metrics.serviceMonitor.enabled=true"], "needs metrics.enabled"),
        (
            ["metrics.service.enabled=false", "metrics.serviceMonitor.enabled=true"],
            "needs metrics.service.enabled",
        ),
        (
            ["metrics.enabled=false", "metrics.prometheusRule.enabled=true"],
            "metrics.prometheusRule.enabled needs metrics.enabled",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_reason(
    helm: Helm, settings: list[str], message: str
) -> None:
    sets = [arg for s in settings for arg in ("--set", s)]
    result = helm.run("template", str(CHART), *BASE_URL, *sets, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def render_deploy(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / ".ci" / "render-deploy"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """What .ci/render-deploy reads and writes, copied (helm linked from .tools/bin)."""
    if not (TOOLS / "helm").exists():
        pytest.skip(".ci/render-deploy uses .tools/bin/helm (.ci/get-helm), absent here")
    for part in (".ci", "charts", "deploy"):
        shutil.copytree(REPO / part, tmp_path / part)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "src" / "kargo_bitbucket").mkdir(parents=True)
    shutil.copy(
        REPO / "src" / "kargo_bitbucket" / "__init__.py", tmp_path / "src" / "kargo_bitbucket"
    )
    (tmp_path / ".tools").symlink_to(REPO / ".tools")
    return tmp_path


def test_deploy_base_is_what_the_chart_renders(repo_copy: Path) -> None:
    assert render_deploy(REPO, "--check").returncode == 0
    deployment = repo_copy / "deploy" / "base" / "deployment.yaml"
    deployment.write_text(deployment.read_text().replace("replicas: 2", "replicas: 3"))
    drifted = render_deploy(repo_copy, "--check")
    assert drifted.returncode == 1
    assert "+  replicas: 2" in drifted.stderr and "run .ci/render-deploy" in drifted.stderr
    assert render_deploy(repo_copy).returncode == 0
    assert render_deploy(repo_copy, "--check").returncode == 0


def test_chart_and_package_versions_must_agree(repo_copy: Path) -> None:
    chart = repo_copy / "charts" / "kargo-bitbucket" / "Chart.yaml"
    chart.write_text(
        re.sub(r"^appVersion: .*$", 'appVersion: "9.9.9"', chart.read_text(), flags=re.M)
    )
    result = render_deploy(repo_copy, "--check")
    assert result.returncode == 1
    assert "'appVersion': '9.9.9'" in result.stderr and "keep them equal" in result.stderr


def test_defaults_keep_the_hardening_and_two_replicas(helm: Helm) -> None:
    docs = objects(helm.template(VALUES / "defaults.yaml"))
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(docs)
    assert deployment["spec"]["replicas"] == 2
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert main["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["image"] == f"kargo-bitbucket:{chart_version()}"
    assert main["args"] == [
        "serve",
        "--kubernetes",
        "--listen",
        "0.0.0.0:8080",
        "--admin-listen",
        "0.0.0.0:9090",
    ]
    lease = next(r for r in of_kind(docs, "Role") if "leader" in r["metadata"]["name"])
    assert rules(lease) == [
        ("leases", "create", ""),
        ("leases", "get", "kargo-bitbucket"),
        ("leases", "update", "kargo-bitbucket"),
    ]
    secrets = next(
        r for r in of_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-secrets")
    )
    assert rules(secrets) == [("secrets", "get", ""), ("secrets", "watch", "")]
    assert not of_kind(docs, "Ingress") and not of_kind(docs, "ServiceMonitor")
    policy = one(docs, "NetworkPolicy")["spec"]
    assert [r["ports"][0]["port"] for r in policy["ingress"]] == ["http", "metrics"]
    (egress,) = policy["egress"]  # no cluster to look the API server up in: any address
    assert "to" not in egress and [p["port"] for p in egress["ports"]] == [443, 6443]


def test_metrics_have_a_cluster_only_service_of_their_own(helm: Helm) -> None:
    """The webhook Service may face the internet (LoadBalancer, Ingress): it must not carry
    /metrics and /deliveries; a ClusterIP Service of their own does, and the NetworkPolicy
    admits the pods' side of both."""
    docs = objects(helm.template(VALUES / "defaults.yaml"))
    found = services(docs)
    assert {name: (s["type"], s["ports"]) for name, s in found.items()} == {
        "kargo-bitbucket": ("ClusterIP", {"http": (80, "http")}),
        "kargo-bitbucket-metrics": ("ClusterIP", {"metrics": (9090, "metrics")}),
    }
    assert found["kargo-bitbucket-metrics"]["labels"]["app.kubernetes.io/component"] == "metrics"
    assert "app.kubernetes.io/component" not in found["kargo-bitbucket"]["labels"]
    ports = {p["name"] for p in container(docs)["ports"]}
    admitted = {
        p["port"] for r in one(docs, "NetworkPolicy")["spec"]["ingress"] for p in r["ports"]
    }
    targets = {t for s in found.values() for _, t in s["ports"].values()}
    assert targets <= ports and targets <= admitted


def test_metrics_service_can_be_left_out(helm: Helm) -> None:
    docs = objects(
        helm.template(VALUES / "defaults.yaml", "--set", "metrics.service.enabled=false")
    )
    assert list(services(docs)) == ["kargo-bitbucket"]
    assert "--admin-listen" in container(docs)["args"]  # the listener stays, for port-forward


def chart_version() -> str:
    match = re.search(r"^appVersion: \"?([^\"\s]+)", (CHART / "Chart.yaml").read_text(), re.M)
    assert match
    return match.group(1)


# What the chart does not set on purpose: fixed by the Deployment, or given through env.
FIXED_SERVE_OPTIONS = {
    "--help", "--filename", "--state", "--listen", "--admin-listen", "--kubernetes",
    "--kubeconfig", "--context", "--lease-namespace", "--base-url", "--no-publish", "--log-level",
    "--validate",  # only with --filename, which the chart does not use
}  # fmt: skip


def test_every_serve_setting_has_a_value(helm: Helm) -> None:
    """Each option of ``serve --help`` is either a chart value that reaches the args or fixed
    by the chart; a new option fails here until the chart has a value for it."""
    usage = subprocess.run(
        [sys.executable, "-m", "kargo_bitbucket", "serve", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    options = set(re.findall(r"(--[a-z][a-z-]+)", usage)) - FIXED_SERVE_OPTIONS
    args = container(objects(helm.template(VALUES / "everything.yaml")))["args"]
    given = {arg.split("=", 1)[0] for arg in args}
    assert options - given == set(), (
        "serve options the chart cannot set: give each a server.* value (values.yaml, "
        "values.schema.json, the $flags of templates/deployment.yaml, tests/chart/values/"
        "everything.yaml), or list it above if the chart fixes it"
    )


def test_everything_reaches_the_objects(helm: Helm) -> None:
    docs = objects(helm.template(VALUES / "everything.yaml", release="r", namespace="platform"))
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(docs)
    assert main["image"] == (
        "registry.example.com/platform/kargo-bitbucket:0.1.0-rc1@sha256:" + "0123456789abcdef" * 4
    )
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["serviceAccountName"] == "kargo-webhooks"
    assert pod["priorityClassName"] == "platform-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"] and "podAntiAffinity" not in pod["affinity"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert pod["terminationGracePeriodSeconds"] == 40
    assert main["lifecycle"]["preStop"]["sleep"]["seconds"] == 10
    assert main["resources"]["limits"] == {"memory": "512Mi"}
    assert {"name": "TZ", "value": "UTC"} in main["env"]
    assert main["args"][-1] == "--lease-duration=20"  # extraArgs last: they win
    assert "--body-limit=1048576" in main["args"] and "--header-timeout=4.5" in main["args"]
    assert "--max-connections=500" in main["args"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["example.com/tier"] == "edge" and labels["example.com/team"] == "platform"
    for doc in docs:
        assert doc["metadata"]["labels"]["example.com/team"] == "platform", doc["kind"]
        assert doc["metadata"]["annotations"]["example.com/contact"] == "platform@example.com"
    ingress = one(docs, "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["hooks.example.com"], "secretName": "hooks-tls"}]
    (rule,) = ingress["rules"]
    assert rule["host"] == "hooks.example.com"
    assert [p["path"] for p in rule["http"]["paths"]] == ["/webhooks/bitbucket/"]
    webhooks, metrics = services(docs)["webhooks"], services(docs)["webhooks-metrics"]
    assert (webhooks["type"], webhooks["ports"]) == ("LoadBalancer", {"http": (8080, "http")})
    assert webhooks["annotations"]["example.com/service"] == "webhooks"
    assert (metrics["type"], metrics["ports"]) == ("ClusterIP", {"metrics": (9200, "metrics")})
    assert metrics["labels"]["example.com/exposure"] == "cluster"
    assert metrics["annotations"]["example.com/scrape"] == "internal"
    assert "example.com/service" not in metrics["annotations"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (
        annotations["example.com/pod"] == "webhooks" and "prometheus.io/scrape" not in annotations
    )
    account = one(docs, "ServiceAccount")["metadata"]
    assert (account["name"], account["annotations"]["example.com/owner"]) == (
        "kargo-webhooks",
        "platform",
    )
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"http": 8080, "metrics": 9100}
    monitor = one(docs, "ServiceMonitor")
    assert selected(monitor["spec"]["selector"]["matchLabels"], docs) == ["webhooks-metrics"]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["platform"]}
    policy = one(docs, "NetworkPolicy")["spec"]
    assert [r["from"][0]["namespaceSelector"] for r in policy["ingress"]] == [
        {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
        {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    ]
    api, proxy = policy["egress"]
    assert [t["ipBlock"]["cidr"] for t in api["to"]] == ["192.0.2.10/32", "192.0.2.11/32"]
    assert api["ports"] == [{"port": 6443, "protocol": "TCP"}]
    assert proxy["ports"] == [{"port": 3128, "protocol": "TCP"}]
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


def test_minimal_turns_each_part_off(helm: Helm) -> None:
    docs = objects(helm.template(VALUES / "minimal.yaml"))
    main = container(docs)
    assert main["args"][-3:] == ["--admin-listen", "off", "--no-publish"]
    assert [p["name"] for p in main["ports"]] == ["http"]
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["http"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert not any(key.startswith("prometheus.io/") for key in annotations)
    kinds = {doc["kind"] for doc in docs}
    assert not kinds & {"NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor", "Role"}
    # Without publishing: no status writes, no Lease.
    main_role = next(
        r for r in of_kind(docs, "ClusterRole") if not r["metadata"]["name"].endswith("-secrets")
    )
    assert not [r for r in rules(main_role) if "/status" in r[0]]
    ingress = one(docs, "Ingress")
    assert "tls" not in ingress["spec"] and not ingress["metadata"].get("annotations")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "kargo.internal.example.com"
    assert rule["http"]["paths"][0]["path"] == "/hooks/bitbucket/"


def test_namespaced_secret_access_names_each_secret(helm: Helm) -> None:
    docs = objects(helm.template(VALUES / "namespaced.yaml"))
    assert not [
        r for r in of_kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("-secrets")
    ]
    secret_roles = {
        r["metadata"]["namespace"]: rules(r)
        for r in of_kind(docs, "Role")
        if r["metadata"]["name"].endswith("-secrets")
    }
    names = "bitbucket-webhook,bitbucket-webhook-dc"
    assert secret_roles == {
        "chart-values-demo": [("secrets", "get", names), ("secrets", "watch", names)],
        "chart-values-system": [
            ("secrets", "get", "bitbucket-webhook"),
            ("secrets", "watch", "bitbucket-webhook"),
        ],
    }
    bindings = {
        b["metadata"]["namespace"]: b["subjects"]
        for b in of_kind(docs, "RoleBinding")
        if b["metadata"]["name"].endswith("-secrets")
    }
    subject = [{"kind": "ServiceAccount", "name": "kargo-bitbucket", "namespace": "kargo"}]
    assert bindings == {"chart-values-demo": subject, "chart-values-system": subject}


def test_a_new_base_url_rolls_the_pods(helm: Helm) -> None:
    def pod_annotations(base_url: str) -> dict[str, str]:
        docs = objects(helm.template(None, "--set", f"baseURL={base_url}"))
        return dict(one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"])

    first = pod_annotations("https://kargo-webhooks.example.com")
    assert pod_annotations("https://kargo-webhooks.example.com") == first
    assert pod_annotations("https://kargo.example.com/webhooks") != first


def test_clusters_older_than_1_30_are_refused(helm: Helm) -> None:
    """The preStop sleep action needs Kubernetes 1.30."""
    result = helm.run("template", str(CHART), *BASE_URL, "--kube-version", "1.29.5", check=False)
    assert result.returncode != 0 and "kubeVersion" in result.stderr
    assert helm.run("template", str(CHART), *BASE_URL, "--kube-version", "1.30.0").returncode == 0


def exported() -> dict[str, set[str]]:
    """Each sample name the receiver exports, with its label names: a scrape of metrics that
    counted one of everything."""
    metrics = Metrics(
        sizes=lambda: {"Warehouse": 1},
        restarts=lambda: {("Warehouse", "expired"): 1},
        api_failures=lambda: {("Warehouse", "forbidden"): 1},
        closed_connections=lambda: [("cap", 1)],
    )
    metrics.count_delivery("repo:push", Result.REFRESHED, 0.01)
    metrics.count_refresh("Warehouse", Outcome.FAILED)
    metrics.count_signature_failure("invalid", "demo/bitbucket")
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def test_alerts_read_only_metrics_labels_and_results_the_receiver_exports(helm: Helm) -> None:
    docs = objects(helm.template(VALUES / "everything.yaml", release="r", namespace="platform"))
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {
        "KargoBitbucketRefreshesFailing",
        "KargoBitbucketDeliveriesFailing",
        "KargoBitbucketWebhookSecretMismatch",
        "KargoBitbucketKubernetesAPIFailing",
        "KargoBitbucketDown",
    }
    scraped = exported()
    target_labels = {"namespace", "job"}  # what the Prometheus Operator's scrape adds
    results = {str(r) for r in Result} | {str(o) for o in Outcome}
    for name, alert in alerts.items():
        expr = alert["expr"]
        assert 'namespace="platform"' in expr, name
        for metric in re.findall(r"\bkargo_bitbucket_\w+", expr):
            assert metric in scraped, f"{name}: {metric} is not exported"
            used = set(re.findall(r"(\w+)=~?\"", expr)) | {
                label.strip()
                for group in re.findall(r"by \(([^)]*)\)", expr)
                for label in group.split(",")
            }
            assert used <= scraped[metric] | target_labels, f"{name}: {used}"
        for values in re.findall(r'result=~?"([^"]*)"', expr):
            assert set(values.split("|")) <= results, f"{name}: {values}"
        assert alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert {a.get("for") for a in alerts.values()} == {"15m", None}
    assert "for" not in alerts["KargoBitbucketWebhookSecretMismatch"]
    assert (
        "{{ $labels.receiver }}"
        in alerts["KargoBitbucketWebhookSecretMismatch"]["annotations"]["summary"]
    )  # Prometheus's templating, not Helm's
    assert (
        selected({"app.kubernetes.io/component": "metrics"}, docs) == ["webhooks-metrics"]
        and 'job="webhooks-metrics"' in alerts["KargoBitbucketDown"]["expr"]
    )


def test_alerts_are_off_by_default_and_down_needs_the_service_monitor(helm: Helm) -> None:
    assert not of_kind(objects(helm.template(None, *BASE_URL)), "PrometheusRule")
    rule = one(
        objects(helm.template(None, *BASE_URL, "--set", "metrics.prometheusRule.enabled=true")),
        "PrometheusRule",
    )
    alerts = [r["alert"] for r in rule["spec"]["groups"][0]["rules"]]
    assert "KargoBitbucketDown" not in alerts and len(alerts) == 4
