"""The ``kargo-bitbucket`` command line (SPEC §10): argument parsing and printing only."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson
import yaml

from kargo_bitbucket import __version__, logs
from kargo_bitbucket.config import (
    DEFAULT_LISTEN,
    DEFAULT_SYSTEM_NAMESPACE,
    ConfigError,
    ServeSettings,
    default_state,
    env,
)
from kargo_bitbucket.core.manifests import ManifestError, Resource, canonical_kind, parse_manifests
from kargo_bitbucket.core.payloads import PayloadArgumentError, build_payload, is_cloud_url
from kargo_bitbucket.core.signature import sign
from kargo_bitbucket.core.subscriptions import BRANCH_STRATEGY, git_subscriptions
from kargo_bitbucket.store.base import REFRESH_ANNOTATION
from kargo_bitbucket.store.index import Indexes, decode_secret_data
from kargo_bitbucket.store.sqlite import SqliteStore, StateFile, StateFileError

USAGE_ERROR = 2
FAILURE = 1
REDACTED = "<redacted>"


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit 2."""


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the console command."""
    parser = _parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    try:
        code = args.run(args)
    except (UsageError, ManifestError, ConfigError, PayloadArgumentError) as error:
        _fail(str(error), USAGE_ERROR)
    except StateFileError as error:
        _fail(str(error), FAILURE)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def _fail(message: str, code: int) -> NoReturn:
    print(f"kargo-bitbucket: {message}", file=sys.stderr)
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kargo-bitbucket",
        description="Bitbucket webhook receiver that refreshes Kargo Warehouses and Promotions.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log level (env KARGO_BITBUCKET_LOG_LEVEL; default info)",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the webhook receiver")
    serve.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        default=[],
        metavar="PATH",
        help="apply manifests before serving (file, dir or -)",
    )
    _state_flag(serve)
    serve.add_argument(
        "--listen",
        default=env("LISTEN", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--base-url",
        default=env("BASE_URL"),
        metavar="URL",
        help="public base URL receiver URLs are derived from "
        "(env KARGO_BITBUCKET_BASE_URL; default http://<listen>)",
    )
    serve.add_argument(
        "--system-namespace",
        default=env("SYSTEM_NAMESPACE", DEFAULT_SYSTEM_NAMESPACE),
        help=f"namespace of the ClusterConfig's Secrets (default {DEFAULT_SYSTEM_NAMESPACE})",
    )
    serve.add_argument(
        "--body-limit",
        type=int,
        default=int(env("BODY_LIMIT") or 2097152),
        metavar="BYTES",
        help="largest accepted body (default 2097152)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=float(env("BODY_TIMEOUT") or 10),
        metavar="SECONDS",
        help="time allowed to send the body (default 10)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=float(env("HEADER_TIMEOUT") or 10),
        metavar="SECONDS",
        help="time allowed to send the request headers (default 10)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=float(env("SHUTDOWN_GRACE") or 8),
        metavar="SECONDS",
        help="how long in-flight deliveries may finish after SIGTERM (default 8)",
    )
    _kubernetes_flags(serve)
    serve.set_defaults(run=_serve)

    apply = commands.add_parser("apply", help="create or update objects from manifests")
    apply.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=True,
        metavar="PATH",
        help="file, directory of *.yaml/*.yml, or - for stdin",
    )
    _state_flag(apply)
    apply.set_defaults(run=_apply)

    delete = commands.add_parser("delete", help="delete an object")
    delete.add_argument("kind", metavar="KIND")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("-n", "--namespace", default=None)
    _state_flag(delete)
    delete.set_defaults(run=_delete)

    get = commands.add_parser("get", help="show objects")
    get.add_argument("kind", metavar="KIND")
    get.add_argument("name", metavar="NAME", nargs="?")
    scope = get.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", default=None)
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    _state_flag(get)
    get.set_defaults(run=_get)

    urls = commands.add_parser("urls", help="list the published receiver URLs")
    _state_flag(urls)
    _kubernetes_flags(urls)
    urls.set_defaults(run=_urls)

    send = commands.add_parser("send", help="sign and POST a realistic Bitbucket delivery")
    send.add_argument("--url", required=True, help="receiver URL")
    who = send.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--secret", help="the webhook secret (env KARGO_BITBUCKET_SECRET)", default=env("SECRET")
    )
    who.add_argument(
        "--secret-from",
        metavar="NAMESPACE/NAME",
        help="read the secret from a Secret in the state file",
    )
    send.add_argument(
        "--event",
        required=True,
        metavar="KEY",
        help="X-Event-Key, e.g. repo:push, repo:refs_changed, pr:merged",
    )
    send.add_argument("--repo", metavar="URL", help="repository URL (push events)")
    send.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="REF",
        help="branch name or full refs/heads/… / refs/tags/… ref (repeatable)",
    )
    send.add_argument("--pr", metavar="URL", help="pull request URL (PR events)")
    send.add_argument("--payload", metavar="FILE", help="send this body instead of building one")
    send.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for an answer")
    _state_flag(send)
    send.set_defaults(run=_send)

    secret = commands.add_parser("secret", help="print a new random secret and its Secret manifest")
    secret.add_argument("--name", default="bitbucket-webhook", help="Secret name")
    secret.add_argument("-n", "--namespace", default="kargo-demo")
    secret.set_defaults(run=_secret)
    return parser


def _state_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        type=Path,
        default=default_state(),
        metavar="FILE",
        help="state file (env KARGO_BITBUCKET_STATE; default .kargo-bitbucket/state.db)",
    )


def _kubernetes_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubernetes", action="store_true", help="use the Kubernetes API instead of the state file"
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), metavar="FILE")
    parser.add_argument("--context", metavar="NAME")


def _no_kubernetes(args: argparse.Namespace) -> None:
    if args.kubernetes:
        raise UsageError(
            "--kubernetes mode is not available in this version; use the embedded state file"
        )


# Manifests
def load_manifests(paths: Sequence[str]) -> list[Resource]:
    """Read and check every document of every path; nothing is returned unless all are valid."""
    resources: list[Resource] = []
    for path in paths:
        for source, text in _read_sources(path):
            resources.extend(parse_manifests(text, source))
    return resources


def _read_sources(path: str) -> list[tuple[str, str]]:
    if path == "-":
        return [("<stdin>", sys.stdin.read())]
    target = Path(path)
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise UsageError(f"{path}: no *.yaml or *.yml files in this directory")
    elif target.exists():
        files = [target]
    else:
        raise UsageError(f"{path}: no such file or directory")
    sources = []
    for file in files:
        try:
            sources.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"{file}: cannot read: {error}") from error
    return sources


def _warn_unevaluable(resources: Sequence[Resource]) -> None:
    for resource in resources:
        for warning in resource.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if resource.kind != "Warehouse":
            continue
        for subscription in git_subscriptions(resource.body):
            for problem in subscription.problems:
                print(
                    f"warning: Warehouse {resource.namespace}/{resource.name} "
                    f"spec.subscriptions[{subscription.index}].git.{problem}; "
                    "pushes to its repository will refresh it without this check",
                    file=sys.stderr,
                )


def _apply_to(state: StateFile, resources: Sequence[Resource]) -> None:
    _warn_unevaluable(resources)
    for resource, outcome in state.apply(resources):
        where = f"{resource.namespace}/" if resource.namespace else ""
        print(f"{resource.kind.lower()}/{where}{resource.name} {outcome}")


def _apply(args: argparse.Namespace) -> int:
    resources = load_manifests(args.files)
    state = StateFile(args.state)
    try:
        _apply_to(state, resources)
    finally:
        state.close()
    return 0


def _delete(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    state = StateFile(args.state, create=False)
    try:
        namespace = _namespace_of(state, kind, args.name, args.namespace)
        if not state.delete(kind, namespace, args.name):
            raise UsageError(f"{kind} {_qualified(namespace, args.name)} not found")
    finally:
        state.close()
    print(f"{kind.lower()}/{_qualified(namespace, args.name)} deleted")
    return 0


def _kind(text: str) -> str:
    try:
        return canonical_kind(text)
    except ValueError as error:
        raise UsageError(str(error)) from error


def _qualified(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _namespace_of(state: StateFile, kind: str, name: str, namespace: str | None) -> str:
    """The namespace of a named object: as given, or the only one holding that name."""
    if kind == "ClusterConfig":
        return ""
    if namespace is not None:
        return namespace
    found = {str(obj["metadata"].get("namespace", "")) for obj in state.get(kind, None, name)}
    if len(found) > 1:
        raise UsageError(
            f"{kind} {name} exists in several namespaces "
            f"({', '.join(sorted(found))}); pick one with -n"
        )
    if not found:
        raise UsageError(f"{kind} {name} not found")
    return found.pop()


def _get(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    state = StateFile(args.state, create=False)
    try:
        namespace = None if args.all_namespaces else args.namespace
        if args.name is not None:
            namespace = _namespace_of(state, kind, args.name, namespace)
        objects = state.get(kind, namespace, args.name)
    finally:
        state.close()
    objects = [_redact(obj) for obj in objects]
    if args.name is not None and not objects:
        raise UsageError(f"{kind} {args.name} not found")
    document: Any = (
        objects[0]
        if args.name is not None
        else {"apiVersion": "v1", "kind": "List", "items": objects}
    )
    if args.output == "json":
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False))
    else:
        _print_table(kind, objects)
    return 0


def _redact(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("kind") == "Secret":
        for field in ("data", "stringData"):
            if isinstance(obj.get(field), dict):
                obj[field] = dict.fromkeys(obj[field], REDACTED)
    return obj


def _print_table(kind: str, objects: Sequence[dict[str, Any]]) -> None:
    if not objects:
        print(f"No {kind} objects found.", file=sys.stderr)
        return
    rows = [_row(kind, obj) for obj in objects]
    header = ["NAMESPACE", "NAME", *_columns(kind)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "   ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _columns(kind: str) -> list[str]:
    return {
        "Warehouse": ["REPOSITORIES", "LAST REFRESH"],
        "Promotion": ["PHASE", "LAST REFRESH"],
        "ProjectConfig": ["RECEIVERS", "READY"],
        "ClusterConfig": ["RECEIVERS", "READY"],
        "Secret": ["KEYS"],
    }[kind]


def _row(kind: str, obj: dict[str, Any]) -> list[str]:
    meta = obj.get("metadata", {})
    refresh = (meta.get("annotations") or {}).get(REFRESH_ANNOTATION, "-")
    base = [meta.get("namespace") or "-", meta.get("name", "")]
    status = obj.get("status") or {}
    if kind == "Warehouse":
        repos = ",".join(s.repo_url for s in git_subscriptions(obj)) or "-"
        return [*base, repos, refresh]
    if kind == "Promotion":
        return [*base, status.get("phase") or "-", refresh]
    if kind in ("ProjectConfig", "ClusterConfig"):
        conditions = status.get("conditions") or []
        ready = next((str(c.get("status")) for c in conditions if c.get("type") == "Ready"), "-")
        return [*base, str(len(status.get("webhookReceivers") or [])), ready]
    return [*base, ",".join(obj.get("data") or {}) or "-"]


def _urls(args: argparse.Namespace) -> int:
    _no_kubernetes(args)
    state = StateFile(args.state, create=False)
    try:
        for line in _published(state):
            print(line)
    finally:
        state.close()
    return 0


def _published(state: StateFile) -> list[str]:
    lines = []
    for kind in ("ClusterConfig", "ProjectConfig"):
        for obj in state.get(kind):
            owner = obj["metadata"].get("namespace") or "cluster"
            for receiver in (obj.get("status") or {}).get("webhookReceivers") or []:
                lines.append(f"{owner}\t{receiver.get('name')}\t{receiver.get('url')}")
    return lines


# serve
def _serve(args: argparse.Namespace) -> int:
    _no_kubernetes(args)
    settings = ServeSettings.build(
        listen=args.listen,
        base_url=args.base_url,
        state=args.state,
        system_namespace=args.system_namespace,
        body_limit=args.body_limit,
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
        shutdown_grace=args.shutdown_grace,
    )
    resources = load_manifests(args.files) if args.files else []
    state = StateFile(settings.state)
    if resources:
        _apply_to(state, resources)
    from kargo_bitbucket.app import Lifecycle, create_app
    from kargo_bitbucket.server import build_server

    indexes = Indexes(settings.base_url, settings.system_namespace)
    store = SqliteStore(state, indexes)
    lifecycle = Lifecycle()

    async def announce() -> None:
        _announce(settings, store)

    app = create_app(
        store,
        lifecycle=lifecycle,
        body_limit=settings.body_limit,
        body_timeout=settings.body_timeout,
        on_ready=announce,
    )
    server = build_server(
        app,
        lifecycle,
        settings.host,
        settings.port,
        header_timeout=settings.header_timeout,
        shutdown_grace=settings.shutdown_grace,
    )
    try:
        asyncio.run(server.serve())
    finally:
        state.close()
    return 0 if server.started else FAILURE


def _announce(settings: ServeSettings, store: SqliteStore) -> None:
    """Print the receivers and a command that triggers a refresh, once ready."""
    resolution = store.indexes.resolution
    print(
        f"kargo-bitbucket listening on http://{settings.host}:{settings.port} "
        f"(state {settings.state})",
        flush=True,
    )
    routes = list(resolution.routes.values())
    for owner, status in resolution.statuses.items():
        for problem in status.problems:
            print(f"receiver problem in {owner.label}: {problem}", flush=True)
    if not routes:
        print(
            "no receivers published: apply a ProjectConfig with a bitbucket receiver "
            "and its Secret",
            flush=True,
        )
        return
    for owner, status in resolution.statuses.items():
        for receiver in status.receivers:
            print(f"receiver {owner.label}/{receiver['name']}: {receiver['url']}", flush=True)
    example = _example_send(settings, store)
    if example:
        print(f"try it:\n  {example}", flush=True)


def _example_send(settings: ServeSettings, store: SqliteStore) -> str | None:
    """A ready-to-paste ``send`` that refreshes a branch Warehouse behind the first receiver."""
    for route in store.indexes.resolution.routes.values():
        found = [
            (not subscription.repo_url.startswith("http"), obj["metadata"]["name"], subscription)
            for obj in store.state.get("Warehouse", route.owner.scope)
            for subscription in git_subscriptions(obj)
            if subscription.strategy == BRANCH_STRATEGY
        ]
        if not found:
            continue
        _, name, subscription = min(found, key=lambda item: item[:2])
        event = "repo:push" if is_cloud_url(subscription.repo_url) else "repo:refs_changed"
        return (
            f"kargo-bitbucket send --url {settings.base_url.url(route.path)} "
            f"--secret-from {route.secret_ref} --state {settings.state} --event {event} "
            f"--repo {subscription.repo_url} --ref {subscription.branch or 'main'}"
            f"    # refreshes Warehouse {name}"
        )
    return None


# send and secret
def _send(args: argparse.Namespace) -> int:
    secret = _send_secret(args)
    if args.payload:
        try:
            body = Path(args.payload).read_bytes()
        except OSError as error:
            raise UsageError(f"--payload {args.payload}: {error.strerror}") from error
    else:
        body = build_payload(args.event, repo=args.repo, refs=args.ref or None, pr=args.pr)
    headers = {"Content-Type": "application/json", "X-Event-Key": args.event}
    cloud = is_cloud_url(args.repo or args.pr or "") or args.event.startswith(
        ("repo:push", "pullrequest:")
    )
    if cloud:
        headers |= {
            "User-Agent": "Bitbucket-Webhooks/2.0",
            "X-Request-UUID": str(uuid.uuid4()),
            "X-Hook-UUID": str(uuid.uuid4()),
            "X-Attempt-Number": "1",
        }
    else:
        headers |= {
            "User-Agent": "Bitbucket-kargo-bitbucket-send",
            "X-Request-Id": str(uuid.uuid4()),
        }
        headers["Content-Type"] = "application/json; charset=utf-8"
    if args.event.lower() != "diagnostics:ping":
        headers["X-Hub-Signature"] = sign(body, secret)
    request = urllib.request.Request(args.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        print(f"kargo-bitbucket: cannot reach {args.url}: {reason}", file=sys.stderr)
        return FAILURE
    print(status)
    print(text)
    return 0 if 200 <= status < 300 else FAILURE


def _send_secret(args: argparse.Namespace) -> bytes:
    if args.secret is not None:
        return str(args.secret).encode()
    namespace, _, name = str(args.secret_from).partition("/")
    if not name:
        raise UsageError("--secret-from takes NAMESPACE/NAME")
    state = StateFile(args.state, create=False)
    try:
        found = state.get("Secret", namespace, name)
    finally:
        state.close()
    if not found:
        raise UsageError(f"Secret {namespace}/{name} not found in {args.state}")
    value = decode_secret_data(found[0]).get("secret")
    if value is None:
        raise UsageError(f"Secret {namespace}/{name} has no key 'secret'")
    return value


def _secret(args: argparse.Namespace) -> int:
    value = secrets.token_urlsafe(32)
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": args.name,
            "namespace": args.namespace,
            "labels": {"kargo.akuity.io/cred-type": "generic"},
        },
        "stringData": {"secret": value},
    }
    print(f"# Paste this secret into the Bitbucket webhook's Secret field: {value}")
    sys.stdout.write(yaml.safe_dump(manifest, sort_keys=False))
    return 0
