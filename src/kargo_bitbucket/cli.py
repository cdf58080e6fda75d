"""The ``kargo-bitbucket`` command line (SPEC §10): argument parsing and printing only."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import orjson
import uvloop
import yaml

from kargo_bitbucket import __version__, logs
from kargo_bitbucket.config import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SYSTEM_NAMESPACE,
    ConfigError,
    FromEnv,
    ServeSettings,
    admin_address,
    boolean,
    choice,
    default_max_connections,
    default_state,
    env,
    listen_address,
    natural_int,
    positive_int,
    positive_seconds,
    resolve_env,
)
from kargo_bitbucket.core.decision import decide_pull_request, decide_push
from kargo_bitbucket.core.events import Push
from kargo_bitbucket.core.identity import repository_identity
from kargo_bitbucket.core.manifests import ManifestError, Resource, canonical_kind, parse_manifests
from kargo_bitbucket.core.payloads import (
    PayloadArgumentError,
    build_payload,
    is_cloud_url,
    split_ref,
)
from kargo_bitbucket.core.receivers import BaseURL, published
from kargo_bitbucket.core.signature import sign
from kargo_bitbucket.core.subscriptions import BRANCH_STRATEGY, git_subscriptions
from kargo_bitbucket.history import DEFAULT_HISTORY_SIZE, DeliveryRecord
from kargo_bitbucket.store.base import REFRESH_ANNOTATION, REFRESH_BUDGET, Store
from kargo_bitbucket.store.index import Indexes, decode_secret_data
from kargo_bitbucket.store.sqlite import (
    SqliteStore,
    StateFile,
    StateFileError,
    load_indexes,
)

if TYPE_CHECKING:
    from lightkube import AsyncClient

T = TypeVar("T")

USAGE_ERROR = 2
LOG_LEVELS = ["debug", "info", "warning", "error"]
LOG_LEVEL_HELP = "log level (env KARGO_BITBUCKET_LOG_LEVEL; default info)"
SECONDS_FORM = "a number of seconds above 0, e.g. 10 or 2.5"
FAILURE = 1
REDACTED = "<redacted>"


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit 2."""


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the console command."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        resolve_env(vars(args))
    except ConfigError as error:
        _fail(str(error), USAGE_ERROR)
    logs.configure(args.log_level)
    try:
        code = args.run(args)
        sys.stdout.flush()
    except (UsageError, ManifestError, ConfigError, PayloadArgumentError, StateFileError) as error:
        _fail(str(error), USAGE_ERROR)
    except BrokenPipeError:
        # The reader went away (`get ... | head`): say nothing more, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = FAILURE
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
        default=FromEnv("LOG_LEVEL", "info", choice(*LOG_LEVELS), " or ".join(LOG_LEVELS)),
        choices=LOG_LEVELS,
        help=LOG_LEVEL_HELP,
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    # Also accepted after the command (`serve --log-level debug`), where people put it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument(
        "--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, help=LOG_LEVEL_HELP
    )

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[after], **kwargs)

    serve = add("serve", help="run the webhook receiver")
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
        default=FromEnv("LISTEN", DEFAULT_LISTEN, listen_address, "HOST:PORT"),
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
        default=FromEnv(
            "BODY_LIMIT", 2097152, positive_int, "a whole number of bytes, e.g. 2097152"
        ),
        metavar="BYTES",
        help="largest accepted body (default 2097152)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=FromEnv("BODY_TIMEOUT", 10.0, positive_seconds, SECONDS_FORM),
        metavar="SECONDS",
        help="time allowed to send the body (default 10)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=FromEnv("HEADER_TIMEOUT", 10.0, positive_seconds, SECONDS_FORM),
        metavar="SECONDS",
        help="time allowed to send the request headers (default 10)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=FromEnv(
            "MAX_CONNECTIONS", default_max_connections(), positive_int, "a whole number above 0"
        ),
        metavar="N",
        help="open webhook connections at most; at the cap an idle one is closed, else 503 "
        f"(default {DEFAULT_MAX_CONNECTIONS}, fewer if the open-file limit is low)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=FromEnv("SHUTDOWN_GRACE", 8.0, positive_seconds, SECONDS_FORM),
        metavar="SECONDS",
        help="how long in-flight deliveries may finish after SIGTERM (default 8)",
    )
    serve.add_argument(
        "--admin-listen",
        default=FromEnv("ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN, admin_address, "HOST:PORT or off"),
        metavar="HOST:PORT|off",
        help=f"metrics and delivery history listener (default {DEFAULT_ADMIN_LISTEN}; "
        "never the webhook port; off disables it and metrics)",
    )
    serve.add_argument(
        "--history-size",
        type=int,
        default=FromEnv(
            "HISTORY_SIZE", DEFAULT_HISTORY_SIZE, natural_int, "a whole number, 0 or more"
        ),
        metavar="N",
        help=f"deliveries kept in the history (default {DEFAULT_HISTORY_SIZE}; 0 turns it off)",
    )
    _kubernetes_flags(serve)
    serve.add_argument(
        "--no-publish",
        action="store_true",
        default=FromEnv("NO_PUBLISH", False, boolean, "1, true, 0 or false"),
        help="Kubernetes mode: do not write receiver URLs into status "
        "(where Kargo's own controller publishes them)",
    )
    serve.add_argument(
        "--lease-namespace",
        default=env("LEASE_NAMESPACE") or os.environ.get("POD_NAMESPACE") or "kargo",
        help="Kubernetes mode: namespace of the leader-election Lease "
        "(default $POD_NAMESPACE, else kargo)",
    )
    serve.add_argument(
        "--lease-duration",
        type=float,
        default=FromEnv("LEASE_DURATION", 15.0, positive_seconds, SECONDS_FORM),
        metavar="SECONDS",
        help="Kubernetes mode: how long the status writer's Lease lasts unrenewed "
        "(at least 3; default 15; renewed every third of it)",
    )
    serve.set_defaults(run=_serve)

    apply = add("apply", help="create or update objects from manifests")
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

    delete = add("delete", help="delete an object")
    delete.add_argument("kind", metavar="KIND")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("-n", "--namespace", default=None)
    _state_flag(delete)
    delete.set_defaults(run=_delete)

    get = add("get", help="show objects")
    get.add_argument("kind", metavar="KIND")
    get.add_argument("name", metavar="NAME", nargs="?")
    scope = get.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", default=None)
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    _state_flag(get)
    get.set_defaults(run=_get)

    urls = add("urls", help="list the published receiver URLs")
    _state_flag(urls)
    _kubernetes_flags(urls)
    urls.set_defaults(run=_urls)

    send = add("send", help="sign and POST a realistic Bitbucket delivery")
    send.add_argument("--url", required=True, help="receiver URL")
    who = send.add_mutually_exclusive_group()
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
        help="branch name, or a full refs/heads/… or refs/tags/… ref (a tag needs refs/tags/; "
        "repeatable)",
    )
    send.add_argument("--pr", metavar="URL", help="pull request URL (PR events)")
    send.add_argument("--payload", metavar="FILE", help="send this body instead of building one")
    send.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for an answer")
    _state_flag(send)
    send.set_defaults(run=_send)

    deliveries = add(
        "deliveries", help="recent deliveries and why each candidate was (not) refreshed"
    )
    deliveries.add_argument(
        "-n", "--namespace", help="project namespace (cluster for the ClusterConfig's receivers)"
    )
    deliveries.add_argument("--receiver", metavar="NAME", help="receiver name")
    deliveries.add_argument(
        "--limit", type=int, default=20, metavar="N", help="how many, newest first (default 20)"
    )
    deliveries.add_argument("-o", "--output", choices=["table", "json"], default="table")
    _state_flag(deliveries)
    deliveries.add_argument(
        "--admin-url",
        metavar="URL",
        help="read a running server's history from its admin listener, "
        "e.g. http://127.0.0.1:9090 (Kubernetes mode keeps it per replica)",
    )
    deliveries.set_defaults(run=_deliveries)

    explain = add("explain", help="dry run: what a push or PR event would refresh, and why")
    explain.add_argument("--repo", metavar="URL", help="pushed repository URL")
    explain.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="REF",
        help="pushed branch name or full refs/heads/… / refs/tags/… ref "
        "(repeatable; none = refs unknown)",
    )
    explain.add_argument("--pr", metavar="URL", help="merged or declined pull request URL")
    explain.add_argument(
        "-n",
        "--namespace",
        help="the receiver's project (default: all, as a ClusterConfig receiver sees them)",
    )
    explain.add_argument("-o", "--output", choices=["table", "json"], default="table")
    _state_flag(explain)
    _kubernetes_flags(explain)
    explain.set_defaults(run=_explain)

    hooks = add("hooks", help="check or create the Bitbucket webhooks every receiver needs")
    hooks_commands = hooks.add_subparsers(title="hooks commands", required=True, metavar="COMMAND")
    for name, what in (
        ("check", "one line per repository: ok or what is off (exit 1 when anything is)"),
        ("sync", "show the webhooks to create, update or delete (--apply does it)"),
    ):
        command = hooks_commands.add_parser(name, parents=[after], help=what)
        command.set_defaults(run=_hooks, hooks_command=name)
        _hooks_flags(command)
        if name == "sync":
            command.add_argument(
                "--apply", action="store_true", help="make the changes (default: dry run)"
            )
            command.add_argument(
                "--prune",
                action="store_true",
                help="also delete our hooks in the workspace's/project's repositories "
                "that no Warehouse or Promotion needs any more",
            )

    secret = add("secret", help="print a new random secret and its Secret manifest")
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
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        metavar="FILE",
        help="kubeconfig file (default $KUBECONFIG; without one, the in-cluster service account)",
    )
    parser.add_argument("--context", metavar="NAME", help="kubeconfig context (default: current)")


def _hooks_flags(parser: argparse.ArgumentParser) -> None:
    _state_flag(parser)
    _kubernetes_flags(parser)
    parser.add_argument(
        "--credentials",
        default=env("CREDENTIALS"),
        metavar="FILE",
        help="YAML/JSON file mapping Bitbucket hosts to API tokens "
        "(env KARGO_BITBUCKET_CREDENTIALS; see docs/bitbucket-setup.md)",
    )
    parser.add_argument(
        "--credentials-secret",
        default=f"{os.environ.get('POD_NAMESPACE') or 'kargo'}/kargo-bitbucket-credentials",
        metavar="NAMESPACE/NAME",
        help="Kubernetes mode: Secret whose key credentials.yaml holds that document "
        "(default $POD_NAMESPACE or kargo, /kargo-bitbucket-credentials)",
    )
    parser.add_argument(
        "--api-url",
        action="append",
        default=[],
        metavar="HOST=URL",
        help="REST API base URL of a Bitbucket host, where it is not the default (repeatable)",
    )
    parser.add_argument(
        "--base-url",
        default=env("BASE_URL"),
        metavar="URL",
        help="the server's public base URL (env KARGO_BITBUCKET_BASE_URL; "
        "default: taken from the receiver URLs published in status)",
    )
    parser.add_argument(
        "--scope",
        choices=["repository", "workspace"],
        default="repository",
        help="one hook per repository (default), or one per Cloud workspace / Data Center project",
    )
    parser.add_argument(
        "--mirrors",
        action="store_true",
        help="Data Center hooks also get mirror:repo_synchronized (repositories behind mirrors)",
    )
    parser.add_argument(
        "--system-namespace",
        default=env("SYSTEM_NAMESPACE", DEFAULT_SYSTEM_NAMESPACE),
        help=f"namespace of the ClusterConfig's Secrets (default {DEFAULT_SYSTEM_NAMESPACE})",
    )
    parser.add_argument(
        "-o", "--output", choices=["table", "json"], default="table", help="table or json"
    )


def _hooks(args: argparse.Namespace) -> int:
    from kargo_bitbucket.hooks import run

    return run(args)


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
            raise UsageError(
                f"{path}: no *.yaml or *.yml files in this directory: no objects to apply"
            )
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
    if not resources:
        raise UsageError("no objects to apply")
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
    if args.kubernetes:
        from kargo_bitbucket.store.kubernetes import published_receivers

        for owner, name, url in _from_cluster(published_receivers(_connect(args))):
            print(f"{owner}\t{name}\t{url}")
        return 0
    state = StateFile(args.state, create=False)
    try:
        lines = _published(state)
    finally:
        state.close()
    for line in lines:
        print(line)
    if not lines:
        print(
            f"kargo-bitbucket: no receiver published in {args.state} yet "
            "(`kargo-bitbucket serve` publishes them)",
            file=sys.stderr,
        )
    return 0


def _published(state: StateFile) -> list[str]:
    lines = []
    for kind in ("ClusterConfig", "ProjectConfig"):
        for obj in state.get(kind):
            lines += ["\t".join(entry) for entry in published(obj)]
    return lines


# serve
def _serve(args: argparse.Namespace) -> int:
    settings = ServeSettings.build(
        listen=args.listen,
        base_url=args.base_url,
        state=args.state,
        system_namespace=args.system_namespace,
        body_limit=args.body_limit,
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
        shutdown_grace=args.shutdown_grace,
        admin_listen=args.admin_listen,
        history_size=args.history_size,
    )
    indexes = Indexes(settings.base_url, settings.system_namespace)
    if args.kubernetes:
        if args.files:
            raise UsageError(
                "-f applies manifests to the state file; with --kubernetes use kubectl apply"
            )
        return _run(settings, _kubernetes_store(args, indexes), lambda: _announce(settings))
    resources = load_manifests(args.files) if args.files else []
    state = StateFile(settings.state, busy_timeout=REFRESH_BUDGET)
    if resources:
        _apply_to(state, resources)
    store = SqliteStore(state, indexes, settings.history_size)
    try:
        return _run(settings, store, lambda: _announce(settings, store))
    finally:
        state.close()


def _connect(args: argparse.Namespace) -> AsyncClient:
    """A client for ``--kubeconfig``/``--context``; a bad configuration is a usage error."""
    from kargo_bitbucket.store.kubernetes import KubernetesConfigError, connect

    try:
        return connect(args.kubeconfig, args.context)
    except KubernetesConfigError as error:
        raise UsageError(str(error)) from error


def _from_cluster(load: Coroutine[Any, Any, T]) -> T:
    """Run a one-shot read of the cluster; an unreachable or refusing API is one line, exit 1."""
    import httpx2
    from lightkube import ApiError

    try:
        return asyncio.run(load)
    except (ApiError, httpx2.HTTPError) as error:
        _fail(f"cannot read from the Kubernetes API: {error}", FAILURE)


def _kubernetes_store(args: argparse.Namespace, indexes: Indexes) -> Store:
    from kargo_bitbucket.store.kubernetes import KubernetesStore

    if not args.lease_duration >= 3:
        _fail("--lease-duration must be at least 3 seconds", USAGE_ERROR)
    client = _connect(args)
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    return KubernetesStore(
        client,
        indexes,
        namespace=args.lease_namespace,
        identity=identity,
        publish=not args.no_publish,
        history_size=args.history_size,
        lease_duration=args.lease_duration,
    )


def _run(settings: ServeSettings, store: Store, announce: Callable[[], None]) -> int:
    """Serve (and the admin listener) until SIGTERM; exit 0 after a graceful stop."""
    from kargo_bitbucket.admin import create_admin_app
    from kargo_bitbucket.app import Lifecycle, create_app
    from kargo_bitbucket.connections import Connections
    from kargo_bitbucket.metrics import Metrics
    from kargo_bitbucket.server import (
        ListenError,
        bind,
        build_admin_server,
        build_server,
        serve_together,
    )

    lifecycle = Lifecycle()
    connections = Connections(settings.max_connections, settings.header_timeout)
    metrics = None
    admin = None
    if settings.admin is not None:
        metrics = Metrics(
            store.indexes.counts,
            lambda: store.watch_restarts,
            lambda: store.api_failures,
            connections.dropped.items,
        )
        admin = build_admin_server(create_admin_app(store, metrics), *settings.admin)

    async def on_ready() -> None:
        announce()
        if settings.admin is not None:
            host, port = settings.admin
            print(f"metrics and delivery history on http://{host}:{port}/deliveries", flush=True)

    app = create_app(
        store,
        lifecycle=lifecycle,
        body_limit=settings.body_limit,
        body_timeout=settings.body_timeout,
        on_ready=on_ready,
        metrics=metrics,
    )
    server = build_server(
        app,
        lifecycle,
        settings.host,
        settings.port,
        connections=connections,
        shutdown_grace=settings.shutdown_grace,
    )
    try:
        main_socket = bind(settings.host, settings.port)
        admin_socket = bind(*settings.admin) if settings.admin is not None else None
    except ListenError as error:
        _fail(str(error), FAILURE)
    uvloop.run(serve_together(server, main_socket, admin, admin_socket))
    return 0 if server.started else FAILURE


def _announce(settings: ServeSettings, store: SqliteStore | None = None) -> None:
    """Print the receivers and, on the embedded store, a command that triggers a refresh."""
    where = f"state {settings.state}" if store else "Kubernetes"
    print(
        f"kargo-bitbucket listening on http://{settings.host}:{settings.port} ({where})", flush=True
    )
    if store is None:
        return
    resolution = store.indexes.resolution
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
            (not subscription.repo_url.startswith("http"), warehouse.name, subscription)
            for warehouse in store.indexes.warehouses(route.owner.scope)
            for subscription in warehouse.subscriptions
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


# deliveries and explain
def _deliveries(args: argparse.Namespace) -> int:
    if args.admin_url:
        records = _fetch_history(args)
    else:
        state = StateFile(args.state, create=False)
        try:
            records = state.deliveries(args.namespace, args.receiver, args.limit)
        finally:
            state.close()
    if args.output == "json":
        data = records
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not records:
        print("No deliveries recorded.", file=sys.stderr)
    for record in records:
        print(_describe_delivery(record))
    return 0


def _fetch_history(args: argparse.Namespace) -> list[DeliveryRecord]:
    query = urllib.parse.urlencode(
        {
            k: v
            for k, v in (
                ("namespace", args.namespace),
                ("receiver", args.receiver),
                ("limit", args.limit),
            )
            if v
        }
    )
    url = f"{args.admin_url.rstrip('/')}/deliveries.json?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data = orjson.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise UsageError(f"cannot read {url}: {getattr(error, 'reason', error)}") from error
    return [DeliveryRecord.from_json(item) for item in data]


def _describe_delivery(record: DeliveryRecord) -> str:
    attempt = f" attempt {record.attempt}" if record.attempt and record.attempt != "1" else ""
    lines = [
        f"{record.time}  {record.receiver}  {record.event}  {record.delivery_id or '-'}{attempt}"
        f"  -> {record.status} {record.message} ({record.duration_ms:.1f} ms)"
        f"{'' if record.signed else '  unsigned'}"
    ]
    if record.detail:
        lines.append(f"  detail: {record.detail}")
    if record.pr_url:
        lines.append(f"  pull request: {record.pr_url}")
    elif record.repository:
        refs = ", ".join(record.refs) if record.refs is not None else "unknown (refresh all)"
        if record.omitted_refs:
            refs += f" and {record.omitted_refs} more"
        lines.append(f"  repository: {', '.join(record.repository)}")
        lines.append(f"  refs: {refs}")
    for c in record.candidates:
        lines.append(f"  {c.outcome:<13} {c.kind} {_qualified(c.namespace, c.name)}: {c.reason}")
    if record.omitted_candidates:
        lines.append(f"  and {record.omitted_candidates} more candidates")
    if record.status == 200 and record.repository and not record.candidates:
        lines.append("  no Warehouse in the receiver's scope subscribes to this repository")
    return "\n".join(lines)


def _explain(args: argparse.Namespace) -> int:
    if bool(args.repo) == bool(args.pr):
        raise UsageError("explain needs --repo (a push) or --pr (a pull request event)")
    if args.pr and args.ref:
        raise UsageError("--ref goes with --repo")
    indexes = Indexes(BaseURL.parse("http://explain.invalid"), DEFAULT_SYSTEM_NAMESPACE)
    if args.kubernetes:
        from kargo_bitbucket.store.kubernetes import load_indexes as load_cluster

        _from_cluster(load_cluster(_connect(args), indexes))
    else:
        state = StateFile(args.state, create=False)
        try:
            load_indexes(state, indexes)
        finally:
            state.close()
    if args.repo:
        refs = tuple(split_ref(ref)[0] for ref in args.ref) or None
        push = Push(repo_urls=(args.repo,), refs=refs)
        verdicts = decide_push(push, lambda found: indexes.warehouses_for(found, args.namespace))
        empty = (
            f"no Warehouse{' in ' + args.namespace if args.namespace else ''} subscribes "
            f"to {repository_identity(args.repo)} (compared by repository identity)"
        )
    else:
        waiting = indexes.promotions_waiting_on(args.pr, args.namespace)
        verdicts = decide_pull_request(args.pr, waiting)
        empty = f"no Running Promotion waits on {args.pr} in a git-wait-for-pr step"
    if args.output == "json":
        data = [
            {
                "kind": v.kind,
                "namespace": v.namespace,
                "name": v.name,
                "refresh": v.refresh,
                "reason": v.reason,
                "warnings": list(v.warnings),
            }
            for v in verdicts
        ]
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not verdicts:
        print(empty)
    for v in verdicts:
        verb = "would refresh" if v.refresh else "would not refresh"
        print(f"{verb:<17} {v.kind} {_qualified(v.namespace, v.name)}: {v.reason}")
        for warning in v.warnings:
            print(f"  warning: {warning}")
    if any(v.refresh for v in verdicts):
        print(
            "If a real event did not refresh it, the delivery never arrived: "
            "`kargo-bitbucket hooks check` shows each repository's webhook."
        )
    return 0


# send and secret
def _send(args: argparse.Namespace) -> int:
    secret = _send_secret(args)
    if args.payload:
        try:
            body = Path(args.payload).read_bytes()
        except OSError as error:
            raise UsageError(f"--payload {args.payload}: {error.strerror}") from error
    else:
        if any(not ref.strip() for ref in args.ref):
            raise UsageError("--ref must not be empty")
        try:
            body = build_payload(args.event, repo=args.repo, refs=args.ref or None, pr=args.pr)
        except PayloadArgumentError:
            raise
        except ValueError as error:
            raise UsageError(f"--repo/--pr: {error}") from error
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
    try:
        request = urllib.request.Request(args.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except ValueError as error:
        raise UsageError(f"--url {args.url!r}: {error}") from error
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
    if args.secret_from is None:
        raise UsageError("send needs --secret, --secret-from or KARGO_BITBUCKET_SECRET")
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
