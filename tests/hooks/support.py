"""What the hooks tests share (not fixtures): the receivers' base URL, the Data Center events
a hook subscribes to, the Warehouses of the Data Center scenario, and the URL Kargo derives."""

from __future__ import annotations

from tests.builders import receiver_path

SERVER_EVENTS = {"repo:refs_changed", "pr:merged", "pr:declined"}
BASE = "https://kargo.example.com/hooks"
WAREHOUSES = {
    "deploy": "https://bb.example.com/scm/plat/deploy.git",
    "tools": "ssh://git@bb.example.com:7999/plat/tools.git",
    "locked": "https://bb.example.com/scm/plat/locked.git",
    "gone": "https://bb.example.com/scm/plat/gone.git",
    "github": "https://github.com/acme/elsewhere.git",
}


def receiver_url(secret: str) -> str:
    """The URL Kargo derives for receiver demo/bb (SPEC §3)."""
    return BASE + receiver_path("demo", "bb", secret)
