"""What the shared indexes say in the log when receivers cannot be published."""

from __future__ import annotations

import base64
import logging

import pytest

from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.store.index import Indexes
from tests.builders import project, secret


def indexes() -> Indexes:
    return Indexes(
        BaseURL.parse("https://kargo.example.com"), "kargo-system-resources", serving=True
    )


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
    stored = secret("demo", "bb-secret")  # as the API server stores it: base64 data
    stored["data"] = {
        "secret": base64.b64encode(stored.pop("stringData")["secret"].encode()).decode()
    }
    index.put_secret(stored)
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
    stored = secret("demo", "one")
    stored["data"] = {
        "secret": base64.b64encode(stored.pop("stringData")["secret"].encode()).decode()
    }
    index.put_secret(stored)
    index.reroute()
    assert warnings(caplog) == []  # "two" is still missing: said already
    one_shot = Indexes(BaseURL.parse("https://kargo.example.com"), "kargo-system-resources")
    one_shot.put_config(project("demo", ("bb", "one")))
    one_shot.reroute()
    assert warnings(caplog) == []
