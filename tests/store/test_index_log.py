"""What the shared indexes say in the log when receivers cannot be published."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.store.index import Indexes
from tests.builders import project, secret


def indexes() -> Indexes:
    return Indexes(
        BaseURL.parse("https://kargo.example.com"), "kargo-system-resources", serving=True
    )


def stored_secret(namespace: str, name: str) -> dict[str, Any]:
    """A receiver's Secret as the API server stores it: base64 ``data``."""
    body = secret(namespace, name)
    value = body.pop("stringData")["secret"]
    body["data"] = {"secret": base64.b64encode(value.encode()).decode()}
    return body


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    return lines


def test_a_receiver_left_unpublished_is_a_warning_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = indexes()
    caplog.set_level(logging.INFO, "kargo_bitbucket")
    index.put_config(project("demo", ("bb", "bb-secret")))
    index.reroute()
    assert warnings(caplog) == [
        "receivers of ProjectConfig demo not all published: "
        "receiver 'bb': Secret demo/bb-secret not found"
    ]
    index.reroute()
    assert warnings(caplog) == []
    index.put_secret(stored_secret("demo", "bb-secret"))
    index.reroute()
    assert warnings(caplog) == []
    assert len(index.resolution.routes) == 1


def test_a_config_kargo_ignores_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    index = indexes()
    caplog.set_level(logging.INFO, "kargo_bitbucket")
    misnamed = project("proj2", ("bb", "bb-secret"))
    misnamed["metadata"]["name"] = "config"
    index.put_config(misnamed)
    index.reroute()
    assert warnings(caplog) == [
        "ProjectConfig proj2/config is ignored, as Kargo ignores it: only the one named "
        "'proj2' is read"
    ]
    index.reroute()
    assert warnings(caplog) == []


def test_only_new_problems_are_warned_about_and_only_while_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = indexes()
    caplog.set_level(logging.INFO, "kargo_bitbucket")
    index.put_config(project("demo", ("bb", "one"), ("bc", "two")))
    index.reroute()
    assert len(warnings(caplog)) == 1  # both problems, one line
    index.put_secret(stored_secret("demo", "one"))
    index.reroute()
    assert warnings(caplog) == []  # "two" is still missing: said already
    one_shot = Indexes(BaseURL.parse("https://kargo.example.com"), "kargo-system-resources")
    one_shot.put_config(project("demo", ("bb", "one")))
    one_shot.reroute()
    assert warnings(caplog) == []
