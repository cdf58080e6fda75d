"""Settings for ``serve``: flags first, then ``KARGO_BITBUCKET_*`` environment, then defaults."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.history import DEFAULT_HISTORY_SIZE

ENV_PREFIX = "KARGO_BITBUCKET_"
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_STATE = Path(".kargo-bitbucket") / "state.db"
DEFAULT_SYSTEM_NAMESPACE = "kargo-system-resources"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9090"
DEFAULT_MAX_CONNECTIONS = 1000
RESERVED_FDS = 64  # state file, admin listener, Kubernetes client, logs


class ConfigError(ValueError):
    """A setting is unusable; the message names it."""


def env(name: str, default: str | None = None) -> str | None:
    """The value of ``KARGO_BITBUCKET_<NAME>``, or ``default``."""
    return os.environ.get(ENV_PREFIX + name, default)


def default_state() -> Path:
    """``$KARGO_BITBUCKET_STATE``, else ``.kargo-bitbucket/state.db`` here."""
    return Path(env("STATE") or DEFAULT_STATE)


def default_max_connections() -> int:
    """1000, or fewer when the open-file limit leaves less beside the fds the process needs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft - RESERVED_FDS))


def parse_listen(text: str, flag: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a host and a port number."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag} {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything ``serve`` needs, validated once at start-up."""

    host: str
    port: int
    base_url: BaseURL
    state: Path
    system_namespace: str
    body_limit: int
    body_timeout: float
    header_timeout: float
    max_connections: int
    shutdown_grace: float
    admin: tuple[str, int] | None
    history_size: int

    @classmethod
    def build(
        cls,
        *,
        listen: str,
        base_url: str | None,
        state: Path,
        system_namespace: str,
        body_limit: int,
        body_timeout: float,
        header_timeout: float,
        shutdown_grace: float,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        admin_listen: str = DEFAULT_ADMIN_LISTEN,
        history_size: int = DEFAULT_HISTORY_SIZE,
    ) -> ServeSettings:
        """Validate the raw values; ``base_url`` defaults to ``http://<listen>``."""
        host, port = parse_listen(listen)
        admin = None if admin_listen == "off" else parse_listen(admin_listen, "--admin-listen")
        if admin is not None and admin[1] == port and port != 0:
            raise ConfigError("--admin-listen must not use the webhook port (--listen)")
        if history_size < 0:
            raise ConfigError("--history-size must be 0 (off) or more")
        if base_url is None and port == 0:
            raise ConfigError("--listen with port 0 needs --base-url (the port is not known yet)")
        try:
            base = BaseURL.parse(base_url or f"http://{listen}")
        except ValueError as error:
            if base_url is None:
                raise ConfigError(
                    f"--listen {listen!r} gives no usable default base URL ({error}); "
                    "pass --base-url"
                ) from error
            raise ConfigError(f"--base-url: {error}") from error
        if body_limit <= 0:
            raise ConfigError("--body-limit must be a positive number of bytes")
        if min(body_timeout, header_timeout) <= 0:
            raise ConfigError("--body-timeout and --header-timeout must be positive")
        if max_connections < 1:
            raise ConfigError("--max-connections must be 1 or more")
        return cls(
            host=host,
            port=port,
            base_url=base,
            state=state,
            system_namespace=system_namespace,
            body_limit=body_limit,
            body_timeout=body_timeout,
            header_timeout=header_timeout,
            max_connections=max_connections,
            shutdown_grace=shutdown_grace,
            admin=admin,
            history_size=history_size,
        )
