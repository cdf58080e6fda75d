"""What the shared indexes say in the log when receivers cannot be published."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from kargo_bitbucket.core.receivers import BaseURL
from kargo_bitbucket.store.index import NOTES_RATE, Indexes
from tests.builders import project, secret, warehouse


def indexes(clock: Callable[[], float] = time.monotonic) -> Indexes:
    return Indexes(
        BaseURL.parse("https://kargo.example.com"),
        "kargo-system-resources",
        serving=True,
        clock=clock,
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


def test_what_a_warehouse_holds_that_is_not_evaluated_is_a_warning_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In a cluster nothing checks subscriptions before us (Kargo's CRD leaves them
    untyped): a misspelt ``brnach:`` or a broken regex is said when the Warehouse is read,
    not first at a push, and not again when a relist or a status write feeds it anew."""
    index = indexes()
    caplog.set_level(logging.INFO, "kargo_bitbucket")
    typo = warehouse("demo", "app", brnach="release")
    index.put_warehouse(typo)
    assert warnings(caplog) == [
        "Warehouse demo/app spec.subscriptions[0].git.brnach: unknown field, ignored as Kargo "
        "ignores it; did you mean branch?"
    ]
    index.put_warehouse({**typo, "status": {"observedGeneration": 2}})
    assert warnings(caplog) == []
    both = warehouse("demo", "app", brnach="release", allowTagsRegexes=["("])
    index.put_warehouse(both)
    (line,) = warnings(caplog)
    assert line.startswith("Warehouse demo/app spec.subscriptions[0].git.allowTagsRegexes[0]: ")
    assert line.endswith("pushes to its repository will refresh it without this check")
    index.drop_warehouse("demo", "app")
    index.put_warehouse(typo)
    assert len(warnings(caplog)) == 1  # deleted and created again: new


def test_one_shot_indexes_log_nothing_about_warehouses(caplog: pytest.LogCaptureFixture) -> None:
    one_shot = Indexes(BaseURL.parse("https://kargo.example.com"), "kargo-system-resources")
    caplog.set_level(logging.INFO, "kargo_bitbucket")
    one_shot.put_warehouse(warehouse("demo", "app", brnach="release"))
    assert warnings(caplog) == []


def test_warehouse_warnings_are_paced_and_the_held_back_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """100,000 templated Warehouses with one odd field do not log 100,000 lines at a start."""
    now = [1000.0]
    index = indexes(lambda: now[0])
    caplog.set_level(logging.INFO, "kargo_bitbucket")
    for i in range(NOTES_RATE + 5):
        index.put_warehouse(warehouse("demo", f"app{i}", brnach="release"))
    logged = warnings(caplog)
    assert len(logged) == NOTES_RATE + 1
    assert logged[-1].startswith(
        f"more than {NOTES_RATE} lines a second about Warehouses' subscriptions: the rest "
        "of this second's are not logged"
    )
    now[0] += 1
    index.put_warehouse(warehouse("demo", "late", brnach="release"))
    (line,) = warnings(caplog)
    assert line.startswith("Warehouse demo/late ")
    assert line.endswith("(5 more such lines not logged)")


def test_a_status_write_to_a_warehouse_of_many_notes_logs_none_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """30,000 notes in one Warehouse: paced at its first read, none again at a status write.
    (Compared as a tuple, that write took 8 s on the event loop; ``_log_notes`` takes the
    old notes as a frozenset. The clock stands still: the pacing is not the subject.)"""
    index = indexes(lambda: 1000.0)
    caplog.set_level(logging.INFO, "kargo_bitbucket")
    git = {"repoURL": "https://bitbucket.org/acme/app", "brnach": "x", "zzz": 1, "yyy": 2}
    body = warehouse("demo", "app")
    body["spec"]["subscriptions"] = [{"git": {**git, "n": n}} for n in range(10_000)]
    index.put_warehouse(body)
    assert len(warnings(caplog)) == NOTES_RATE + 1  # and the line saying the rest are held back
    index.put_warehouse({**body, "status": {"observedGeneration": 2}})
    assert warnings(caplog) == []
