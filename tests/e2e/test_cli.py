"""The command line as a user meets it: apply, get, delete, urls, secret, send (SPEC §10)."""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kargo_bitbucket.core.payloads import build_payload
from tests.builders import cluster_config, project, secret, to_yaml, warehouse
from tests.support import REPO, cli, eventually, free_ports, request

EXAMPLE = REPO / "examples" / "kargo-demo"
# The user's YAML as typed: the values below are what YAML reads as a float, a syntax error
# and a boolean, so these documents are text, not built.
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


def test_a_secret_applied_from_kubectls_output_is_not_printed_through_its_annotation(
    state: Path, tmp_path: Path
) -> None:
    # `kubectl get secret -o yaml > s.yaml` keeps the manifest kubectl last applied.
    applied = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "bb", "namespace": "demo"},
        "data": {"secret": "VE9QU0VDUkVU"},
    }
    manifest = secret("demo", "bb", "TOPSECRET")
    annotations = {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied)}
    manifest["metadata"]["annotations"] = annotations
    cli("apply", "-f", "-", state=state, stdin=to_yaml(manifest))
    for output in ("json", "yaml"):
        printed = cli("get", "secret", "bb", "-n", "demo", "-o", output, state=state).stdout
        assert "VE9QU0VDUkVU" not in printed and "TOPSECRET" not in printed
        assert "last-applied-configuration: <redacted>" in printed or output == "json"


def test_explain_refuses_an_empty_ref(state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    stderr = usage_error(state, "explain", "--repo", "https://h/a/b", "--ref", "")
    assert "--ref must not be empty" in stderr


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


def test_apply_warns_of_a_project_config_whose_receiver_secret_is_not_applied(
    state: Path,
) -> None:
    """kubectl users apply a ProjectConfig and forget its Secret, or apply them in two
    commands: the apply that leaves a receiver out says so (serve would leave it out, and
    its log and lint said so only later); once the Secret is there, nothing is said."""
    config = to_yaml(project("demo", ("bb", "bb-secret")))
    alone = cli("apply", "-f", "-", state=state, stdin=config)
    assert alone.stdout == "projectconfig/demo/demo created\n"
    assert alone.stderr == (
        "warning: receivers of ProjectConfig demo not all published: receiver 'bb': Secret "
        "demo/bb-secret not found\n"
    )
    both = cli("apply", "-f", "-", state=state, stdin=to_yaml(secret("demo", "bb-secret")))
    assert both.stderr == ""
    again = cli("apply", "-f", "-", state=state, stdin=config)
    assert again.stdout == "projectconfig/demo/demo unchanged\n" and again.stderr == ""


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


def bad_warehouses(*names: str) -> str:
    """Warehouses whose ``branch: 1.20`` is a number: one invalid document each."""
    return "---\n".join(WAREHOUSE % {"name": name, "branch": "1.20"} for name in names)


def refused(state: Path, *args: str, stdin: str | None = None) -> list[str]:
    """The stderr lines of a command that must be refused whole, as a usage error."""
    lines = usage_error(state, *args, stdin=stdin).splitlines()
    assert all(line.startswith("kargo-bitbucket: ") for line in lines), lines
    return lines


def test_every_invalid_document_of_every_file_is_reported(tmp_path: Path, state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    before = items(state, "wh")
    folder = tmp_path / "manifests"
    folder.mkdir()
    good = WAREHOUSE % {"name": "good", "branch": "main"}
    (folder / "a.yaml").write_text(
        bad_warehouses("a1") + "---\n" + good + "---\n" + bad_warehouses("a3")
    )
    (folder / "b.yaml").write_text(bad_warehouses("b1"))
    warned = WAREHOUSE.replace("spec:", "colour: red\nspec:")  # valid, with a warning
    (folder / "c.yaml").write_text(warned % {"name": "also-good", "branch": "main"})
    lines = refused(state, "apply", "-f", str(folder))
    where = [("a.yaml", 1, "a1", 9), ("a.yaml", 3, "a3", 29), ("b.yaml", 1, "b1", 9)]
    assert len(lines) == len(where), lines
    for line, (file, document, name, source_line) in zip(lines, where, strict=True):
        named = f"{folder / file}: document {document} (Warehouse demo/{name}): "
        assert f"{named}spec.subscriptions[0].git.branch: must be a string" in line
        assert line.endswith(f"(line {source_line})")
    assert "colour" not in "".join(lines)  # nothing applied: no warnings, only the errors
    assert items(state, "wh") == before


def test_a_yaml_syntax_error_ends_its_file_not_the_others(tmp_path: Path, state: Path) -> None:
    first, second = tmp_path / "1.yaml", tmp_path / "2.yaml"
    first.write_text(
        WAREHOUSE % {"name": "w", "branch": "[unclosed"} + "---\n" + bad_warehouses("x")
    )
    second.write_text(bad_warehouses("w2"))
    lines = refused(state, "apply", "-f", str(first), "-f", str(second))
    assert len(lines) == 2, lines
    assert f"{first}: document 1: line " in lines[0]
    assert f"{second}: document 1 (Warehouse demo/w2): spec.subscriptions[0].git.branch" in lines[1]
    assert not state.exists()


def test_past_twenty_invalid_documents_one_line_counts_the_rest(state: Path) -> None:
    many = bad_warehouses(*(f"w{n}" for n in range(25)))
    lines = refused(state, "apply", "-f", "-", stdin=many)
    assert len(lines) == 21, lines
    assert [f": document {n + 1} (" in line for n, line in enumerate(lines[:20])] == [True] * 20
    assert lines[20] == "kargo-bitbucket: ... and 5 more invalid documents"


def test_unknown_fields_of_several_documents_are_all_reported_with_the_hint_once(
    state: Path,
) -> None:
    lines = refused(state, "apply", "-f", "-", stdin=MISSPELT + "---\n" + MISSPELT)
    unknown = [line for line in lines if "spec.subscriptions[0].git.brnach: unknown field" in line]
    assert [line.split(": ")[2] for line in unknown] == [
        "document 1 (Warehouse demo/typo)",
        "document 2 (Warehouse demo/typo)",
    ], lines
    assert "".join(lines).count("--validate=warn") == 1, lines
    assert not state.exists()


def test_serve_reports_every_invalid_document_and_does_not_start(state: Path) -> None:
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    lines = refused(state, "serve", "--listen", listen, "-f", "-", stdin=bad_warehouses("s1", "s2"))
    assert len(lines) == 2, lines
    assert "<stdin>: document 1 (Warehouse demo/s1): spec.subscriptions" in lines[0]
    assert "<stdin>: document 2 (Warehouse demo/s2): spec.subscriptions" in lines[1]
    assert not state.exists()


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
    documents = to_yaml(
        *(warehouse("demo", f"w{i}", branch=None, repo=f"https://h/r{i}") for i in range(3000))
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
    assert cli("secret", "-n", "demo", state=state).stderr == ""
    again = cli("secret", state=state)
    assert value not in again.stdout
    assert "namespace: kargo-demo" in again.stdout
    assert again.stderr.startswith("note: no -n: the Secret is for namespace kargo-demo")


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


def test_send_says_what_to_do_about_a_wrong_secret_or_url(state: Path, server_factory: Any) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    server_factory(state)
    (line,) = cli("urls", state=state).stdout.splitlines()
    url = line.split("\t")[2]
    push = ("--event", "repo:push", "--repo", "https://bitbucket.org/acme/guestbook")
    wrong = cli("send", "--url", url, "--secret", "wrong", *push, state=state, check=False)
    assert wrong.returncode == 1 and wrong.stdout.splitlines()[0] == "401"
    assert "--secret-from NAMESPACE/NAME" in wrong.stderr
    rotated = url[:-1] + ("0" if url[-1] != "0" else "1")
    gone = cli("send", "--url", rotated, "--secret", "x", *push, state=state, check=False)
    assert gone.returncode == 1 and gone.stdout.splitlines()[0] == "404"
    assert "`kargo-bitbucket urls`" in gone.stderr
    ok = cli(
        "send", "--url", url, "--secret-from", "kargo-demo/bitbucket-webhook", *push, state=state
    )
    assert ok.stderr == ""


def test_serve_says_when_it_publishes_an_address_no_one_can_send_to(
    state: Path, server_factory: Any
) -> None:
    server = server_factory(state, "-f", str(EXAMPLE), "--base-url", "http://0.0.0.0:8787")
    printed = ""
    for _ in range(50):
        printed += server.process.stdout.readline()
        if "receiver kargo-demo/bitbucket:" in printed:
            break
    assert "note: receivers published at http://0.0.0.0:8787: 0.0.0.0 is not an address" in printed
    assert "serve --base-url" in printed


def test_a_directory_as_the_state_file_is_one_line(tmp_path: Path) -> None:
    result = cli("serve", state=tmp_path, check=False)
    assert (result.returncode, result.stderr) == (
        2,
        f"kargo-bitbucket: state file {tmp_path} is a directory\n",
    )
    assert not tmp_path.with_name(tmp_path.name + ".serve").exists()


def test_a_second_serve_on_the_same_state_file_is_refused(state: Path, server_factory: Any) -> None:
    first = server_factory(state, "-f", str(EXAMPLE))
    before = cli("get", "warehouses", "-A", "-o", "json", state=state).stdout
    extra = state.parent / "extra.yaml"
    extra.write_text(to_yaml(warehouse("kargo-demo", "added-by-the-second")))
    second = cli(
        "serve", "-f", str(extra), "--listen", "127.0.0.1:0", "--base-url", "http://h",
        state=state, check=False,
    )  # fmt: skip
    assert second.returncode == 1
    assert cli("get", "warehouses", "-A", "-o", "json", state=state).stdout == before
    link = state.parent / "link.db"  # the same file by another name is refused too
    link.symlink_to(state)
    third = cli(
        "serve", "--listen", "127.0.0.1:0", "--base-url", "http://h", state=link, check=False
    )
    assert third.returncode == 1 and "is served already" in third.stderr
    assert second.stderr.startswith(f"kargo-bitbucket: state file {state} is served already")
    assert f"pid {first.process.pid}, receivers at http://127.0.0.1:{first.port}" in second.stderr
    (line,) = cli("urls", state=state).stdout.splitlines()
    assert line.split("\t")[2].startswith(first.base)  # the first one's URLs stand
    first.stop()
    again = server_factory(state)  # once it has stopped, another may serve the file
    assert request(again.base + "/readyz", method="GET").status == 200


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


def test_serve_on_ipv6_prints_urls_that_work(state: Path) -> None:
    port, admin = free_ports(2)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "kargo_bitbucket", "serve", "--state", str(state)),
            *("--listen", f"[::1]:{port}", "--admin-listen", f"[::1]:{admin}"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    admin_url = f"http://[::1]:{admin}/deliveries"
    try:
        printed = ""
        while "metrics and delivery history" not in printed and process.poll() is None:
            printed += process.stdout.readline()  # type: ignore[union-attr]
        assert f"listening on http://[::1]:{port} " in printed
        assert f"metrics and delivery history on {admin_url}\n" in printed
        assert request(admin_url, method="GET").status == 200
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_sigterm_while_serve_applies_its_manifests_exits_0(tmp_path: Path) -> None:
    # Before the server took the stop signals over, SIGTERM killed the process (exit 143).
    manifests = tmp_path / "many.yaml"
    many = [warehouse("demo", f"w{n}", repo=f"https://h/acme/r{n}") for n in range(3000)]
    manifests.write_text(to_yaml(*many))
    state = tmp_path / "state.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "kargo_bitbucket", "serve", "-f", str(manifests), "--state",
         str(state), "--listen", f"127.0.0.1:{free_ports(1)[0]}", "--admin-listen", "off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        eventually(lambda: (tmp_path / "state.db.serve").exists(), what="the claim on the file")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]


def test_urls_before_any_serve_says_who_publishes_them(state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    result = cli("urls", state=state)
    assert result.stdout == ""
    assert "kargo-bitbucket serve" in result.stderr


def test_urls_names_a_config_applied_after_serve_last_ran(state: Path, server_factory: Any) -> None:
    """One config published, one applied since with no serve running: the second is named
    on stderr, not silently missing from the list."""
    cli("apply", "-f", str(EXAMPLE), state=state)
    server_factory(state).stop()
    cli("apply", "-f", "-", state=state, stdin=to_yaml(cluster_config(("cc-bb", "cc-secret"))))
    result = cli("urls", state=state)
    assert result.stdout.startswith("kargo-demo\tbitbucket\t")
    assert "cluster: not published: no status yet" in result.stderr
    assert "`kargo-bitbucket serve`" in result.stderr


def test_urls_says_why_a_receiver_is_not_published(state: Path, server_factory: Any) -> None:
    """With its Secret missing, serve publishes nothing and says why in the Ready condition;
    urls says so too, rather than pointing at serve (which ran)."""
    cli("apply", "-f", str(EXAMPLE / "projectconfig.yaml"), state=state)
    server = server_factory(state)
    assert request(server.base + "/readyz", method="GET").status == 200
    result = cli("urls", state=state)
    assert result.stdout == ""
    assert (
        "kargo-demo: not published: receiver 'bitbucket': "
        "Secret kargo-demo/bitbucket-webhook not found" in result.stderr
    )
    assert "kargo-bitbucket serve" not in result.stderr
    server.stop()
    printed = server.process.stdout.read()  # type: ignore[union-attr]
    assert "receiver problem in kargo-demo: receiver 'bitbucket': Secret" in printed
    assert "no receivers published: fix the problems above with kargo-bitbucket apply" in printed


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


# ---------------------------------------------------------------------------- rough edges


def usage_error(state: Path, *args: str, stdin: str | None = None) -> str:
    """Run a command that must be refused as a usage error; its stderr."""
    result = cli(*args, state=state, stdin=stdin, check=False)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("kubeconfig", "said"),
    [
        ('clusters: [{name: x, cluster: {server: "https://h"}\n', "(line 2, column 1: expected"),
        ("clusters: 5\ncontexts: 3\ncurrent-context: a\n", "(TypeError: "),
        ("- a\n- b\n", "(AttributeError: "),
    ],
)
def test_a_malformed_kubeconfig_is_one_line_not_a_traceback(
    tmp_path: Path, state: Path, kubeconfig: str, said: str
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig)
    for command in (("urls",), ("serve", "--base-url", "https://kargo.example.com")):
        result = cli(*command, "--kubernetes", "--kubeconfig", str(path), state=state, check=False)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(
            f"kargo-bitbucket: cannot load Kubernetes credentials: {path} is not"
        )
        assert said in line


def test_a_kubeconfig_list_is_refused_in_one_line_that_says_why(
    tmp_path: Path, state: Path
) -> None:
    """kubectl merges KUBECONFIG=a:b; this reads one file, and said "a:b not found"."""
    listed = f"{tmp_path / 'a'}:{tmp_path / 'b'}"
    for env in ({"KUBECONFIG": listed}, {}):
        flag = [] if env else ["--kubeconfig", listed]
        result = cli("urls", "--kubernetes", *flag, state=state, check=False, env=env)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert "lists several files" in line and "--kubeconfig FILE" in line


def test_a_kubeconfig_list_of_one_file_and_empty_entries_reads_that_file(
    tmp_path: Path, state: Path
) -> None:
    """kubectl skips the empty entries of ``KUBECONFIG=file:`` (a shell's trailing
    separator); this refused it as a list of several files."""
    path = tmp_path / "config"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    for listed in (f"{path}:", f":{path}", f"{path}::"):
        result = cli("urls", "--kubernetes", state=state, check=False, env={"KUBECONFIG": listed})
        (line,) = result.stderr.splitlines()
        assert line.startswith("kargo-bitbucket: cannot read from the Kubernetes API"), line


def test_an_empty_kubeconfig_variable_means_the_default_file_as_for_kubectl(
    tmp_path: Path, state: Path
) -> None:
    """``KUBECONFIG=`` (set, empty) said "Configuration file  not found", and ``KUBECONFIG=:``
    "lists several files"; kubectl reads ~/.kube/config then, and so does this."""
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    for empty in ("", ":"):
        env = {"KUBECONFIG": empty, "HOME": str(home)}
        result = cli("urls", "--kubernetes", state=state, check=False, env=env)
        assert "not found" not in result.stderr, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("kargo-bitbucket: cannot read from the Kubernetes API"), line
    assert result.returncode == 1


def test_an_api_server_without_kargos_crds_is_one_line_naming_the_crd(
    tmp_path: Path, state: Path
) -> None:
    """A cluster without Kargo (or without its ClusterConfig CRD) answers a list with a plain
    "404 page not found"; the commands printed httpx's two lines (the second a link to MDN)."""
    import http.server
    import threading

    class NotServed(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"404 page not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotServed)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'http://127.0.0.1:{api.server_port}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    try:
        for command in (
            ("urls",),
            ("lint",),
            ("explain", "--repo", "https://bitbucket.org/acme/app"),
            ("hooks", "check", "--credentials", str(kubeconfig)),
        ):
            result = cli(
                *command, "--kubernetes", "--kubeconfig", str(kubeconfig), state=state, check=False
            )
            assert result.returncode == 1, result.stderr
            (line,) = result.stderr.splitlines()
            assert line.startswith("kargo-bitbucket: cannot read from the Kubernetes API: "), line
            assert ".kargo.akuity.io" in line and "install Kargo" in line, line
    finally:
        api.shutdown()


def test_unknown_option_prints_the_commands_usage(state: Path) -> None:
    stderr = usage_error(state, "get", "wh", "--bogus")
    assert stderr.startswith("usage: kargo-bitbucket get ")
    assert "unrecognized arguments: --bogus" in stderr
    assert "usage: kargo-bitbucket hooks check " in usage_error(state, "hooks", "check", "--bogus")


def test_every_option_has_help_and_get_lists_the_kinds(state: Path) -> None:
    from kargo_bitbucket.cli import parser

    def walk(command: argparse.ArgumentParser, name: str) -> list[str]:
        missing = []
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    missing += walk(subparser, f"{name} {sub}")
            elif not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.metavar}")
        return missing

    assert walk(parser(), "kargo-bitbucket") == []
    shown = cli("get", "--help", state=state).stdout
    assert "warehouses (wh)" in shown and "promotions (promo)" in shown


def test_delete_dash_f_deletes_what_the_file_names(state: Path, tmp_path: Path) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    before = len(items(state, "warehouses"))
    manifest = tmp_path / "one.yaml"
    manifest.write_text(
        yaml.safe_dump(next(w for w in items(state, "warehouses")), sort_keys=False)
    )
    out = cli("delete", "-f", str(manifest), state=state).stdout
    assert out.endswith(" deleted\n") and out.startswith("warehouse/kargo-demo/")
    assert len(items(state, "warehouses")) == before - 1
    assert "not found" in usage_error(state, "delete", "-f", str(manifest))
    assert "not both" in usage_error(state, "delete", "wh", "x", "-f", str(manifest))


def test_explain_with_repo_and_pr_says_not_both(state: Path) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    stderr = usage_error(state, "explain", "--repo", "https://h/a/b", "--pr", "https://h/p/1")
    assert "not both" in stderr


@pytest.mark.parametrize("repo", ["notaurl", "http://", "file:///tmp/repo"])
def test_explain_refuses_what_is_not_a_repository_url(state: Path, repo: str) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    assert "not a repository URL" in usage_error(state, "explain", "--repo", repo)


def test_send_secret_from_without_a_state_file_says_how_to_pass_it_in_kubernetes(
    tmp_path: Path,
) -> None:
    stderr = usage_error(
        tmp_path / "none.db", "send", "--url", "http://127.0.0.1:9/x",
        "--secret-from", "kargo-demo/bitbucket-webhook", "--event", "repo:push",
    )  # fmt: skip
    assert "does not exist (--secret-from reads the embedded state file" in stderr
    assert "kubectl -n kargo-demo get secret bitbucket-webhook -o jsonpath=" in stderr


def test_send_refuses_a_timeout_that_is_not_positive(state: Path) -> None:
    for timeout in ("-1", "0", "soon", "1e10"):
        stderr = usage_error(
            state, "send", "--url", "http://127.0.0.1:9/x", "--secret", "x",
            "--event", "repo:push", "--timeout", timeout,
        )  # fmt: skip
        assert "argument --timeout: must be a number of seconds above 0 and at most 86400" in stderr
        assert f"got {timeout!r}" in stderr


def test_send_refuses_a_non_http_url_before_connecting(state: Path) -> None:
    stderr = usage_error(
        state,
        "send",
        "--url",
        "ftp://127.0.0.1:9/x",
        "--secret",
        "s",
        "--event",
        "diagnostics:ping",
    )
    assert "http:// or https://" in stderr and "cannot reach" not in stderr


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--url", "http://127.0.0.1:9/é"), ("--url", "http://127.0.0.1:9/a b"), ("--event", "a\nb")],
)
def test_send_refuses_what_cannot_go_into_a_request(state: Path, flag: str, value: str) -> None:
    """These were tried and reported as "cannot reach", a runtime failure."""
    args = {"--url": "http://127.0.0.1:9/x", "--event": "repo:push", flag: value}
    stderr = usage_error(state, "send", "--secret", "s", *itertools.chain(*args.items()))
    assert f"{flag} {value!r}" in stderr and "cannot reach" not in stderr


def test_send_help_says_what_it_pushes_without_ref(state: Path) -> None:
    assert "refs/heads/main" in " ".join(cli("send", "--help", state=state).stdout.split())


@pytest.mark.parametrize("limit", ["0", "-1", "many", "9" * 30])
def test_deliveries_limit_must_be_a_history_s_size(state: Path, limit: str) -> None:
    assert "--limit: must be a whole number from 1 to 1000000" in usage_error(
        state, "deliveries", "--limit", limit
    )


@pytest.mark.parametrize(
    "args",
    [
        ("get", "warehouses", "\udcff"),
        ("delete", "warehouse", "w", "-n", "\udcff"),
        ("send", "--url", "http://127.0.0.1:9/x", "--secret", "s", "--ref", "main\udcff"),
    ],
)
def test_an_argument_that_is_not_utf8_is_a_usage_error(state: Path, args: tuple[str, ...]) -> None:
    """A byte like 0xff on the command line (subprocess sends "\\udcff" as that byte)
    reached SQLite, JSON or the HTTP client and ended in a traceback."""
    stderr = usage_error(state, *args)
    assert stderr.count("\n") == 1 and "is not valid UTF-8" in stderr, stderr


def test_unreachable_admin_url_is_a_runtime_failure(state: Path) -> None:
    result = cli("deliveries", "--admin-url", "http://127.0.0.1:9", state=state, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("kargo-bitbucket: cannot read http://127.0.0.1:9/")


def test_secret_refuses_a_namespace_kubernetes_would(state: Path) -> None:
    stderr = usage_error(state, "secret", "-n", "Bad NS")
    assert "-n: must be a lowercase RFC 1123 label" in stderr
    assert "--name" in usage_error(state, "secret", "--name", "Bad_Name")


MISSPELT = WAREHOUSE.replace("branch:", "brnach:") % {"name": "typo", "branch": "main"}


def test_misspelt_subscription_field_is_rejected_unless_validate_warn(state: Path) -> None:
    stderr = usage_error(state, "apply", "-f", "-", stdin=MISSPELT)
    assert "spec.subscriptions[0].git.brnach: unknown field; did you mean branch?" in stderr
    assert "--validate=warn" in stderr
    assert not state.exists()
    relaxed = cli("apply", "--validate=warn", "-f", "-", state=state, stdin=MISSPELT)
    assert "warehouse/demo/typo created" in relaxed.stdout
    assert "brnach: unknown field, kept as is and not checked; did you mean branch?" in (
        relaxed.stderr
    )
    elsewhere = MISSPELT.replace("brnach:", "branch:").replace("spec:", "colour: red\nspec:")
    loose = cli("apply", "-f", "-", state=state, stdin=elsewhere)
    assert "colour: unknown field, kept" in loose.stderr


def test_explain_notes_the_unknown_fields_of_each_candidate(state: Path) -> None:
    """A typo kept with --validate=warn (or by a cluster's API server) widens what matches:
    explain says so under the Warehouse it concerns, in every output."""
    cli("apply", "--validate=warn", "-f", "-", state=state, stdin=MISSPELT)
    args = ("explain", "--repo", "https://bitbucket.org/acme/app", "--ref", "main")
    table = cli(*args, state=state).stdout.splitlines()
    at = table.index(next(line for line in table if "Warehouse demo/typo" in line))
    assert table[at + 1] == (
        "  note: Warehouse demo/typo spec.subscriptions[0].git.brnach: unknown field, "
        "ignored as Kargo ignores it; did you mean branch?"
    )
    (candidate,) = json.loads(cli(*args, "-o", "json", state=state).stdout)
    assert candidate["refresh"] is True
    assert candidate["notes"] == [table[at + 1].removeprefix("  note: ")]


def test_deliveries_escape_control_characters_and_speak_yaml(
    state: Path, server_factory: Any, tmp_path: Path
) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    server = server_factory(state)
    (line,) = cli("urls", state=state).stdout.splitlines()
    url = line.split("\t")[2]
    body = build_payload(
        "repo:push", repo="https://bitbucket.org/acme/guestbook", refs=["x\x1b[2J\x07y"]
    )
    payload = tmp_path / "push.json"
    payload.write_bytes(body)
    sent = ["--secret-from", "kargo-demo/bitbucket-webhook", "--event", "repo:push"]
    cli("send", "--url", url, *sent, "--payload", str(payload), state=state)
    shown = eventually(lambda: cli("deliveries", state=state).stdout, what="a delivery shown")
    assert "\x1b" not in shown and "\x07" not in shown
    assert "refs/heads/x\\x1b[2J\\x07y" in shown
    (record,) = yaml.safe_load(cli("deliveries", "-o", "yaml", state=state).stdout)
    assert record["refs"] == ["refs/heads/x\x1b[2J\x07y"]
    assert server.process.poll() is None


def test_unknown_paths_are_counted_and_logged(state: Path, server_factory: Any) -> None:
    cli("apply", "-f", str(EXAMPLE), state=state)
    server = server_factory(state)
    for _ in range(3):
        assert request(server.base + "/wp-login.php\x7f".replace("\x7f", "%7F")).status == 404

    def counted() -> bool:
        metrics = request(server.admin + "/metrics", method="GET").body.decode()
        return "kargo_bitbucket_unknown_path_requests_total 3.0" in metrics

    eventually(counted, what="three unknown paths counted")
    lines = [x for x in server.logs().splitlines() if "unknown path" in x]
    assert len(lines) == 1 and "/wp-login.php" in lines[0]


def test_lint_lists_what_the_receiver_reads_differently_and_exits_1(state: Path) -> None:
    """Every note of every Warehouse, by namespace and name, then each receiver left out as
    resolved now (no serve needed, and a Secret applied since counts); -n keeps one
    namespace."""
    broken = warehouse("other", "tags", commitSelectionStrategy="NewestTag", allowTagsRegexes=["("])
    manifests = to_yaml(
        warehouse("demo", "fine"),
        warehouse("demo", "typo", brnach="release"),
        broken,
        project("demo", ("bb", "bb")),
    )
    cli("apply", "--validate=warn", "-f", "-", state=state, stdin=manifests)
    result = cli("lint", state=state, check=False)
    assert result.returncode == 1, result.stderr
    typo, regex, config = result.stdout.splitlines()
    assert typo == (
        "Warehouse demo/typo spec.subscriptions[0].git.brnach: unknown field, ignored as "
        "Kargo ignores it; did you mean branch?"
    )
    assert regex.startswith("Warehouse other/tags spec.subscriptions[0].git.allowTagsRegexes[0]")
    assert regex.endswith("pushes to its repository will refresh it without this check")
    assert config.startswith("receivers of ProjectConfig demo not all published: receiver 'bb'")
    assert "demo/bb" in config
    only_other = cli("lint", "-n", "other", state=state, check=False)
    assert (only_other.returncode, only_other.stdout.splitlines()) == (1, [regex])
    cli("apply", "-f", "-", state=state, stdin=to_yaml(secret("demo", "bb")))
    assert cli("lint", "-n", "demo", state=state, check=False).stdout.splitlines() == [typo]


def test_lint_says_when_there_is_nothing_to_report(state: Path) -> None:
    cli("apply", "-f", "-", state=state, stdin=to_yaml(warehouse("demo", "fine")))
    result = cli("lint", state=state)
    assert result.stdout == (
        "nothing to report: 1 Warehouse(s) read as written, no receiver left out\n"
    )


def test_lint_n_keeps_the_cluster_config_and_its_help_says_so(state: Path) -> None:
    """The ClusterConfig's receivers serve every namespace, so a receiver it left out is
    one -n NS's pushes miss: listed under any -n, and the help for -n says so rather than
    "only this namespace's receivers"."""
    config = cluster_config(("bb", "bb"))
    cli("apply", "-f", "-", state=state, stdin=to_yaml(warehouse("demo", "fine"), config))
    result = cli("lint", "-n", "demo", state=state, check=False)
    assert (result.returncode, result.stdout.splitlines()) == (
        1,
        [
            "receivers of ClusterConfig cluster not all published: receiver 'bb': Secret "
            "kargo-system-resources/bb not found"
        ],
    )
    usage = " ".join(cli("lint", "--help", state=state).stdout.split())
    assert "and the ClusterConfig's, which serve every namespace" in usage


def test_serve_kubernetes_says_before_connecting_when_it_would_publish_this_machines_address(
    state: Path, tmp_path: Path
) -> None:
    """A run to try or debug beside a deployment, without --base-url, publishes receiver URLs
    at http://127.0.0.1:8080 into the cluster whenever it holds the Lease: it says so before
    it connects. With --base-url or --no-publish there is nothing to say."""
    missing = str(tmp_path / "no-kubeconfig")
    defaulted = cli("serve", "--kubernetes", "--kubeconfig", missing, state=state, check=False)
    assert defaulted.stdout.startswith(
        "note: receivers are published at http://127.0.0.1:8080 (the default base URL, from "
        "--listen), which only this machine reaches"
    )
    assert "pass --base-url with the URL Bitbucket reaches, or --no-publish" in defaulted.stdout
    assert "cannot load Kubernetes credentials" in defaulted.stderr
    # An empty KARGO_BITBUCKET_BASE_URL (a manifest's `value: ""`) leaves the default too.
    emptied = cli(
        "serve", "--kubernetes", "--kubeconfig", missing, state=state, check=False,
        env={"KARGO_BITBUCKET_BASE_URL": ""},
    )  # fmt: skip
    assert emptied.stdout == defaulted.stdout
    for chosen in (["--no-publish"], ["--base-url", "https://hooks.example.com"]):
        run = cli(
            "serve", "--kubernetes", "--kubeconfig", missing, *chosen, state=state, check=False
        )
        assert run.stdout == "", chosen
        assert "cannot load Kubernetes credentials" in run.stderr
