"""Typed views over Kubernetes objects: what they read, and that a malformed object reads as
absent instead of raising."""

from __future__ import annotations

from typing import Any

import pytest

from kargo_bitbucket.core.objects import (
    ConfigView,
    ObjectMeta,
    PromotionView,
    WarehouseView,
    key,
    secret_data,
)
from kargo_bitbucket.core.subscriptions import git_subscriptions

CONFIG = {
    "kind": "ProjectConfig",
    "metadata": {"namespace": "demo", "name": "demo", "generation": 3, "resourceVersion": "42"},
    "spec": {
        "webhookReceivers": [
            {"name": "bb", "bitbucket": {"secretRef": {"name": "bb-secret"}}},
            {"name": "gh", "github": {"secretRef": {"name": "gh-secret"}}},
            "not an object",
        ]
    },
    "status": {"webhookReceivers": [{"name": "bb", "url": "https://k/bitbucket/x"}, 7]},
}
MALFORMED: list[Any] = [None, 2.5, True, b"bytes", "text", ["a"], {"x": 1}]
"""Each is of the wrong type for some field below; where it is not, the assertion allows it."""


def test_config_view_reads_receivers_in_spec_order_and_status() -> None:
    view = ConfigView(CONFIG)
    assert (view.kind, view.meta.namespace, view.meta.name) == ("ProjectConfig", "demo", "demo")
    assert (view.meta.generation, view.meta.resource_version) == (3, "42")
    receivers = [(r.name, r.is_bitbucket, r.secret_name) for r in view.receivers]
    assert receivers == [("bb", True, "bb-secret"), ("gh", False, "")]
    assert list(view.published) == [{"name": "bb", "url": "https://k/bitbucket/x"}]


def wrong_for(value: Any, *types: type) -> bool:
    """True when ``value`` cannot be read as any of ``types`` (a bool is no integer here)."""
    return isinstance(value, bool) or not isinstance(value, types)


@pytest.mark.parametrize("value", MALFORMED, ids=repr)
def test_any_field_of_the_wrong_type_reads_as_absent(value: Any) -> None:
    maps = [{"metadata": value, "spec": value, "status": value, "data": value}]
    if wrong_for(value, dict):
        for body in maps:
            assert key(body) == ("", "") and ObjectMeta.of(body).generation == 1
            assert list(ConfigView(body).receivers) == list(ConfigView(body).published) == []
            assert list(WarehouseView(body).git) == []
            assert PromotionView(body).steps == [] and not PromotionView(body).state
            assert not secret_data(body)
    if wrong_for(value, str):
        body = {"metadata": {"name": value, "namespace": value, "resourceVersion": value}}
        meta = ObjectMeta.of(body)
        assert (meta.namespace, meta.name, meta.resource_version) == ("", "", "")
        receiver = {"bitbucket": {"secretRef": {"name": value}}}
        (spec,) = ConfigView({"spec": {"webhookReceivers": [receiver]}}).receivers
        assert spec.secret_name == ""
        assert PromotionView({"status": {"phase": value}}).phase == ""
        git = {"spec": {"subscriptions": [{"git": {"repoURL": value}}]}}
        assert git_subscriptions(git) == ()
    if wrong_for(value, list):
        lists = {"webhookReceivers": value, "subscriptions": value, "steps": value}
        body = {"spec": lists, "status": {"webhookReceivers": value}}
        assert list(ConfigView(body).receivers) == list(ConfigView(body).published) == []
        assert list(WarehouseView(body).git) == []
        assert PromotionView(body).steps == []
    if wrong_for(value, int) and value:
        assert ObjectMeta.of({"metadata": {"generation": value}}).generation == 1
        assert PromotionView({"status": {"currentStep": value}}).current_step is None


def test_warehouse_view_keeps_the_position_of_each_git_subscription() -> None:
    body = {
        "spec": {
            "subscriptions": [
                {"image": {"repoURL": "nginx"}},
                {"git": {"repoURL": "https://bitbucket.org/a/b", "branch": "main"}},
                {"git": "not an object"},
                {"git": {"repoUrl": "https://bitbucket.org/a/b"}},
            ]
        }
    }
    assert [i for i, _ in WarehouseView(body).git] == [1, 3]


def test_promotion_view_reads_its_progress() -> None:
    body = {
        "spec": {"steps": [{"uses": "git-wait-for-pr", "as": "wait"}]},
        "status": {"phase": "Running", "state": {"wait": {"pr": {}}}},
    }
    promotion = PromotionView(body)
    assert (promotion.phase, promotion.current_step, len(promotion.steps)) == ("Running", 0, 1)
    assert promotion.state == {"wait": {"pr": {}}}
    assert PromotionView({"status": {"currentStep": "2"}}).current_step is None
