"""What both benchmarks share: the loopback host, ports, a clean environment, the machine line."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
from pathlib import Path
from types import ModuleType

HOST = "127.0.0.1"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "bitbucket-payloads"
"""The shared Bitbucket deliveries beside the repository (``../shared``), read in place."""
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


def state_file_module() -> ModuleType:
    """``kargo_bitbucket.store.state_file``, or ``store.sqlite`` in a ``--rev`` from before
    the state file was moved out of it: one bench runs on either."""
    try:
        return importlib.import_module("kargo_bitbucket.store.state_file")
    except ModuleNotFoundError as error:
        if error.name != "kargo_bitbucket.store.state_file":
            raise
        return importlib.import_module("kargo_bitbucket.store.sqlite")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without KARGO_BITBUCKET_* settings or proxies, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KARGO_BITBUCKET_") and k.lower() not in PROXY_VARS
    }
    env["NO_PROXY"] = env["no_proxy"] = f"{HOST},localhost"
    env.update(extra)
    return env


def machine() -> str:
    """CPU model, CPU count and load average, for the report."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, {model}, load average {load}"


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not exit within 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
