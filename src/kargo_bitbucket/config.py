"""Settings for ``serve``: flags first, then ``KARGO_BITBUCKET_*`` environment, then defaults."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.history import DEFAULT_HISTORY_SIZE, MAX_HISTORY_SIZE

ENV_PREFIX = "KARGO_BITBUCKET_"
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_STATE = Path(".kargo-bitbucket") / "state.db"
DEFAULT_SYSTEM_NAMESPACE = "kargo-system-resources"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9090"
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_BODY_LIMIT = 2 * 1024 * 1024  # bytes
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds
DEFAULT_BODY_TIMEOUT = 10.0  # seconds
MAX_SECONDS = 86_400.0
"""The longest wait a setting takes: a day. Longer is a mistake, and overflows timers."""
RESERVED_FDS = 64  # state file, admin listener, Kubernetes client, logs


class ConfigError(ValueError):
    """A setting is unusable; the message names it."""


def env(name: str, default: str | None = None) -> str | None:
    """The value of ``KARGO_BITBUCKET_<NAME>``, or ``default``."""
    return os.environ.get(ENV_PREFIX + name, default)


@dataclass(frozen=True, slots=True)
class FromEnv:
    """A flag's default read from ``KARGO_BITBUCKET_<name>`` once the command is known.

    Reading it only then keeps ``--help`` and the commands that do not take the flag
    working whatever the variable holds; ``resolve_env`` checks it as the flag would be.
    """

    name: str
    default: Any
    parse: Callable[[str], Any] = str
    form: str = "a string"

    def value(self) -> Any:
        """The variable's value checked and converted, or the default when unset or empty."""
        raw = env(self.name)
        if not raw:
            return self.default
        try:
            return self.parse(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{self.name}={raw!r}: expected {self.form}") from None


def resolve_env(values: dict[str, Any]) -> None:
    """Replace every ``FromEnv`` default in parsed arguments by its checked value."""
    for key, value in values.items():
        if isinstance(value, FromEnv):
            values[key] = value.value()


def positive_int(text: str) -> int:
    """A whole number above 0 (``2097152``; no units)."""
    number = int(text)
    if number <= 0:
        raise ValueError(text)
    return number


def natural_int(text: str) -> int:
    """A whole number, 0 or more."""
    number = int(text)
    if number < 0:
        raise ValueError(text)
    return number


def history_size(text: str) -> int:
    """A number of deliveries to keep: a whole number from 0 (off) to MAX_HISTORY_SIZE."""
    number = natural_int(text)
    if number > MAX_HISTORY_SIZE:
        raise ValueError(text)
    return number


def positive_seconds(text: str) -> float:
    """A number of seconds above 0 and at most ``MAX_SECONDS`` (``10``, ``2.5``)."""
    number = float(text)
    if not 0 < number <= MAX_SECONDS:
        raise ValueError(text)
    return number


def choice(*allowed: str) -> Callable[[str], str]:
    """One of ``allowed``, compared case-insensitively."""

    def parse(text: str) -> str:
        if text.lower() not in allowed:
            raise ValueError(text)
        return text.lower()

    return parse


def boolean(text: str) -> bool:
    """``1``/``true`` or ``0``/``false``."""
    return choice("1", "true", "0", "false")(text) in ("1", "true")


def listen_address(text: str) -> str:
    """``HOST:PORT``, kept as text (``ServeSettings.build`` splits it)."""
    try:
        parse_listen(text)
    except ConfigError:
        raise ValueError(text) from None
    return text


def admin_address(text: str) -> str:
    """``HOST:PORT``, or ``off``."""
    return text if text == "off" else listen_address(text)


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


def listen_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` of a listen address, an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
        if not 0 <= history_size <= MAX_HISTORY_SIZE:
            raise ConfigError(f"--history-size must be from 0 (off) to {MAX_HISTORY_SIZE}")
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
            # Name the setting the value came from: in a pod that is the variable.
            source = f"{ENV_PREFIX}BASE_URL" if base_url == env("BASE_URL") else "--base-url"
            raise ConfigError(f"{source}: {error}") from error
        if body_limit <= 0:
            raise ConfigError("--body-limit must be a positive number of bytes")
        if not all(0 < s <= MAX_SECONDS for s in (body_timeout, header_timeout, shutdown_grace)):
            raise ConfigError(
                "--body-timeout, --header-timeout and --shutdown-grace must be above 0 "
                f"and at most {MAX_SECONDS:g} seconds"
            )
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
