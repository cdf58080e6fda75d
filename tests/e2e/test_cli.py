"""The command line as a user meets it: apply, get, delete, urls, secret, send (SPEC §10)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, cli, request

EXAMPLE = REPO / "examples" / "kargo-demo"
WAREHOUSE = """
apiVersion: kargo.akuity.io/v1alpha1
kind: Warehouse
metadata: {name: %(name)s, namespace: demo}
spec:
  subscriptions:
    - git:
        repoURL: https://bitbucket.org/acme/app.git
        branch: %(branch)s
"""


def items(state: Path, kind: str, *args: str) -> list[dict[str, Any]]:
    listing = json.loads(cli("get", kind, *args, "-o", "json", state=state).stdout)
    assert listing["kind"] == "List" and listing["apiVersion"] == "v1"
    return list(listing["items"])


def test_apply_example_then_get_every_kind(state: Path) -> None:
    out = cli("apply", "-f", str(EXAMPLE), state=state).stdout
    assert "warehouse/kargo-demo/guestbook-main created" in out
    assert len(items(state, "warehouses")) == 5
    for spelling in ("warehouse", "wh", "Warehouses"):
        assert len(items(state, spelling, "-n", "kargo-demo")) == 5
    for spelling in ("promotions", "promotion", "promo"):
        assert len(items(state, spelling, "-A")) == 1
    assert len(items(state, "projectconfigs")) == 1
    assert len(items(state, "projectconfig")) == 1
    assert items(state, "clusterconfigs") == []
    again = cli("apply", "-f", str(EXAMPLE), state=state).stdout
    assert "guestbook-main unchanged" in again


def test_secret_data_is_never_printed(state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE / "secret.yaml"), state=state)
    for output in ("json", "yaml", "table"):
        printed = cli("get", "secrets", "-n", "kargo-demo", "-o", output, state=state).stdout
        assert "demo-secret-change-me" not in printed
        assert "ZGVtby1zZWNyZXQtY2hhbmdlLW1l" not in printed  # its base64
    one = json.loads(cli("get", "secret", "bitbucket-webhook", "-o", "json", state=state).stdout)
    assert one["data"] == {"secret": "<redacted>"}


def test_single_object_json_is_the_object(state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    obj = json.loads(
        cli("get", "wh", "guestbook-main", "-n", "kargo-demo", "-o", "json", state=state).stdout
    )
    assert obj["kind"] == "Warehouse" and obj["metadata"]["name"] == "guestbook-main"
    assert (
        yaml.safe_load(cli("get", "wh", "guestbook-main", "-o", "yaml", state=state).stdout)["spec"]
        == obj["spec"]
    )


def test_table_output(state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    table = cli("get", "warehouses", state=state).stdout.splitlines()
    assert table[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any("guestbook-main" in row for row in table[1:])


def test_delete(state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    assert "deleted" in cli("delete", "wh", "infra", "-n", "kargo-demo", state=state).stdout
    assert len(items(state, "wh")) == 4
    missing = cli("delete", "wh", "infra", "-n", "kargo-demo", state=state, check=False)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_apply_keeps_status_and_refresh_unless_manifest_sets_them(state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE / "promotion.yaml"), state=state)
    promotion = yaml.safe_load((EXAMPLE / "promotion.yaml").read_text())
    promotion["metadata"]["annotations"] = {"kargo.akuity.io/refresh": "set-by-manifest"}
    cli("apply", "-f", "-", state=state, stdin=yaml.safe_dump(promotion))
    del promotion["status"]
    del promotion["metadata"]["annotations"]
    promotion["spec"]["stage"] = "prod-2"
    cli("apply", "-f", "-", state=state, stdin=yaml.safe_dump(promotion))
    (stored,) = items(state, "promotions")
    assert stored["spec"]["stage"] == "prod-2"
    assert stored["status"]["phase"] == "Running"
    assert stored["metadata"]["annotations"]["kargo.akuity.io/refresh"] == "set-by-manifest"


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (WAREHOUSE % {"name": "w", "branch": "1.20"}, "branch"),
        (WAREHOUSE % {"name": "w", "branch": "[unclosed"}, "document 1"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: demo}\n", "ConfigMap"),
        (
            "apiVersion: kargo.akuity.io/v1alpha1\nkind: Warehouse\nmetadata: {namespace: demo}\n",
            "name",
        ),
        (
            WAREHOUSE % {"name": "ok", "branch": "main"}
            + "---\n"
            + WAREHOUSE % {"name": "bad", "branch": "true"},
            "document 2",
        ),
    ],
)
def test_bad_manifests_are_rejected_whole(
    tmp_path: Path, state: Path, manifest: str, expected: str
) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    before = items(state, "wh")
    path = tmp_path / "bad.yaml"
    path.write_text(manifest)
    result = cli("apply", "-f", str(path), state=state, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and expected in lines[0]
    assert "Traceback" not in result.stderr
    assert items(state, "wh") == before


def test_unevaluable_subscription_is_stored_with_a_warning(state: Path) -> None:
    manifest = WAREHOUSE % {"name": "w", "branch": "main"}
    manifest = manifest.replace(
        "branch: main", "commitSelectionStrategy: SemVer\n        semverConstraint: '>>1'"
    )
    result = cli("apply", "-f", "-", state=state, stdin=manifest)
    assert "warning: Warehouse demo/w" in result.stderr and "semverConstraint" in result.stderr
    assert len(items(state, "wh")) == 1


SEND = "send --secret s --event repo:push --repo https://h/a/b --url"


@pytest.mark.parametrize(
    "command",
    [
        "get configmaps",
        "get wh -n demo -A",
        "delete wh",
        "apply -f /nonexistent/file.yaml",
        "serve --base-url https://h/?q=1 --listen 127.0.0.1:0",
        "serve --base-url kargo.example.com --listen 127.0.0.1:0",
        "serve --listen nonsense",
        "serve --listen :8080",
        "serve --listen 127.0.0.1:0",
        f"{SEND} notaurl",
        f"{SEND} 'http://[::1'",
        f"{SEND} http://127.0.0.1:9/ --ref ''",
        "send --secret s --event pullrequest:fulfilled --pr 'https://h]/x' --url http://127.0.0.1:9/",
        "urls --kubernetes --kubeconfig /nonexistent",
        "explain --kubernetes --kubeconfig /nonexistent --repo https://h/a/b",
        "deliveries --admin-url notaurl",
        "serve --kubernetes --kubeconfig /nonexistent --lease-duration 1",
    ],
)
def test_usage_errors_exit_2_with_one_line(state: Path, command: str) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    result = cli(*shlex.split(command), state=state, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    # One line saying what is wrong (argparse puts its usage lines before it).
    assert result.stderr.strip().splitlines()[-1].startswith("kargo-bitbucket"), result.stderr


def test_base_url_credentials_are_refused_without_echoing_them(state: Path) -> None:
    result = cli("serve", "--base-url", "https://u:hunter2@h/", state=state, check=False)
    assert result.returncode == 2
    assert "credentials" in result.stderr and "hunter2" not in result.stderr


def test_output_cut_short_by_the_reader_is_not_a_traceback(state: Path) -> None:
    documents = "---\n".join(
        f"apiVersion: kargo.akuity.io/v1alpha1\nkind: Warehouse\n"
        f"metadata: {{name: w{i}, namespace: demo}}\n"
        f"spec: {{subscriptions: [{{git: {{repoURL: https://h/r{i}}}}}]}}\n"
        for i in range(3000)
    )
    cli("apply", "-f", "-", state=state, stdin=documents)
    command = [sys.executable, "-m", "kargo_bitbucket", "get", "wh", "-A", "--state", str(state)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.readline()
        process.stdout.close()
        errors = process.stderr.read().decode()
    assert process.returncode == 1
    assert errors == ""


def test_missing_state_file_is_a_clear_error(tmp_path: Path) -> None:
    result = cli("get", "wh", state=tmp_path / "nope.db", check=False)
    assert result.returncode == 2
    assert "nope.db" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "nope.db").exists()


def test_secret_command_output_applies(state: Path) -> None:
    out = cli("secret", "--name", "wh-secret", "-n", "demo", state=state).stdout
    secret_line = out.splitlines()[0]
    value = secret_line.rsplit(" ", 1)[1]
    assert len(value) >= 32
    cli("apply", "-f", "-", state=state, stdin=out)
    (stored,) = items(state, "secrets")
    assert stored["metadata"]["name"] == "wh-secret"
    again = cli("secret", state=state).stdout
    assert value not in again


def test_every_subcommand_has_help(state: Path) -> None:
    for command in ("serve", "apply", "delete", "get", "urls", "send", "secret"):
        result = cli(command, "--help", state=state)
        assert "usage: kargo-bitbucket " + command in result.stdout


def test_send_exit_codes(state: Path, server_factory: Any) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    server = server_factory(state)
    (line,) = cli("urls", state=state).stdout.splitlines()
    namespace, name, url = line.split("\t")
    assert (namespace, name) == ("kargo-demo", "bitbucket")
    ok = cli(
        "send",
        "--url",
        url,
        "--secret-from",
        "kargo-demo/bitbucket-webhook",
        "--event",
        "repo:push",
        "--repo",
        "https://bitbucket.org/acme/guestbook",
        "--ref",
        "refs/tags/v1.2.0",
        "--ref",
        "develop",
        state=state,
    )
    assert ok.stdout.splitlines()[0] == "200"
    answer = json.loads(ok.stdout.splitlines()[1])
    assert sorted(answer["refreshed"]) == [
        "kargo-demo/guestbook-develop-ssh",
        "kargo-demo/guestbook-v1",
    ]
    wrong = cli(
        "send",
        "--url",
        url,
        "--secret",
        "wrong",
        "--event",
        "repo:push",
        "--repo",
        "https://bitbucket.org/acme/guestbook",
        state=state,
        check=False,
    )
    assert wrong.returncode == 1 and wrong.stdout.splitlines()[0] == "401"
    pr = cli(
        "send",
        "--url",
        url,
        "--secret-from",
        "kargo-demo/bitbucket-webhook",
        "--event",
        "pullrequest:fulfilled",
        "--pr",
        "https://bitbucket.org/acme/guestbook/pull-requests/42",
        state=state,
    )
    assert json.loads(pr.stdout.splitlines()[1])["msg"] == "refreshed 1 promotion(s)"
    dc = cli(
        "send",
        "--url",
        url,
        "--secret-from",
        "kargo-demo/bitbucket-webhook",
        "--event",
        "pr:merged",
        "--pr",
        "https://bitbucket.org/acme/guestbook/pull-requests/42",
        state=state,
    )
    assert json.loads(dc.stdout.splitlines()[1])["msg"] == "refreshed 1 promotion(s)"
    ping = cli("send", "--url", url, "--secret", "x", "--event", "diagnostics:ping", state=state)
    assert ping.stdout.splitlines()[1] == '{"msg":"pong"}'
    down = cli(
        "send",
        "--url",
        server.base.replace(str(server.port), "9") + "/x",
        "--secret",
        "x",
        "--event",
        "repo:push",
        "--repo",
        "https://h/a/b",
        state=state,
        check=False,
    )
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_serve_prints_receivers_and_a_working_send_line(state: Path, server_factory: Any) -> None:
    server = server_factory(state, "-f", str(EXAMPLE))
    printed = ""
    for _ in range(50):
        line = server.process.stdout.readline()
        printed += line
        if "# refreshes" in line:
            break
    assert "receiver kargo-demo/bitbucket: http://127.0.0.1:" in printed
    send_line = next(x for x in printed.splitlines() if "kargo-bitbucket send" in x)
    command = shlex.split(send_line.split("#")[0])
    assert command[0] == "kargo-bitbucket"
    result = subprocess.run(
        [sys.executable, "-m", "kargo_bitbucket", *command[1:]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "refreshed 1 warehouse(s)" in result.stdout
    status = items(state, "projectconfigs")[0]["status"]
    assert status["webhookReceivers"][0]["url"] in printed
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


def test_urls_before_any_serve_says_who_publishes_them(state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    result = cli("urls", state=state)
    assert result.stdout == ""
    assert "kargo-bitbucket serve" in result.stderr


def test_log_level_after_the_command(state: Path, server_factory: Any) -> None:
    """`serve --log-level warning` is where people (and Kubernetes args) put it."""
    cli("apply", "-f", str(EXAMPLE), state=state)
    quiet = server_factory(state, "--log-level", "warning")
    assert request(quiet.base + "/healthz", method="GET").status == 200
    quiet.stop()
    assert '"level":"info"' not in quiet.log.read_text()
    loud = server_factory(state)
    assert request(loud.base + "/healthz", method="GET").status == 200
    loud.stop()
    assert '"level":"info"' in loud.log.read_text()
