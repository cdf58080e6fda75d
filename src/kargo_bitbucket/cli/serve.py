"""``kargo-bitbucket serve``: the webhook receiver and its admin listener."""

from __future__ import annotations

import argparse
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType
from urllib.parse import urlsplit

import uvloop

from kargo_bitbucket.cli.apply import apply_to
from kargo_bitbucket.cli.common import (
    FAILURE,
    SECONDS_FORM,
    UsageError,
    connect,
    fail,
    files_flag,
    kubernetes_flags,
    load_manifests,
    state_flag,
    validate_flag,
)
from kargo_bitbucket.config import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_BODY_LIMIT,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SYSTEM_NAMESPACE,
    FromEnv,
    ServeSettings,
    admin_address,
    boolean,
    default_max_connections,
    env,
    history_size,
    listen_address,
    listen_url,
    positive_int,
    positive_seconds,
)
from kargo_bitbucket.core.payloads import is_cloud_url
from kargo_bitbucket.core.subscriptions import BRANCH_STRATEGY
from kargo_bitbucket.core.webhooks import is_local, unaddressable
from kargo_bitbucket.history import DEFAULT_HISTORY_SIZE, MAX_HISTORY_SIZE
from kargo_bitbucket.store.base import REFRESH_BUDGET, Store
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.sqlite import SqliteStore
from kargo_bitbucket.store.state_file import StateFile, StateFileServed, serve_only_here


def register(parser: argparse.ArgumentParser) -> None:
    """Add serve's arguments."""
    files_flag(parser, "apply these manifests before serving")
    validate_flag(parser)
    state_flag(parser)
    parser.add_argument(
        "--listen",
        default=FromEnv("LISTEN", DEFAULT_LISTEN, listen_address, "HOST:PORT"),
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--base-url",
        default=env("BASE_URL"),
        metavar="URL",
        help="public base URL receiver URLs are derived from "
        "(env KARGO_BITBUCKET_BASE_URL; default http://<listen>)",
    )
    parser.add_argument(
        "--system-namespace",
        default=env("SYSTEM_NAMESPACE", DEFAULT_SYSTEM_NAMESPACE),
        help=f"namespace of the ClusterConfig's Secrets (default {DEFAULT_SYSTEM_NAMESPACE})",
    )
    parser.add_argument(
        "--body-limit",
        type=int,
        default=FromEnv(
            "BODY_LIMIT", DEFAULT_BODY_LIMIT, positive_int, "a whole number of bytes, e.g. 2097152"
        ),
        metavar="BYTES",
        help=f"largest accepted body (default {DEFAULT_BODY_LIMIT})",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=FromEnv("BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT, positive_seconds, SECONDS_FORM),
        metavar="SECONDS",
        help=f"time allowed to send the body, and to take the answer "
        f"(default {DEFAULT_BODY_TIMEOUT:g})",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=FromEnv("HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT, positive_seconds, SECONDS_FORM),
        metavar="SECONDS",
        help=f"time allowed to send the request headers (default {DEFAULT_HEADER_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=FromEnv(
            "MAX_CONNECTIONS", default_max_connections(), positive_int, "a whole number above 0"
        ),
        metavar="N",
        help="open webhook connections at most; at the cap an idle one is closed, else the "
        "one sending its head the longest, else 503 "
        f"(default {DEFAULT_MAX_CONNECTIONS}, fewer if the open-file limit is low)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=FromEnv("SHUTDOWN_GRACE", 8.0, positive_seconds, SECONDS_FORM),
        metavar="SECONDS",
        help="how long in-flight deliveries may finish after SIGTERM (default 8)",
    )
    parser.add_argument(
        "--admin-listen",
        default=FromEnv("ADMIN_LISTEN", DEFAULT_ADMIN_LISTEN, admin_address, "HOST:PORT or off"),
        metavar="HOST:PORT|off",
        help=f"metrics and delivery history listener (default {DEFAULT_ADMIN_LISTEN}; "
        "never the webhook port; off disables it and metrics)",
    )
    parser.add_argument(
        "--history-size",
        type=int,
        default=FromEnv(
            "HISTORY_SIZE",
            DEFAULT_HISTORY_SIZE,
            history_size,
            f"a whole number from 0 to {MAX_HISTORY_SIZE}",
        ),
        metavar="N",
        help=f"deliveries kept in the history (default {DEFAULT_HISTORY_SIZE}; 0 turns it off)",
    )
    kubernetes_flags(parser)
    parser.add_argument(
        "--no-publish",
        action="store_true",
        default=FromEnv("NO_PUBLISH", False, boolean, "1, true, 0 or false"),
        help="Kubernetes mode: do not write receiver URLs into status "
        "(where Kargo's own controller publishes them)",
    )
    parser.add_argument(
        "--lease-namespace",
        default=env("LEASE_NAMESPACE") or os.environ.get("POD_NAMESPACE") or "kargo",
        help="Kubernetes mode: namespace of the leader-election Lease "
        "(default $POD_NAMESPACE, else kargo)",
    )
    parser.add_argument(
        "--lease-duration",
        type=float,
        default=FromEnv("LEASE_DURATION", 15.0, positive_seconds, SECONDS_FORM),
        metavar="SECONDS",
        help="Kubernetes mode: how long the status writer's Lease lasts unrenewed "
        "(at least 3; default 15; renewed every third of it)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM (the state file, or the cluster with --kubernetes)."""
    # Until the server takes the stop signals over: a SIGTERM while the manifests are read or
    # applied (a transaction, rolled back) ends with exit 0, as SPEC §9 asks, not 143.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _stop_before_serving)
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
    indexes = Indexes(settings.base_url, settings.system_namespace, serving=True)
    if args.kubernetes:
        if args.files:
            raise UsageError(
                "-f applies manifests to the state file; with --kubernetes use kubectl apply"
            )
        if not args.no_publish and not args.base_url:
            _warn_local_default(settings)
        return _run(settings, _kubernetes_store(args, indexes), lambda: _announce(settings))
    resources = load_manifests(args.files, args.validate) if args.files else []
    who = f"pid {os.getpid()}, receivers at {settings.base_url.origin}"
    try:
        claim = serve_only_here(settings.state, who)
    except StateFileServed as error:
        fail(str(error), FAILURE)
    with claim:
        state = StateFile(settings.state, busy_timeout=REFRESH_BUDGET)
        if resources:
            apply_to(state, resources)
        store = SqliteStore(state, indexes, settings.history_size)
        try:
            return _run(settings, store, lambda: _announce(settings, store))
        finally:
            state.close()


def _warn_local_default(settings: ServeSettings) -> None:
    """Say, before anything is published, that a cluster is about to get receiver URLs at the
    default base URL when that is this machine's own (a run to try or debug beside a
    deployment, which takes over publishing whenever it holds the Lease)."""
    origin = settings.base_url.origin
    if is_local(urlsplit(origin).hostname or ""):
        print(
            f"note: receivers are published at {origin} (the default base URL, from --listen), "
            "which only this machine reaches, into the cluster's ProjectConfig and "
            "ClusterConfig statuses whenever this process holds the Lease, in place of a "
            "deployment's URLs: pass --base-url with the URL Bitbucket reaches, or --no-publish",
            flush=True,
        )


def _stop_before_serving(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _kubernetes_store(args: argparse.Namespace, indexes: Indexes) -> Store:
    from kargo_bitbucket.store.kubernetes import KubernetesStore

    if not args.lease_duration >= 3:
        raise UsageError("--lease-duration must be at least 3 seconds")
    client = connect(args)
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
    connections = Connections(
        settings.max_connections,
        settings.header_timeout,
        settings.body_timeout,
        write_timeout=settings.body_timeout,
    )
    metrics = None
    admin = None
    if settings.admin is not None:
        metrics = Metrics(
            store.indexes.counts,
            lambda: store.watch_restarts,
            lambda: store.api_failures,
            connections.dropped.items,
            lambda: [route.label for route in store.indexes.resolution.routes.values()],
        )
        admin = build_admin_server(create_admin_app(store, metrics), *settings.admin)

    async def on_ready() -> None:
        announce()
        if settings.admin is not None:
            admin_url = listen_url(*settings.admin)
            print(f"metrics and delivery history on {admin_url}/deliveries", flush=True)

    app = create_app(
        store,
        lifecycle=lifecycle,
        body_limit=settings.body_limit,
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
        fail(str(error), FAILURE)
    uvloop.run(serve_together(server, main_socket, admin, admin_socket))
    return 0 if server.started else FAILURE


def _announce(settings: ServeSettings, store: SqliteStore | None = None) -> None:
    """Print the receivers and, on the embedded store, a command that triggers a refresh."""
    where = f"state {settings.state}" if store else "Kubernetes"
    url = listen_url(settings.host, settings.port)
    print(f"kargo-bitbucket listening on {url} ({where})", flush=True)
    if nowhere := unaddressable(settings.base_url.origin):
        print(f"note: receivers published at {settings.base_url.origin}: {nowhere}", flush=True)
    if store is None:
        return
    resolution = store.indexes.resolution
    routes = list(resolution.routes.values())
    problems = 0
    for owner, status in resolution.statuses.items():
        for problem in status.problems:
            print(f"receiver problem in {owner.label}: {problem}", flush=True)
            problems += 1
    if not routes:
        fix = (
            "fix the problems above with kargo-bitbucket apply; kargo-bitbucket urls then "
            "lists the URLs"
            if problems
            else "apply a ProjectConfig with a bitbucket receiver and its Secret"
        )
        print(f"no receivers published: {fix}", flush=True)
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
