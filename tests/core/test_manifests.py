"""Tests for manifest parsing and CRD-like checking (core.manifests)."""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kargo_bitbucket.core.manifests import (
    KINDS,
    ManifestError,
    Resource,
    UnknownFieldError,
    UnknownKindError,
    canonical_kind,
    parse_documents,
    validate_object,
)
from kargo_bitbucket.core.manifests.names import annotation_key, qualified_name
from kargo_bitbucket.core.promotions import awaited_pr_urls
from tests.builders import parse_manifests
from tests.support import tool

SRC = "manifests/demo.yaml"

WAREHOUSE = """\
apiVersion: kargo.akuity.io/v1alpha1
kind: Warehouse
metadata:
  name: app
  namespace: demo
spec:
  subscriptions:
  - git:
      repoURL: https://bitbucket.org/acme/app.git
      branch: main
"""

PROJECT_CONFIG = """\
apiVersion: kargo.akuity.io/v1alpha1
kind: ProjectConfig
metadata:
  name: demo
  namespace: demo
spec:
  webhookReceivers:
  - name: bb-receiver
    bitbucket:
      secretRef:
        name: bb-secret
"""

CLUSTER_CONFIG = """\
apiVersion: kargo.akuity.io/v1alpha1
kind: ClusterConfig
metadata:
  name: cluster
spec:
  webhookReceivers:
  - name: bb-cluster
    bitbucket:
      secretRef:
        name: bb-secret
"""

SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: bb-secret
  namespace: demo
data:
  secret: bXlzdXBlcnNlY3JldA==
"""

PROMOTION = """\
apiVersion: kargo.akuity.io/v1alpha1
kind: Promotion
metadata:
  name: prod.01h
  namespace: demo
spec:
  stage: prod
  freight: abc123
  steps:
  - uses: git-open-pr
    as: open-pr
    config:
      repoURL: https://bitbucket.org/acme/app.git
  - uses: git-wait-for-pr
    as: wait
    config:
      prNumber: ${{ outputs['open-pr'].pr.id }}
status:
  phase: Running
  currentStep: 1
  state:
    wait:
      pr:
        url: https://bitbucket.org/acme/app/pull-requests/7
"""


def parse(text: str, **kwargs: Any) -> list[Resource]:
    return parse_manifests(textwrap.dedent(text), SRC, **kwargs)


def error_of(text: str, **kwargs: Any) -> str:
    with pytest.raises(ManifestError) as info:
        parse(text, **kwargs)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"{SRC}: document "), message
    return message


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# ---------------------------------------------------------------------------- valid input


@pytest.mark.parametrize(
    ("text", "kind", "namespace", "name"),
    [
        (WAREHOUSE, "Warehouse", "demo", "app"),
        (PROJECT_CONFIG, "ProjectConfig", "demo", "demo"),
        (CLUSTER_CONFIG, "ClusterConfig", "", "cluster"),
        (SECRET, "Secret", "demo", "bb-secret"),
        (PROMOTION, "Promotion", "demo", "prod.01h"),
    ],
)
def test_valid_kinds(text: str, kind: str, namespace: str, name: str) -> None:
    (resource,) = parse(text)
    assert (resource.kind, resource.namespace, resource.name) == (kind, namespace, name)
    assert resource.body["kind"] == kind
    assert resource.body["metadata"]["name"] == name
    assert resource.warnings == ()


def test_all_kinds_in_one_stream_with_empty_documents() -> None:
    text = "---\n" + "---\n".join([WAREHOUSE, "", PROJECT_CONFIG, "# only a comment\n", SECRET])
    resources = parse(text + "---\n---\n")
    assert [r.kind for r in resources] == ["Warehouse", "ProjectConfig", "Secret"]


def test_empty_text_gives_nothing() -> None:
    assert parse("") == []
    assert parse("---\n---\n# nothing\n") == []


def test_full_git_subscription_is_kept_verbatim() -> None:
    text = edit(
        WAREHOUSE,
        "      branch: main\n",
        """\
      commitSelectionStrategy: SemVer
      semverConstraint: ^1.2.0
      strictSemvers: true
      allowTagsRegexes: ["^v1\\\\."]
      ignoreTagsRegexes: ["-rc"]
      includePaths: [charts/app]
      excludePaths: ["glob:*.md"]
      allowTags: "^v"
      ignoreTags: [v1.0.0]
      expressionFilter: "tag != 'v1.2.3'"
      insecureSkipTLSVerify: false
      discoveryLimit: 20
""",
    )
    (resource,) = parse(text)
    git = resource.body["spec"]["subscriptions"][0]["git"]
    assert git["commitSelectionStrategy"] == "SemVer"
    assert git["allowTagsRegexes"] == ["^v1\\."]
    assert git["strictSemvers"] is True
    assert git["ignoreTags"] == ["v1.0.0"]
    assert git["discoveryLimit"] == 20
    assert resource.warnings == ()


@pytest.mark.parametrize(
    "fields",
    [
        "allowTagsRegexes: ['[']\n      ignoreTagsRegexes: ['(unclosed']",
        "commitSelectionStrategy: SemVer\n      semverConstraint: '>>1'",
        "semverConstraint: not a constraint at all",
    ],
)
def test_unevaluable_regex_or_constraint_is_accepted(fields: str) -> None:
    (resource,) = parse(edit(WAREHOUSE, "branch: main", fields))
    assert resource.kind == "Warehouse"


def test_other_subscription_types_and_generic_ones_are_kept() -> None:
    text = edit(
        WAREHOUSE,
        "  - git:\n",
        """\
  - image:
      repoURL: public.ecr.aws/nginx/nginx
      imageSelectionStrategy: NewestBuild
  - chart:
      repoURL: oci://ghcr.io/acme/charts/app
  - mything:
      name: custom
      config: {a: 1}
  - git:
""",
    )
    (resource,) = parse(text)
    subs = resource.body["spec"]["subscriptions"]
    assert [next(iter(s)) for s in subs] == ["image", "chart", "mything", "git"]
    assert subs[2]["mything"]["config"] == {"a": 1}


@pytest.mark.parametrize(
    "url",
    [
        "https://bitbucket.org/acme/app",
        "https://user@bitbucket.org/acme/app.git",
        "ssh://git@bitbucket.example.com:7999/proj/app.git",
        "git@bitbucket.org:acme/app.git",
        "http://localhost:7990/scm/proj/app.git",
    ],
)
def test_git_url_forms_accepted(url: str) -> None:
    parse(edit(WAREHOUSE, "https://bitbucket.org/acme/app.git", url))


def test_secret_string_data_is_folded_into_base64_data() -> None:
    text = edit(SECRET, "data:\n  secret: bXlzdXBlcnNlY3JldA==\n", "")
    text += "stringData:\n  secret: mysupersecret\n  note: 'héllo'\n"
    text += "data:\n  secret: b2xk\n  x: eQ==\n"
    (resource,) = parse(text)
    assert "stringData" not in resource.body
    data = resource.body["data"]
    assert base64.b64decode(data["secret"]) == b"mysupersecret"  # stringData wins
    assert base64.b64decode(data["note"]) == "héllo".encode()
    assert data["x"] == "eQ=="


def test_secret_base64_is_normalized_like_go() -> None:
    (resource,) = parse(edit(SECRET, "bXlzdXBlcnNlY3JldA==", "|\n    bXlzdXBl\n    cnNlY3JldA=="))
    assert resource.body["data"]["secret"] == "bXlzdXBlcnNlY3JldA=="


def test_non_bitbucket_receivers_are_kept_and_their_unknown_fields_noted() -> None:
    text = PROJECT_CONFIG + textwrap.indent(
        "- name: gh\n  github:\n    secretRef: {name: gh-secret}\n    whatever: [1, 2]\n"
        "- name: gl\n  gitlab: {secretRef: {name: x}}\n"
        "- name: gen\n  generic:\n    secretRef: {name: g}\n    actions:\n"
        "    - action: Refresh\n      parameters: {a: b}\n"
        "      targetSelectionCriteria:\n      - kind: Warehouse\n"
        "        labelSelector: {matchLabels: {app: x}}\n"
        "        indexSelector:\n          matchIndices:\n"
        "          - {key: subscribedURLs, operator: Equals, value: 'https://h/r'}\n",
        "  ",
    )
    (resource,) = parse(text)
    receivers = resource.body["spec"]["webhookReceivers"]
    assert [r["name"] for r in receivers] == ["bb-receiver", "gh", "gl", "gen"]
    assert receivers[1]["github"]["whatever"] == [1, 2]
    (warning,) = resource.warnings
    assert "spec.webhookReceivers[1].github.whatever: unknown field, kept" in warning


def test_a_receiver_type_newer_than_this_build_is_kept_with_a_warning() -> None:
    """SPEC §2: other receivers never fail the Bitbucket ones, even under strict checking."""
    text = PROJECT_CONFIG + "  - name: future\n    bitbucketdc: {secretRef: {name: other}}\n"
    (resource,) = parse(text, strict=True)
    receivers = resource.body["spec"]["webhookReceivers"]
    assert receivers[1] == {"name": "future", "bitbucketdc": {"secretRef": {"name": "other"}}}
    (warning,) = resource.warnings
    assert warning == (
        f"{SRC}: document 1 (ProjectConfig demo/demo): spec.webhookReceivers[1].bitbucketdc: "
        "receiver type this build does not know (newer Kargo?): kept as is, "
        "no URL is published for it"
    )


@pytest.mark.parametrize(
    ("receiver", "got"),
    [
        ("{name: r, bitbucketdc: x}", "got none (unknown fields: bitbucketdc)"),
        ("{name: r, a: {}, b: {}}", "got none (unknown fields: a, b)"),
        ("{name: r, actions: [{action: Refresh}]}", "got none (unknown fields: actions)"),
        ("{name: r}", "got none"),
    ],
)
def test_a_receiver_that_is_no_newer_type_is_refused(receiver: str, got: str) -> None:
    message = error_of(PROJECT_CONFIG + f"  - {receiver}\n")
    assert "spec.webhookReceivers[1]: must configure exactly one receiver type (" in message
    assert message.endswith(f"; {got} (line 12)")


@pytest.mark.parametrize(
    ("subscription", "field"),
    [
        ("git: {repoURL: https://h/a/b, brnach: main}", "git.brnach"),
        ("image: {repoURL: ghcr.io/a/b, constrant: ^1}", "image.constrant"),
        ("chart: {repoURL: https://charts.h/, nmae: c}", "chart.nmae"),
    ],
)
def test_strict_refuses_unknown_fields_inside_subscriptions(subscription: str, field: str) -> None:
    text = WAREHOUSE.split("  subscriptions:")[0] + f"  subscriptions:\n    - {subscription}\n"
    with pytest.raises(UnknownFieldError, match=rf"spec\.subscriptions\[0\]\.{field}: unknown"):
        parse(text, strict=True)
    (resource,) = parse(text)
    assert f"spec.subscriptions[0].{field}: unknown field" in resource.warnings[0]


def test_a_misspelt_required_field_is_not_offered_to_validate_warn() -> None:
    """``repoUrl:`` with no ``repoURL``: --validate=warn would refuse it as missing, so the
    strict error is not the UnknownFieldError whose message says --validate=warn keeps it,
    and the missing field names the misspelling."""
    text = WAREHOUSE.split("  subscriptions:")[0] + (
        "  subscriptions:\n    - git: {repoUrl: https://h/a/b}\n"
    )
    with pytest.raises(ManifestError, match=r"git\.repoUrl: unknown field; did you mean") as e:
        parse(text, strict=True)
    assert not isinstance(e.value, UnknownFieldError)
    with pytest.raises(
        ManifestError, match=r'repoURL: required field is missing \(misspelt as "repoUrl"\?\)'
    ):
        parse(text)
    both = text.replace("{repoUrl:", "{repoURL: https://h/a/c, repoUrl:")
    with pytest.raises(UnknownFieldError):  # kept with --validate=warn, with a warning
        parse(both, strict=True)


def test_strict_keeps_unknown_fields_elsewhere_with_a_warning() -> None:
    (resource,) = parse(WAREHOUSE + "  newThing: {a: b}\n", strict=True)
    assert resource.body["spec"]["newThing"] == {"a": "b"}
    assert "spec.newThing: unknown field" in resource.warnings[0]


def test_status_is_open_for_server_written_fields() -> None:
    (resource,) = parse(PROMOTION + "  freightCollection: {id: x}\n")
    assert resource.warnings == ()
    assert resource.body["status"]["currentStep"] == 1
    assert resource.body["status"]["state"]["wait"]["pr"]["url"].endswith("/7")


@pytest.mark.parametrize("config", ["main", "1", "true", "[]", "[a]", "null"])
def test_step_config_may_be_any_json(config: str) -> None:
    """The CRD keeps ``config`` untyped; a wait step with an odd config still waits on its PR."""
    text = edit(PROMOTION, "    config:\n      prNumber: ${{ outputs['open-pr'].pr.id }}\n", "")
    (resource,) = parse(text.replace("    as: wait\n", f"    as: wait\n    config: {config}\n"))
    assert awaited_pr_urls(resource.body) == {"https://bitbucket.org/acme/app/pull-requests/7"}


def test_promotion_from_an_origin_with_retry_and_vars() -> None:
    text = edit(PROMOTION, "  freight: abc123\n", "  origin: {kind: Warehouse, name: app}\n")
    text = edit(text, "  steps:\n", "  vars: [{name: _x1, value: v}]\n  steps:\n")
    extra = (
        "    retry: {errorThreshold: 3, timeout: 10m, backoff: 2}\n    vars: [{name: yy, z: 1}]\n"
    )
    (resource,) = parse(edit(text, "    as: wait\n", "    as: wait\n" + extra))
    step = resource.body["spec"]["steps"][1]
    assert step["retry"] == {"errorThreshold": 3, "timeout": "10m", "backoff": 2}
    assert [w.split(": ")[2] for w in resource.warnings] == [
        "spec.steps[1].retry.backoff",
        "spec.steps[1].vars[0].z",
    ]


def test_unknown_fields_are_kept_with_a_warning() -> None:
    text = edit(WAREHOUSE, "      branch: main\n", "      branch: main\n      futureField: 3\n")
    text += "  shard: east\n  newThing: {a: b}\n"
    (resource,) = parse(text)
    assert resource.body["spec"]["newThing"] == {"a": "b"}
    assert resource.body["spec"]["subscriptions"][0]["git"]["futureField"] == 3
    assert len(resource.warnings) == 2
    assert all(len(w.splitlines()) == 1 for w in resource.warnings)
    assert "spec.subscriptions[0].git.futureField: unknown field" in resource.warnings[0]
    assert resource.warnings[1].startswith(f"{SRC}: document 1 (Warehouse demo/app): spec.newThing")


def test_a_warning_escapes_what_would_turn_a_terminal_line_around() -> None:
    """A key with U+202E (right-to-left override) or U+200B is printed escaped, as a
    control character is: the line reads as written."""
    text = edit(
        WAREHOUSE, "      branch: main\n", '      branch: main\n      "br\\u202ex\\u200b": 3\n'
    )
    (resource,) = parse(text)
    (warning,) = resource.warnings
    assert "\u202e" not in warning and "\u200b" not in warning
    assert 'git["br\\u202ex\\u200b"]: unknown field' in warning


def test_null_optional_fields_are_dropped_like_the_api_server() -> None:
    text = edit(WAREHOUSE, "      branch: main\n", "      branch:\n      strictSemvers: ~\n")
    text = edit(text, "  namespace: demo\n", "  namespace: demo\n  labels: null\n")
    (resource,) = parse(text)
    assert resource.body["spec"]["subscriptions"][0]["git"] == {
        "repoURL": "https://bitbucket.org/acme/app.git"
    }
    assert "labels" not in resource.body["metadata"]


def test_null_map_values_are_stored_as_empty_strings_like_the_api_server() -> None:
    meta = "  namespace: demo\n  labels: {a: null}\n  annotations: {b: ~}\n"
    (warehouse,) = parse(edit(WAREHOUSE, "  namespace: demo\n", meta))
    assert warehouse.body["metadata"]["labels"] == {"a": ""}
    assert warehouse.body["metadata"]["annotations"] == {"b": ""}
    text = SECRET + "stringData:\n  token: null\n"
    (secret,) = parse(edit(text, "secret: bXlzdXBlcnNlY3JldA==", "secret:"))
    assert secret.body["data"] == {"secret": "", "token": ""}


def test_no_defaults_are_added() -> None:
    (resource,) = parse(WAREHOUSE)
    git = resource.body["spec"]["subscriptions"][0]["git"]
    assert "commitSelectionStrategy" not in git
    assert "strictSemvers" not in git
    assert "interval" not in resource.body["spec"]


def test_default_namespace_fills_a_missing_namespace() -> None:
    text = edit(WAREHOUSE, "  namespace: demo\n", "")
    (resource,) = parse(text, default_namespace="team-a")
    assert resource.namespace == "team-a"
    assert list(resource.body["metadata"]) == ["name", "namespace"]
    (explicit,) = parse(WAREHOUSE, default_namespace="team-a")
    assert explicit.namespace == "demo"


def test_cluster_config_namespace_is_ignored_with_a_warning() -> None:
    text = edit(CLUSTER_CONFIG, "  name: cluster\n", "  name: cluster\n  namespace: x\n")
    (resource,) = parse(text)
    assert resource.namespace == ""
    assert "namespace" not in resource.body["metadata"]
    assert "metadata.namespace: ignored" in resource.warnings[0]


def test_kind_list_is_unpacked() -> None:
    items = [WAREHOUSE, SECRET]
    body = "".join("- " + textwrap.indent(i, "  ")[2:] for i in items)
    resources = parse("apiVersion: v1\nkind: List\nitems:\n" + body)
    assert [r.kind for r in resources] == ["Warehouse", "Secret"]
    assert parse("apiVersion: v1\nkind: List\nitems: []\n") == []


def test_list_item_errors_name_the_item() -> None:
    bad = edit(WAREHOUSE, "branch: main", "branch: 1.20")
    body = "".join("- " + textwrap.indent(i, "  ")[2:] for i in [SECRET, bad])
    message = error_of("apiVersion: v1\nkind: List\nitems:\n" + body)
    assert message.startswith(f"{SRC}: document 1, items[1] (Warehouse demo/app): ")
    assert "spec.subscriptions[0].git.branch: must be a string, got number 1.20" in message


def test_list_inside_list_is_refused() -> None:
    message = error_of("apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List}\n")
    assert "document 1, items[0]: a List cannot contain another List" in message


def test_older_regex_spelling_is_kept_with_a_warning() -> None:
    (resource,) = parse(edit(WAREHOUSE, "branch: main", "allowTagsRegex: ['^v']"))
    assert resource.body["spec"]["subscriptions"][0]["git"]["allowTagsRegex"] == ["^v"]
    assert "git.allowTagsRegex: older spelling of allowTagsRegexes" in resource.warnings[0]


def test_anchors_and_merge_keys() -> None:
    text = edit(
        WAREHOUSE,
        "  - git:\n      repoURL: https://bitbucket.org/acme/app.git\n      branch: main\n",
        "  - git: &g\n      repoURL: https://bitbucket.org/acme/app.git\n      branch: main\n"
        "  - git:\n      <<: *g\n      branch: dev\n",
    )
    (resource,) = parse(text)
    subs = resource.body["spec"]["subscriptions"]
    assert subs[1]["git"] == {"repoURL": "https://bitbucket.org/acme/app.git", "branch": "dev"}
    subs[0]["git"]["branch"] = "changed"
    assert subs[1]["git"]["branch"] == "dev"  # aliases are copies, not shared


def test_a_merge_key_after_a_written_key_wins_as_in_kubectl() -> None:
    """go-yaml v2 applies a mapping's entries in order, so Kubernetes follows develop here."""
    (resource,) = parse(
        edit(WAREHOUSE, "branch: main", "branch: main\n      <<: {branch: develop}")
    )
    assert resource.body["spec"]["subscriptions"][0]["git"]["branch"] == "develop"


# Plain scalars as kubectl (sigs.k8s.io/yaml, go-yaml v2) sends them, checked with
# `kubectl annotate --local -f F a=b -o json` (test_plain_scalars_match_kubectl runs it).
PLAIN_SCALARS = [
    ("y", True),
    ("Y", True),
    ("n", False),
    ("N", False),
    ("yes", True),
    ("off", False),
    ("1.20", 1.2),
    ("1e3", 1000),
    ("1E5", 100000),
    ("1.0e3", 1000),
    ("1e-3", 0.001),
    ("0o17", 15),
    ("017", 15),
    ("0x1F", 31),
    ("1_000", 1000),
    ("0b101", 5),
    ("09", 9),
    ("+.5", 0.5),
    ("1.", 1),
    ("9223372036854775808", 9223372036854775808.0),
    ("1:20", "1:20"),
    ("=", "="),
    ("1e400", "1e400"),
    ("0o9", "0o9"),
    ("tRUE", "tRUE"),
    ("~", None),
    ("2020-01-01", "2020-01-01"),
    ("<<", "<<"),
]


@pytest.mark.parametrize(("token", "value"), PLAIN_SCALARS, ids=[t for t, _ in PLAIN_SCALARS])
def test_plain_scalars_read_as_kubectl_reads_them(token: str, value: object) -> None:
    text = edit(PROMOTION, "        url: https://", f"        v: {token}\n        url: https://")
    (resource,) = parse(text)
    read = resource.body["status"]["state"]["wait"]["pr"]["v"]
    assert read == value and type(read) is type(value), read


def test_annotation_keys_are_checked_lower_cased_label_keys_as_written() -> None:
    """Kubernetes validates ``strings.ToLower(key)`` for annotations only."""
    assert annotation_key("Example.COM/owner") is None
    assert qualified_name("Example.COM/owner") == (
        "the prefix before '/' must be a lowercase DNS subdomain"
    )
    assert annotation_key("Bad/Key/x") is not None
    owned = WAREHOUSE.replace(
        "  namespace: demo\n", "  namespace: demo\n  annotations: {Example.COM/owner: me}\n", 1
    )
    (warehouse,) = parse_manifests(owned, SRC)
    assert warehouse.body["metadata"]["annotations"] == {"Example.COM/owner": "me"}
    labelled = WAREHOUSE.replace(
        "  namespace: demo\n", "  namespace: demo\n  labels: {Example.COM/owner: me}\n", 1
    )
    with pytest.raises(ManifestError, match="lowercase DNS subdomain"):
        parse_manifests(labelled, SRC)


def test_plain_scalars_match_kubectl(tmp_path: Path) -> None:
    """The table above, against kubectl itself (no cluster: ``annotate --local``)."""
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found in .tools/bin or on PATH (.ci/get-helm installs it)")
    state = "".join(f"  t{i}: {token}\n" for i, (token, _) in enumerate(PLAIN_SCALARS))
    path = tmp_path / "scalars.yaml"
    path.write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\nspec:\n{state}")
    run = [kubectl, "annotate", "--local", "-f", str(path), "a=b", "-o", "json"]
    out = subprocess.run(run, capture_output=True, check=True, text=True).stdout
    # decoded as Kubernetes decodes JSON: int64 when it fits, else a float
    sent = json.loads(out, parse_int=lambda t: int(t) if -(2**63) <= int(t) < 2**63 else float(t))
    assert sent["spec"] == {f"t{i}": value for i, (_, value) in enumerate(PLAIN_SCALARS)}


def test_keys_read_as_kubectl_writes_them() -> None:
    text = edit(
        PROMOTION, "        url: https://", "        y: a\n        1e3: b\n        url: https://"
    )
    (resource,) = parse(text)
    assert {"true": "a", "1000": "b"}.items() <= resource.body["status"]["state"]["wait"][
        "pr"
    ].items()


@pytest.mark.parametrize(
    ("token", "got"),
    [("y", "boolean y"), ("N", "boolean N"), ("1e3", "number 1e3"), ("0o17", "number 0o17")],
)
def test_yaml_1_1_words_and_numbers_are_refused_where_text_is_expected(
    token: str, got: str
) -> None:
    """kubectl sends ``branch: y`` as true: refused with the hint, not matched as branch "y"."""
    message = error_of(edit(WAREHOUSE, "branch: main", f"branch: {token}"))
    assert f"{W_GIT}.branch: must be a string, got {got} " in message, message
    assert f'(quote it to keep it as written: "{token}") (line 10)' in message, message


@pytest.mark.parametrize("token", ["=", "1:20"])
def test_equals_sign_and_colon_numbers_are_text_as_in_kubectl(token: str) -> None:
    (resource,) = parse(edit(WAREHOUSE, "spec:\n", f"spec:\n  shard: {token}\n"))
    assert resource.body["spec"]["shard"] == token


def test_y_is_a_boolean_where_a_boolean_is_expected() -> None:
    (resource,) = parse(edit(WAREHOUSE, "branch: main", "branch: main\n      strictSemvers: y"))
    assert resource.body["spec"]["subscriptions"][0]["git"]["strictSemvers"] is True


def test_timestamps_stay_strings() -> None:
    text = edit(
        WAREHOUSE,
        "  namespace: demo\n",
        "  namespace: demo\n"
        "  creationTimestamp: 2024-01-02T03:04:05Z\n  labels: {day: 2024-01-02}\n",
    )
    (resource,) = parse(text)
    assert resource.body["metadata"]["creationTimestamp"] == "2024-01-02T03:04:05Z"
    assert resource.body["metadata"]["labels"] == {"day": "2024-01-02"}


# ---------------------------------------------------------------------------- errors

W_GIT = "spec.subscriptions[0].git"

ERRORS: list[tuple[str, str, str, str, list[str]]] = [
    # (id, base, old, new, expected substrings)
    (
        "branch-float",
        WAREHOUSE,
        "branch: main",
        "branch: 1.20",
        [
            "(Warehouse demo/app): ",
            f"{W_GIT}.branch: must be a string, got number 1.20",
            ' (quote it to keep it as written: "1.20") (line 10)',
        ],
    ),
    (
        "branch-bool",
        WAREHOUSE,
        "branch: main",
        "branch: no",
        [f"{W_GIT}.branch: must be a string, got boolean no", 'keep it as written: "no")'],
    ),
    (
        "branch-pattern",
        WAREHOUSE,
        "branch: main",
        "branch: 'feature/'",
        [f"{W_GIT}.branch: must be a branch name"],
    ),
    (
        "strict-semvers-string",
        WAREHOUSE,
        "branch: main",
        'strictSemvers: "yes"',
        [f'{W_GIT}.strictSemvers: must be a boolean (true or false), got string "yes"'],
    ),
    (
        "strategy-enum",
        WAREHOUSE,
        "branch: main",
        "commitSelectionStrategy: Newest",
        [
            f"{W_GIT}.commitSelectionStrategy: must be one of NewestFromBranch, SemVer, Lexical, "
            'NewestTag; got "Newest"'
        ],
    ),
    (
        "regexes-not-list",
        WAREHOUSE,
        "branch: main",
        "allowTagsRegexes: '^v1'",
        [f'{W_GIT}.allowTagsRegexes: must be a list, got string "^v1"'],
    ),
    (
        "regexes-item-int",
        WAREHOUSE,
        "branch: main",
        "includePaths: [charts, 12]",
        [f"{W_GIT}.includePaths[1]: must be a string, got number 12"],
    ),
    (
        "ignore-tags-is-a-list",
        WAREHOUSE,
        "branch: main",
        "ignoreTags: v1.0.0",
        [f'{W_GIT}.ignoreTags: must be a list, got string "v1.0.0"'],
    ),
    (
        "discovery-limit",
        WAREHOUSE,
        "branch: main",
        "discoveryLimit: 500",
        [f"{W_GIT}.discoveryLimit: must be between 1 and 100, got 500"],
    ),
    (
        "repo-url-null",
        WAREHOUSE,
        "https://bitbucket.org/acme/app.git",
        "null",
        [f"{W_GIT}.repoURL: must be a string, got null"],
    ),
    (
        "repo-url-missing",
        WAREHOUSE,
        "repoURL: https://bitbucket.org/acme/app.git",
        "insecureSkipTLSVerify: true",
        [f"{W_GIT}.repoURL: required field is missing"],
    ),
    (
        "repo-url-not-a-url",
        WAREHOUSE,
        "https://bitbucket.org/acme/app.git",
        "bitbucket.org/acme",
        [f"{W_GIT}.repoURL: must be a Git URL"],
    ),
    (
        "git-is-list",
        WAREHOUSE,
        "  - git:\n",
        "  - git:\n    -\n",
        [f"{W_GIT}: must be an object, got list"],
    ),
    (
        "subscriptions-object",
        WAREHOUSE,
        "  - git:\n",
        "    git:\n",
        ["spec.subscriptions: must be a list, got object"],
    ),
    (
        "subscriptions-empty",
        WAREHOUSE,
        "subscriptions:\n  - git:\n      repoURL: https://bitbucket.org/acme/app.git\n"
        "      branch: main\n",
        "subscriptions: []\n",
        ["spec.subscriptions: must have at least 1 item(s)"],
    ),
    (
        "subscriptions-null",
        WAREHOUSE,
        "  - git:\n      repoURL: https://bitbucket.org/acme/app.git\n      branch: main\n",
        "",
        ["spec.subscriptions: must be a list, got null"],
    ),
    (
        "subscription-two-types",
        WAREHOUSE,
        "  - git:\n",
        "  - image: {repoURL: x}\n    git:\n",
        ["spec.subscriptions[0]: must have exactly one subscription type", "got 2: image, git"],
    ),
    (
        "spec-list",
        WAREHOUSE,
        "spec:\n  subscriptions:\n  - git:\n      repoURL: https://bitbucket.org/acme/app.git\n"
        "      branch: main\n",
        "spec: []\n",
        ["(Warehouse demo/app): spec: must be an object, got list"],
    ),
    (
        "spec-missing",
        WAREHOUSE,
        "spec:\n  subscriptions:\n  - git:\n      repoURL: https://bitbucket.org/acme/app.git\n"
        "      branch: main\n",
        "",
        ["spec: required field is missing"],
    ),
    (
        "interval",
        WAREHOUSE,
        "spec:\n",
        "spec:\n  interval: 300\n",
        ["spec.interval: must be a string, got number 300"],
    ),
    (
        "name-int",
        WAREHOUSE,
        "name: app",
        "name: 123",
        ["metadata.name: must be a string, got number 123"],
    ),
    ("name-null", WAREHOUSE, "name: app", "name:", ["metadata.name: must be a string, got null"]),
    (
        "name-syntax",
        WAREHOUSE,
        "name: app",
        "name: My_App",
        ["metadata.name: must be a lowercase RFC 1123 subdomain", 'got "My_App"'],
    ),
    (
        "namespace-syntax",
        WAREHOUSE,
        "namespace: demo",
        "namespace: demo.x",
        ["metadata.namespace: must be a lowercase RFC 1123 label"],
    ),
    (
        "namespace-missing",
        WAREHOUSE,
        "  namespace: demo\n",
        "",
        ["(Warehouse app): metadata.namespace: required field is missing"],
    ),
    (
        "metadata-missing",
        WAREHOUSE,
        "metadata:\n  name: app\n  namespace: demo\n",
        "",
        ["(Warehouse): metadata: required field is missing"],
    ),
    (
        "labels-list",
        WAREHOUSE,
        "  namespace: demo\n",
        "  namespace: demo\n  labels: [a]\n",
        ["metadata.labels: must be an object, got list"],
    ),
    (
        "label-value-int",
        WAREHOUSE,
        "  namespace: demo\n",
        "  namespace: demo\n  labels: {a: 1}\n",
        ["metadata.labels.a: must be a string, got number 1"],
    ),
    (
        "label-value-syntax",
        WAREHOUSE,
        "  namespace: demo\n",
        "  namespace: demo\n  labels: {a: 'x y'}\n",
        ["metadata.labels.a: must be empty or"],
    ),
    (
        "annotation-key",
        WAREHOUSE,
        "  namespace: demo\n",
        "  namespace: demo\n  annotations: {'Bad/Key/x': v}\n",
        ['metadata.annotations[Bad/Key/x]: invalid key "Bad/Key/x": the prefix'],
    ),
    (
        "annotation-value-int",
        WAREHOUSE,
        "  namespace: demo\n",
        "  namespace: demo\n  annotations: {kargo.akuity.io/refresh: 2026}\n",
        ["metadata.annotations[kargo.akuity.io/refresh]: must be a string, got number 2026"],
    ),
    (
        "current-step-string",
        PROMOTION,
        "currentStep: 1",
        'currentStep: "2"',
        ['(Promotion demo/prod.01h): status.currentStep: must be an integer, got string "2"'],
    ),
    (
        "current-step-float",
        PROMOTION,
        "currentStep: 1",
        "currentStep: 1.5",
        ["status.currentStep: must be an integer, got number 1.5"],
    ),
    (
        "state-list",
        PROMOTION,
        "  state:\n",
        "  state: []\n  x:\n",
        ["status.state: must be an object, got list"],
    ),
    ("phase-int", PROMOTION, "phase: Running", "phase: 1", ["status.phase: must be a string"]),
    (
        "step-uses-int",
        PROMOTION,
        "uses: git-open-pr",
        "uses: 5",
        ["spec.steps[0].uses: must be a string, got number 5"],
    ),
    (
        "step-as-bool",
        PROMOTION,
        "as: wait",
        "as: true",
        ["spec.steps[1].as: must be a string, got boolean true"],
    ),
    (
        "step-without-uses",
        PROMOTION,
        "  - uses: git-open-pr\n    as: open-pr\n",
        "  - as: open-pr\n",
        ["spec.steps[0].uses: required field is missing"],
    ),
    (
        "step-task-only",
        PROMOTION,
        "  - uses: git-open-pr\n    as: open-pr\n",
        "  - task: {name: open}\n",
        [
            "spec.steps[0].uses: required field is missing (a Promotion step must have uses set "
            "and must not reference a task) (line 10)"
        ],
    ),
    (
        "step-uses-and-task",
        PROMOTION,
        "    as: wait\n",
        "    as: wait\n    task: {name: t}\n",
        ["spec.steps[1].task: not allowed (a Promotion step must have uses set and must not"],
    ),
    (
        "promotion-no-stage",
        PROMOTION,
        "  stage: prod\n",
        "",
        ["(Promotion demo/prod.01h): spec.stage: required field is missing"],
    ),
    (
        "promotion-no-steps",
        PROMOTION,
        "  steps:\n",
        "  other:\n",
        ["spec.steps: required field is missing"],
    ),
    (
        "promotion-steps-empty",
        PROMOTION,
        "  steps:\n",
        "  steps: []\n  other:\n",
        ["spec.steps: must have at least 1 item(s) (line 9)"],
    ),
    (
        "promotion-no-freight-no-origin",
        PROMOTION,
        "  freight: abc123\n",
        "",
        ["(Promotion demo/prod.01h): spec: exactly one of freight or origin must be set (line 7)"],
    ),
    (
        "promotion-freight-and-origin",
        PROMOTION,
        "  freight: abc123\n",
        "  freight: abc123\n  origin: {kind: Warehouse, name: app}\n",
        ["spec: exactly one of freight or origin must be set"],
    ),
    (
        "promotion-freight-pattern",
        PROMOTION,
        "freight: abc123",
        "freight: ABC_1",
        ["spec.freight: must be a lowercase RFC 1123 subdomain"],
    ),
    (
        "promotion-freight-long",
        PROMOTION,
        "freight: abc123",
        "freight: " + "a" * 254,
        ["spec.freight: must be a lowercase RFC 1123 subdomain"],
    ),
    (
        "promotion-origin-kind",
        PROMOTION,
        "  freight: abc123\n",
        "  origin: {kind: Stage, name: app}\n",
        ['spec.origin.kind: must be one of Warehouse; got "Stage"'],
    ),
    (
        "retry-threshold-string",
        PROMOTION,
        "    as: wait\n",
        "    as: wait\n    retry: {errorThreshold: '3'}\n",
        ['spec.steps[1].retry.errorThreshold: must be an integer, got string "3"'],
    ),
    (
        "retry-threshold-float",
        PROMOTION,
        "    as: wait\n",
        "    as: wait\n    retry: {errorThreshold: 1.5}\n",
        ["spec.steps[1].retry.errorThreshold: must be an integer, got number 1.5"],
    ),
    (
        "retry-timeout-number",
        PROMOTION,
        "    as: wait\n",
        "    as: wait\n    retry: {timeout: 5}\n",
        ["spec.steps[1].retry.timeout: must be a string, got number 5"],
    ),
    (
        "vars-name-pattern",
        PROMOTION,
        "  steps:\n",
        "  vars: [{name: 1x}]\n  steps:\n",
        ['spec.vars[0].name: must be a letter or _, then letters, digits or _; got "1x"'],
    ),
    (
        "vars-value-number",
        PROMOTION,
        "  steps:\n",
        "  vars: [{name: x, value: 1}]\n  steps:\n",
        ["spec.vars[0].value: must be a string, got number 1"],
    ),
    (
        "step-vars-name-missing",
        PROMOTION,
        "    as: wait\n",
        "    as: wait\n    vars: [{value: v}]\n",
        ["spec.steps[1].vars[0].name: required field is missing"],
    ),
    (
        "cluster-config-name",
        CLUSTER_CONFIG,
        "name: cluster",
        "name: main",
        ['metadata.name: ClusterConfig must be named "cluster", got "main"'],
    ),
    (
        "project-config-name",
        PROJECT_CONFIG,
        "  name: demo\n",
        "  name: other\n",
        [
            "(ProjectConfig demo/other): metadata.name: a ProjectConfig must be named like its "
            'namespace (the Project) "demo", got "other"'
        ],
    ),
    (
        "receiver-duplicate",
        PROJECT_CONFIG,
        "        name: bb-secret\n",
        "        name: bb-secret\n  - name: bb-receiver\n    github: {secretRef: {name: gh}}\n",
        [
            'spec.webhookReceivers[1].name: duplicate receiver name "bb-receiver" '
            "(also spec.webhookReceivers[0])"
        ],
    ),
    (
        "receiver-name-syntax",
        PROJECT_CONFIG,
        "name: bb-receiver",
        "name: BB_Receiver",
        ["spec.webhookReceivers[0].name: must be a lowercase RFC 1123 subdomain"],
    ),
    (
        "receiver-name-long",
        PROJECT_CONFIG,
        "name: bb-receiver",
        "name: " + "a" * 254,
        ["spec.webhookReceivers[0].name: must be a lowercase RFC 1123 subdomain"],
    ),
    (
        "receiver-name-empty",
        PROJECT_CONFIG,
        "name: bb-receiver",
        "name: ''",
        ["spec.webhookReceivers[0].name: must not be empty"],
    ),
    (
        "receiver-name-missing",
        PROJECT_CONFIG,
        "  - name: bb-receiver\n    bitbucket:",
        "  - bitbucket:",
        ["spec.webhookReceivers[0].name: required field is missing"],
    ),
    (
        "receiver-two-types",
        PROJECT_CONFIG,
        "    bitbucket:\n",
        "    github: {secretRef: {name: x}}\n    bitbucket:\n",
        [
            "spec.webhookReceivers[0]: must configure exactly one receiver type",
            "got 2: github, bitbucket",
        ],
    ),
    (
        "receiver-no-type",
        PROJECT_CONFIG,
        "    bitbucket:\n      secretRef:\n        name: bb-secret\n",
        "    bitbucket:\n    secretRef:\n      name: bb-secret\n",
        [
            "spec.webhookReceivers[0]: must configure exactly one receiver type",
            "got none (unknown fields: secretRef)",
        ],
    ),
    (
        "receiver-secret-name-null",
        PROJECT_CONFIG,
        "name: bb-secret",
        "name: null",
        ["spec.webhookReceivers[0].bitbucket.secretRef.name: must be a string, got null"],
    ),
    (
        "receiver-secret-ref-missing",
        PROJECT_CONFIG,
        "      secretRef:\n        name: bb-secret\n",
        "      secret: x\n",
        ["spec.webhookReceivers[0].bitbucket.secretRef: required field is missing"],
    ),
    (
        "receiver-github-not-object",
        PROJECT_CONFIG,
        "    bitbucket:\n      secretRef:\n        name: bb-secret\n",
        "    github: token\n",
        ['spec.webhookReceivers[0].github: must be an object, got string "token"'],
    ),
    (
        "receiver-github-no-secret-ref",
        PROJECT_CONFIG,
        "    bitbucket:\n      secretRef:\n        name: bb-secret\n",
        "    github: {}\n",
        ["spec.webhookReceivers[0].github.secretRef: required field is missing"],
    ),
    (
        "receiver-gitlab-secret-name-number",
        PROJECT_CONFIG,
        "    bitbucket:\n      secretRef:\n        name: bb-secret\n",
        "    gitlab: {secretRef: {name: 7}}\n",
        ["spec.webhookReceivers[0].gitlab.secretRef.name: must be a string, got number 7"],
    ),
    (
        "receiver-generic-no-actions",
        PROJECT_CONFIG,
        "    bitbucket:\n      secretRef:\n        name: bb-secret\n",
        "    generic: {secretRef: {name: g}, actions: []}\n",
        ["spec.webhookReceivers[0].generic.actions: must have at least 1 item(s)"],
    ),
    (
        "receiver-generic-action",
        PROJECT_CONFIG,
        "    bitbucket:\n      secretRef:\n        name: bb-secret\n",
        "    generic: {secretRef: {name: g}, actions: [{action: Promote}]}\n",
        ['spec.webhookReceivers[0].generic.actions[0].action: must be one of Refresh; got "Pro'],
    ),
    (
        "receiver-generic-criteria-kind",
        PROJECT_CONFIG,
        "    bitbucket:\n      secretRef:\n        name: bb-secret\n",
        "    generic:\n      secretRef: {name: g}\n      actions:\n      - action: Refresh\n"
        "        targetSelectionCriteria: [{name: w}]\n",
        [
            "spec.webhookReceivers[0].generic.actions[0].targetSelectionCriteria[0].kind: "
            "required field is missing"
        ],
    ),
    (
        "secret-not-base64",
        SECRET,
        "bXlzdXBlcnNlY3JldA==",
        "not base64!",
        ["(Secret demo/bb-secret): data.secret: must be valid base64"],
    ),
    (
        "secret-bad-padding",
        SECRET,
        "bXlzdXBlcnNlY3JldA==",
        "bXlzdXBlcnNlY3JldA",
        ["data.secret: must be valid base64"],
    ),
    (
        "secret-data-int",
        SECRET,
        "bXlzdXBlcnNlY3JldA==",
        "12345",
        ["data.secret: must be a base64 string, got number ("],
    ),
    (
        "secret-string-data-int",
        SECRET,
        "data:\n  secret: bXlzdXBlcnNlY3JldA==",
        "stringData:\n  secret: 987654",
        ["stringData.secret: must be a string, got number ("],
    ),
    (
        "secret-data-key",
        SECRET,
        "  secret: bXlz",
        "  'bad key': bXlz",
        ['data["bad key"]: invalid key "bad key"'],
    ),
    (
        "secret-api-version",
        SECRET,
        "apiVersion: v1",
        "apiVersion: core/v1",
        ['apiVersion: must be v1 for Secret, got string "core/v1"'],
    ),
    (
        "kargo-api-version",
        WAREHOUSE,
        "kargo.akuity.io/v1alpha1",
        "kargo.akuity.io/v1beta1",
        [
            "apiVersion: must be kargo.akuity.io/v1alpha1 for Warehouse, got string "
            '"kargo.akuity.io/v1beta1"'
        ],
    ),
    (
        "api-version-missing",
        WAREHOUSE,
        "apiVersion: kargo.akuity.io/v1alpha1\n",
        "",
        ["(Warehouse demo/app): apiVersion: required field is missing"],
    ),
    (
        "unknown-kind",
        WAREHOUSE,
        "kind: Warehouse",
        "kind: Stage",
        ['document 1: kind: unknown kind "Stage"; accepted: Secret, ProjectConfig, ClusterConfig'],
    ),
    (
        "kind-case",
        WAREHOUSE,
        "kind: Warehouse",
        "kind: warehouse",
        ['unknown kind "warehouse" (kinds are case-sensitive: did you mean Warehouse?)'],
    ),
    (
        "kind-missing",
        WAREHOUSE,
        "kind: Warehouse\n",
        "",
        ["document 1: kind: required field is missing"],
    ),
    ("kind-int", WAREHOUSE, "kind: Warehouse", "kind: 7", ["kind: must be a string, got number 7"]),
    (
        "duplicate-key",
        WAREHOUSE,
        "      branch: main\n",
        "      branch: main\n      branch: dev\n",
        [
            "(Warehouse demo/app): spec.subscriptions[0].git.branch: "
            "duplicate key (first at line 10)",
            "(line 11)",
        ],
    ),
    (
        "duplicate-top-key",
        WAREHOUSE,
        "kind: Warehouse\n",
        "kind: Warehouse\nkind: Warehouse\n",
        ["kind: duplicate key"],
    ),
]


@pytest.mark.parametrize(
    ("base", "old", "new", "expected"),
    [pytest.param(b, o, n, e, id=i) for i, b, o, n, e in ERRORS],
)
def test_errors(base: str, old: str, new: str, expected: list[str]) -> None:
    message = error_of(edit(base, old, new))
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize("secret", ["12345", "hunter2hunter2", "bXlzdXBlcnNlY3JldA"])
def test_secret_values_never_appear_in_messages(secret: str) -> None:
    for text in (
        edit(SECRET, "bXlzdXBlcnNlY3JldA==", secret),
        edit(
            SECRET,
            "data:\n  secret: bXlzdXBlcnNlY3JldA==",
            f"stringData:\n  secret: {secret}\n  other: [1]",
        ),
    ):
        with pytest.raises(ManifestError) as info:
            parse(text)
        assert secret not in str(info.value)


def test_error_in_second_document_rejects_everything() -> None:
    bad = edit(SECRET, "name: bb-secret", "name: 5")
    message = error_of(WAREHOUSE + "---\n" + bad)
    assert message.startswith(f"{SRC}: document 2 (Secret): metadata.name: must be a string")


def test_parse_documents_gives_one_error_per_invalid_document_and_the_valid_objects() -> None:
    wrong_type = edit(WAREHOUSE, "branch: main", "branch: 1.20")
    no_name = edit(SECRET, "name: bb-secret", "name: 5")
    misspelt = edit(edit(WAREHOUSE, "branch:", "brnach:"), "name: app", "name: typo")
    text = "---\n".join([wrong_type, PROJECT_CONFIG, no_name, misspelt, "kind: List\nitems: 3\n"])
    resources, errors = parse_documents(text, SRC, strict=True)
    assert [r.kind for r in resources] == ["ProjectConfig"]
    assert [str(e).split(": ")[1] for e in errors] == [
        "document 1 (Warehouse demo/app)",
        "document 3 (Secret)",
        "document 4 (Warehouse demo/typo)",
        "document 5",
    ]
    assert [type(e) for e in errors].count(UnknownFieldError) == 1
    assert str(errors[0]).endswith("(line 10)")


def test_parse_documents_stops_a_text_at_its_yaml_syntax_error() -> None:
    wrong_type = edit(WAREHOUSE, "branch: main", "branch: 1.20")
    text = "---\n".join([wrong_type, "a: [1, 2\n", wrong_type, PROJECT_CONFIG])
    resources, errors = parse_documents(text, SRC)
    assert resources == []
    assert [str(e).split(": ")[1] for e in errors] == [
        "document 1 (Warehouse demo/app)",
        "document 2",
    ]
    assert "line 13, column 1: " in str(errors[1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1, 2\n", "document 1: line 2, column 1: "),
        (WAREHOUSE + "---\nkind: Secret\n  bad: indent\n", "document 2: line 13, column 6: "),
        (WAREHOUSE + "---\n---\nfoo: 'unclosed\n", "document 3: line "),
        # Wording differs between libyaml and PyYAML's own parser; where it says so must not.
        ("a: b\n\tc: d\n", "document 1: line 2, column 1: found "),
        ("x: *nope\n", "document 1: line 1, column 4: found undefined alias"),
        ("a: 1\n---\nb: \x00\n", "document 2: line 3: unacceptable character #x0000"),
        ("a: !!binary aGk=\n", "document 1: a: unsupported YAML tag tag:yaml.org,2002:binary"),
        ("a: !custom {}\n", "document 1: a: unsupported YAML tag !custom"),
        ("a: !!set {x}\n", "unsupported YAML tag tag:yaml.org,2002:set"),
        ("a: .inf\n", "document 1: a: numbers must be finite, got .inf (line 1)"),
        # Plain, kubectl reads these as text or as floats; a !!int tag insists.
        ("a: !!int " + "9" * 5000 + "\n", "document 1: a: invalid int"),
        ("a: {b: !!int 99999999999999999999999}\n", "document 1: a.b: integers must fit in 64"),
        ("a: [!!int -9223372036854775809]\n", "document 1: a[0]: integers must fit in 64 bits"),
        ('a: !!int ""\n', "document 1: a: invalid int"),
        ('a: "\\ud800"\n', "document 1: "),
        ("? [a]\n: b\n", "document 1: mapping keys must be plain strings"),
        ("[" * 5000 + "]" * 5000, "document 1: "),
        ("- 1\n- 2\n", "document 1: must be an object (a Kubernetes resource), got list"),
        ("just text\n", 'document 1: must be an object (a Kubernetes resource), got string "just'),
        ("a: <<\n<<: 3\n", "document 1: "),
    ],
)
def test_malformed_yaml(text: str, expected: str) -> None:
    message = error_of(text)
    assert expected in message, message


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    message = error_of("\n".join(lines) + "\n")
    assert "after expanding YAML aliases" in message


def test_deep_nesting_is_refused() -> None:
    text = "a:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(300)) + "  " * 301 + "v\n"
    message = error_of(text)
    assert "a.k0.k1: nested more than 200 levels deep (line " in message
    assert "k3" not in message  # one readable line, not a path 200 keys long


@pytest.mark.parametrize("levels", [5_000, 100_000])
def test_deep_flow_nesting_is_refused_before_libyaml_composes_it(levels: int) -> None:
    """libyaml's composer overflowed the C stack (SIGSEGV) past 20,000-40,000 levels."""
    nested = "[" * levels + "]" * levels
    text = WAREHOUSE + "---\nkind: Warehouse\nspec: {x: " + nested + "}\n"
    message = error_of(text)
    # PyYAML 6.0.4 refuses such depth itself; before it, our pre-pass does: either way one
    # clear line naming the document, and the process survives.
    assert "document 2" in message
    assert "nested more than 200 levels deep" in message or "maximum nesting depth" in message


def test_messages_escape_line_breaks() -> None:
    message = error_of(edit(WAREHOUSE, "branch: main", 'branch: "a\\nb\\u2028c"'))
    assert "\\n" in message and "\\u2028" in message


# ---------------------------------------------------------------------------- validate_object


def test_validate_object_on_a_dict() -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s"},
        "stringData": {"secret": "x"},
    }
    resource = validate_object(body, "state.db: Secret default/s", default_namespace="default")
    assert resource.body["data"] == {"secret": "eA=="}
    assert "stringData" in body  # the input is not modified
    assert resource.body["metadata"]["namespace"] == "default"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s", "namespace": "d"},
                "data": {"k": b"raw"},
            },
            "data.k: unsupported value of type bytes",
        ),
        (
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": 1.5, "namespace": "d"}},
            "metadata.name: must be a string, got number 1.5",
        ),
        ({"kind": "Warehouse", "metadata": {1: "x"}}, "metadata: object keys must be strings"),
        ({"kind": "Promotion", "status": {"currentStep": float("nan")}}, "numbers must be finite"),
        (
            {
                "apiVersion": "kargo.akuity.io/v1alpha1",
                "kind": "Promotion",
                "metadata": {"name": "p", "namespace": "n"},
                "spec": {"stage": "s", "freight": "f", "steps": [{"uses": "x"}]},
                "status": {"currentStep": True},
            },
            "status.currentStep: must be an integer, got boolean true",
        ),
        (["not", "an", "object"], "must be an object (a Kubernetes resource), got list"),
        ({"apiVersion": "v1", "kind": "List", "items": []}, 'unknown kind "List"'),
    ],
)
def test_validate_object_errors(body: Any, expected: str) -> None:
    with pytest.raises(ManifestError) as info:
        validate_object(body, "somewhere")
    message = str(info.value)
    assert message.startswith("somewhere")
    assert expected in message
    assert len(message.splitlines()) == 1


def test_validate_object_shows_json_values_without_yaml_tokens() -> None:
    body = {
        "apiVersion": "kargo.akuity.io/v1alpha1",
        "kind": "Promotion",
        "metadata": {"name": "p", "namespace": "n"},
        "spec": {"steps": [{"uses": "x", "as": 1.2}]},
    }
    expected = r"spec\.steps\[0\]\.as: must be a string, got number 1\.2$"
    with pytest.raises(ManifestError, match=expected):
        validate_object(body, "k8s")


# ---------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("wh", "Warehouse"),
        ("warehouses", "Warehouse"),
        ("Warehouse", "Warehouse"),
        ("WAREHOUSE", "Warehouse"),
        ("warehouses.kargo.akuity.io", "Warehouse"),
        ("promo", "Promotion"),
        ("promos", "Promotion"),
        ("promotion", "Promotion"),
        ("secrets", "Secret"),
        ("secret", "Secret"),
        ("projectconfigs", "ProjectConfig"),
        ("ProjectConfig", "ProjectConfig"),
        ("clusterconfigs", "ClusterConfig"),
        (" clusterconfig ", "ClusterConfig"),
    ],
)
def test_canonical_kind(text: str, kind: str) -> None:
    assert canonical_kind(text) == kind


@pytest.mark.parametrize("text", ["stages", "", "wh2", "List"])
def test_canonical_kind_unknown(text: str) -> None:
    with pytest.raises(UnknownKindError, match="accepted: secrets, projectconfigs") as info:
        canonical_kind(text)
    assert isinstance(info.value, ValueError)


def test_kinds_table() -> None:
    kinds = {"Secret", "ProjectConfig", "ClusterConfig", "Warehouse", "Promotion"}
    assert set(KINDS.values()) == kinds
    assert KINDS["wh"] == "Warehouse" and KINDS["promo"] == "Promotion"
    assert all(KINDS[kind] == kind for kind in KINDS.values())


# ---------------------------------------------------------------------------- properties

_FRAGMENTS = [
    "apiVersion: kargo.akuity.io/v1alpha1\n",
    "apiVersion: v1\n",
    "kind: Warehouse\n",
    "kind: Secret\n",
    "kind: List\n",
    "kind: ProjectConfig\n",
    "kind: Promotion\n",
    "metadata:\n",
    "  name: a\n",
    "  namespace: b\n",
    "spec:\n",
    "  subscriptions:\n",
    "  - git:\n",
    "      repoURL: https://h/x\n",
    "      branch: 1.20\n",
    "data:\n",
    "  secret: eA==\n",
    "items:\n",
    "- ",
    "---\n",
    "&a ",
    "*a",
    "<<: ",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    "\n",
    "  ",
    "!!int ",
    "!!binary ",
    "~",
    "'",
    '"',
    "\\",
    "#",
    "? ",
    "null",
    "  webhookReceivers:\n",
    "  - name: x\n",
    "    bitbucket: {secretRef: {name: s}}\n",
    "status:\n",
    "  currentStep: '1'\n",
    "  state: 3\n",
    "stringData: {a: 1}\n",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_text_raises_only_manifest_error(text: str) -> None:
    try:
        parse_manifests(text, "fuzz.yaml")
    except ManifestError as error:
        assert len(str(error).splitlines()) == 1


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map("".join))
def test_yamlish_text_raises_only_manifest_error(text: str) -> None:
    try:
        resources = parse_manifests(text, "fuzz.yaml", default_namespace="d")
    except ManifestError as error:
        assert len(str(error).splitlines()) == 1
    else:
        for resource in resources:
            assert resource.body["kind"] == resource.kind
