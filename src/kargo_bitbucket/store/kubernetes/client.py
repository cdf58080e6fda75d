"""The connection to the API server (credentials, pool, User-Agent) and the CLI's one-shot reads."""

from __future__ import annotations

import os

import httpx2 as httpx
import yaml
from lightkube import AsyncClient

from kargo_bitbucket import __version__
from kargo_bitbucket.core.objects import key
from kargo_bitbucket.core.receivers import publications
from kargo_bitbucket.store.index import Indexes
from kargo_bitbucket.store.kubernetes.depth import tolerate_deep_objects
from kargo_bitbucket.store.kubernetes.reflector import plain
from kargo_bitbucket.store.kubernetes.refresher import EVENT_CONCURRENCY, PATCH_CONCURRENCY
from kargo_bitbucket.store.kubernetes.resources import RESOURCES

USER_AGENT = f"kargo-bitbucket/{__version__}"
POOL_SIZE = PATCH_CONCURRENCY + EVENT_CONCURRENCY + 8


class KubernetesConfigError(RuntimeError):
    """No usable cluster credentials were found."""


class UserAgentTransport(httpx.AsyncBaseTransport):
    """Names the receiver on every request, so audit logs and API Priority and Fairness
    FlowSchemas can tell it from other clients (lightkube has no setting for headers)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` with our User-Agent in place of httpx's."""
        request.headers["User-Agent"] = USER_AGENT
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the wrapped transport's connections."""
        await self.inner.aclose()


def connect(kubeconfig: str | None, context: str | None) -> AsyncClient:
    """A client from ``--kubeconfig``/``--context`` (whose default is a non-empty
    ``$KUBECONFIG``), else in-cluster, else ``~/.kube/config``."""
    from lightkube import ConfigError, KubeConfig
    from lightkube.config.kubeconfig import DEFAULT_KUBECONFIG

    from kargo_bitbucket.compat import verify_cluster

    if kubeconfig and os.pathsep in kubeconfig and not os.path.exists(kubeconfig):
        # kubectl merges a $KUBECONFIG list, skipping empty entries (``file:``); this reads
        # one file, and would say "not found" of the list.
        files = [entry for entry in kubeconfig.split(os.pathsep) if entry]
        if len(files) > 1:
            raise KubernetesConfigError(
                f"cannot load Kubernetes credentials: {kubeconfig!r} lists several files "
                "(kubectl merges a $KUBECONFIG list, this reads one): pass --kubeconfig FILE"
            )
        kubeconfig = files[0] if files else None
    try:
        if kubeconfig:
            config = KubeConfig.from_file(kubeconfig)
        else:
            # $KUBECONFIG unset, empty or only separators (else it is --kubeconfig's default).
            # lightkube's from_env would open "" for an empty one; kubectl reads the default.
            try:
                config = KubeConfig.from_service_account()
            except ConfigError:
                config = KubeConfig.from_file(DEFAULT_KUBECONFIG)
        single = config.get(context_name=context)
    except (ConfigError, OSError, ValueError) as error:
        raise KubernetesConfigError(f"cannot load Kubernetes credentials: {error}") from error
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        # Not YAML, or YAML of another shape: lightkube reads it without checking.
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
            mark = error.problem_mark
            problem = error.problem or "not YAML"
            summary = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
        else:
            summary = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        raise KubernetesConfigError(
            f"cannot load Kubernetes credentials: {where} is not a valid kubeconfig ({summary})"
        ) from error
    if single is None or single.user is None:
        raise KubernetesConfigError(f"kubeconfig has no usable context {context or '(current)'}")
    # Every object the API server stores must decode, however deep (see depth.py).
    tolerate_deep_objects()
    # Keep as many connections alive as patches and Events may run at once: with httpx's
    # default of 20, a 500-Warehouse push opened ~260 new TLS connections (measured).
    transport = httpx.AsyncHTTPTransport(
        verify=verify_cluster(single.cluster, single.user, single.abs_file),
        # No cap on connections: every watch (one per kind and per referenced Secret) holds
        # one for good, and patches and Events are bounded by their own semaphores; a cap
        # left 85 referenced Secrets with no connection for anything else.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=POOL_SIZE),
    )
    return AsyncClient(
        single,
        timeout=httpx.Timeout(10.0),
        field_manager="kargo-bitbucket",
        transport=UserAgentTransport(transport),
    )


async def load_indexes(client: AsyncClient, indexes: Indexes) -> Indexes:
    """Fill ``indexes`` with one list of every kind (for one-shot commands like ``explain``)."""
    for kind, resource in RESOURCES.items():
        namespace = None if kind == "ClusterConfig" else "*"
        async for obj in client.list(resource, namespace=namespace):
            body = plain(obj)
            namespace, name = key(body)
            indexes.apply(kind, namespace, name, body)
    await client.close()
    return indexes


async def published_receivers(
    client: AsyncClient,
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """``publications`` of every ProjectConfig and ClusterConfig in the cluster."""
    configs = []
    for kind in ("ClusterConfig", "ProjectConfig"):
        namespace = "*" if kind == "ProjectConfig" else None
        async for obj in client.list(RESOURCES[kind], namespace=namespace):
            configs.append(plain(obj))
    await client.close()
    return publications(configs)
