"""Receiver URLs are bit-exact with Kargo; publication follows the current Secrets (SPEC §3)."""

import hashlib

import pytest

from kargo_bitbucket.core.receivers import (
    BaseURL,
    BaseURLError,
    Owner,
    not_ready,
    published,
    resolve,
)

SPEC_EXAMPLE_HASH = "75f9b18441bbe62d4440dc0a405621bc2fa35bb4f31c2ddb48e72764d2ceb1d0"


def test_spec_example_hash() -> None:
    path = BaseURL.parse("https://kargo.example.com").receiver_path(
        "kargo-demo", "bb-wh-receiver", b"mysupersecret"
    )
    assert path == f"/bitbucket/{SPEC_EXAMPLE_HASH}"


@pytest.mark.parametrize(
    ("base", "prefix", "origin"),
    [
        ("https://h", "/bitbucket/", "https://h"),
        ("https://h/", "/bitbucket/", "https://h"),
        ("https://h/webhooks/", "/webhooks/bitbucket/", "https://h"),
        ("https://h/webhooks", "/webhooks/bitbucket/", "https://h"),
        ("https://h/a//b/", "/a/b/bitbucket/", "https://h"),  # Go's path.Join: one slash
        ("https://h/x~y_z-1.2/a:b@c$d", "/x~y_z-1.2/a:b@c$d/bitbucket/", "https://h"),
        ("http://h:8080", "/bitbucket/", "http://h:8080"),
        ("http://127.0.0.1:8080", "/bitbucket/", "http://127.0.0.1:8080"),
        ("http://[::1]:8080/", "/bitbucket/", "http://[::1]:8080"),
        # Kargo joins with Go's url.JoinPath, which resolves dot segments.
        ("http://h/a/../hooks", "/hooks/bitbucket/", "http://h"),
        ("https://h/..", "/bitbucket/", "https://h"),
        ("https://h/x/.", "/x/bitbucket/", "https://h"),
        ("https://h/./a/b/../../c/", "/c/bitbucket/", "https://h"),
    ],
)
def test_base_path_joined_with_single_slashes(base: str, prefix: str, origin: str) -> None:
    parsed = BaseURL.parse(base)
    path = parsed.receiver_path("p", "r", b"s")
    digest = hashlib.sha256(b"prs").hexdigest()
    assert path == prefix + digest
    assert parsed.url(path) == origin + prefix + digest


@pytest.mark.parametrize(
    "base",
    [
        "https://h/?x=1",
        "https://h/#frag",
        "https://h/a%20b",
        "h.example.com",
        "/webhooks",
        "ftp://h/",
        "https://",
        "https://h/?",
        "https://h/web\thooks",
        "https://h/x y",
        "https://h/\u00e4",
        "https://h:abc/x",
        "https://user:pw@h/",
        "http://:8080",
        "http://[::1",
        "https://h:99999/x",
        # Kargo publishes these percent-encoded (a%21b), so Bitbucket would post elsewhere.
        "https://h/a!b",
        "https://h/hooks(v2)",
        "https://h/a{b}",
        "https://h/a'b",
        "https://h/a*b",
        "https://h//webhooks",  # Kargo keeps the leading //
        "https://h//a//b/",
    ],
)
def test_unusable_base_urls_are_rejected(base: str) -> None:
    with pytest.raises(BaseURLError):
        BaseURL.parse(base)


def project_config(namespace: str, *receivers: tuple[str, str]) -> dict:
    return {
        "kind": "ProjectConfig",
        "metadata": {"namespace": namespace, "name": namespace},
        "spec": {
            "webhookReceivers": [
                {"name": name, "bitbucket": {"secretRef": {"name": secret}}}
                for name, secret in receivers
            ]
        },
    }


BASE = BaseURL.parse("https://kargo.example.com")


def test_receivers_published_in_spec_order_and_missing_secret_named() -> None:
    config = project_config("demo", ("zeta", "s1"), ("alpha", "missing"), ("mid", "nokey"))
    config["spec"]["webhookReceivers"].append(
        {"name": "gh", "github": {"secretRef": {"name": "s1"}}}
    )
    secrets = {("demo", "s1"): {"secret": b"one"}, ("demo", "nokey"): {"token": b"x"}}
    result = resolve([config], lambda ns, n: secrets.get((ns, n)), BASE, "kargo-system-resources")
    status = result.statuses[Owner("ProjectConfig", "demo", "demo")]
    assert [r["name"] for r in status.receivers] == ["zeta"]
    expected = hashlib.sha256(b"demozetaone").hexdigest()
    assert status.receivers[0] == {
        "name": "zeta",
        "path": f"/bitbucket/{expected}",
        "url": f"https://kargo.example.com/bitbucket/{expected}",
    }
    ready = status.conditions()[0]
    assert ready["status"] == "False" and ready["reason"] == "SyncWebhookReceiversFailed"
    assert "alpha" in ready["message"] and "demo/missing" in ready["message"]
    assert "mid" in ready["message"] and "'secret'" in ready["message"]
    assert list(result.routes) == [f"/bitbucket/{expected}"]
    assert result.routes[f"/bitbucket/{expected}"].owner.scope == "demo"


def test_a_ready_message_of_many_problems_fits_the_crds_limit() -> None:
    # 130 receivers with the longest names and absent Secrets: the joined message was 49 KB,
    # the API refused the status, and the working receiver was never published.
    names = [(f"{n:03d}" + "r" * 250, f"missing-{n}") for n in range(130)]
    config = project_config("demo", ("bb", "s1"), *names)
    secrets = {("demo", "s1"): {"secret": b"one"}}
    result = resolve([config], lambda ns, n: secrets.get((ns, n)), BASE, "sys")
    status = result.statuses[Owner("ProjectConfig", "demo", "demo")]
    message = status.conditions()[0]["message"]
    assert len(message.encode()) <= 32_768
    assert message.startswith("receiver '000r")
    shown = message.count("; receiver '") + 1
    assert message.endswith(f"; and {130 - shown} more") and shown > 100
    assert [r["name"] for r in status.receivers] == ["bb"]


def test_a_route_shows_everything_but_its_secret() -> None:
    secrets = {("demo", "s1"): {"secret": b"do-not-print-me"}}
    config = project_config("demo", ("zeta", "s1"))
    result = resolve([config], lambda ns, n: secrets.get((ns, n)), BASE, "kargo-system-resources")
    (route,) = result.routes.values()
    assert route.label == "demo/zeta" and route.secret == b"do-not-print-me"
    assert "do-not-print-me" not in repr(route) and "demo/s1" in repr(route)


def test_cluster_receivers_use_system_namespace_and_empty_project() -> None:
    cluster = {
        "kind": "ClusterConfig",
        "metadata": {"name": "cluster"},
        "spec": {"webhookReceivers": [{"name": "all", "bitbucket": {"secretRef": {"name": "s"}}}]},
    }
    secrets = {("sys", "s"): {"secret": b"k"}}
    result = resolve([cluster], lambda ns, n: secrets.get((ns, n)), BASE, "sys")
    (route,) = result.routes.values()
    assert route.path == "/bitbucket/" + hashlib.sha256(b"allk").hexdigest()
    assert route.owner.scope is None
    assert result.statuses[route.owner].conditions()[0]["status"] == "True"


def test_colliding_paths_route_nowhere_and_both_owners_say_so() -> None:
    # project "a" + receiver "bc" and project "ab" + receiver "c" hash the same bytes.
    configs = [project_config("a", ("bc", "s")), project_config("ab", ("c", "s"))]
    secrets = {("a", "s"): {"secret": b"x"}, ("ab", "s"): {"secret": b"x"}}
    result = resolve(configs, lambda ns, n: secrets.get((ns, n)), BASE, "sys")
    assert result.routes == {}
    for owner, status in result.statuses.items():
        assert status.receivers == []
        message = status.conditions()[0]["message"]
        assert "none of them is routable" in message, owner


def test_rotation_changes_the_path() -> None:
    config = project_config("demo", ("r", "s"))
    before = resolve([config], lambda ns, n: {"secret": b"old"}, BASE, "sys")
    after = resolve([config], lambda ns, n: {"secret": b"new"}, BASE, "sys")
    assert set(before.routes).isdisjoint(after.routes)


def test_rendered_status_keeps_transition_time_of_unchanged_conditions() -> None:
    config = project_config("demo", ("r", "s"))
    status = next(
        iter(resolve([config], lambda ns, n: {"secret": b"k"}, BASE, "sys").statuses.values())
    )
    first = status.render({}, 3, "2026-01-01T00:00:00Z")
    assert first["observedGeneration"] == 3
    assert {c["type"] for c in first["conditions"]} == {"Ready", "Reconciling"}
    again = status.render(first, 4, "2026-02-02T00:00:00Z")
    assert [c["lastTransitionTime"] for c in again["conditions"]] == ["2026-01-01T00:00:00Z"] * 2
    broken = resolve([config], lambda ns, n: None, BASE, "sys").statuses
    changed = next(iter(broken.values())).render(first, 4, "2026-03-03T00:00:00Z")
    ready = next(c for c in changed["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["lastTransitionTime"]) == ("False", "2026-03-03T00:00:00Z")
    # Still not ready, for another reason: a new message, the same transition time.
    forbidden = {"secret": None}
    other = resolve([config], lambda ns, n: forbidden, BASE, "sys").statuses
    later = next(iter(other.values())).render(changed, 5, "2026-04-04T00:00:00Z")
    still = next(c for c in later["conditions"] if c["type"] == "Ready")
    assert still["status"] == "False" and still["message"] != ready["message"]
    assert still["lastTransitionTime"] == "2026-03-03T00:00:00Z"


def test_entries_published_for_other_receiver_types_are_kept_in_spec_order() -> None:
    config = project_config("demo", ("bb", "s"))
    receivers = config["spec"]["webhookReceivers"]
    receivers.insert(0, {"name": "gh", "github": {"secretRef": {"name": "g"}}})
    receivers.append({"name": "gl", "gitlab": {"secretRef": {"name": "g"}}})
    status = resolve([config], lambda ns, n: {"secret": b"k"}, BASE, "sys").statuses[
        Owner("ProjectConfig", "demo", "demo")
    ]
    github = {"name": "gh", "path": "/github/1", "url": "https://kargo.example.com/github/1"}
    stale = {"name": "old", "path": "/github/2", "url": "https://kargo.example.com/github/2"}
    mine_before = {"name": "bb", "path": "/bitbucket/old", "url": "https://x/bitbucket/old"}
    previous = {"webhookReceivers": [mine_before, stale, github]}
    rendered = status.render(previous, 1, "2026-01-01T00:00:00Z")["webhookReceivers"]
    # gh (kept as published), then bb (ours, current); "old" is in no spec any more; gl
    # was never published by anyone, so there is nothing to keep.
    assert [r["name"] for r in rendered] == ["gh", "bb"]
    assert rendered[0] == github
    assert rendered[1]["path"] == "/bitbucket/" + hashlib.sha256(b"demobbk").hexdigest()


def test_a_project_config_not_named_as_its_namespace_is_ignored_like_kargo() -> None:
    stray = project_config("demo", ("r", "s"))
    stray["metadata"]["name"] = "other"
    stray_cluster = {
        "kind": "ClusterConfig",
        "metadata": {"name": "not-cluster"},
        "spec": {"webhookReceivers": [{"name": "r", "bitbucket": {"secretRef": {"name": "s"}}}]},
    }
    result = resolve([stray, stray_cluster], lambda ns, n: {"secret": b"k"}, BASE, "sys")
    assert result.routes == {} and result.statuses == {}


def test_published_lists_only_bitbucket_receivers_of_honoured_configs() -> None:
    config = project_config("demo", ("bb", "s"))
    config["spec"]["webhookReceivers"].append({"name": "gh", "github": {}})
    config["status"] = {
        "webhookReceivers": [
            {"name": "gh", "path": "/github/1", "url": "https://k/github/1"},
            {"name": "bb", "path": "/bitbucket/2", "url": "https://k/bitbucket/2"},
        ]
    }
    assert published(config) == [("demo", "bb", "https://k/bitbucket/2")]
    config["metadata"]["name"] = "other"
    assert published(config) == []


def test_a_receiver_that_stops_being_bitbucket_loses_our_entry() -> None:
    config = project_config("demo")
    config["spec"]["webhookReceivers"].append({"name": "r", "github": {}})
    status = resolve([config], lambda ns, n: {"secret": b"k"}, BASE, "sys").statuses[
        Owner("ProjectConfig", "demo", "demo")
    ]
    ours_before = {"name": "r", "path": "/bitbucket/" + "a" * 64, "url": "https://k/x"}
    rendered = status.render({"webhookReceivers": [ours_before]}, 1, "2026-01-01T00:00:00Z")
    assert rendered["webhookReceivers"] == []


def test_receivers_of_the_same_name_are_each_published_once() -> None:
    # Kargo refuses duplicate names, but a cluster without its webhook may hold them.
    config = project_config("demo", ("r", "s1"), ("r", "s2"))
    secrets = {("demo", "s1"): {"secret": b"one"}, ("demo", "s2"): {"secret": b"two"}}
    result = resolve([config], lambda ns, n: secrets.get((ns, n)), BASE, "sys")
    status = result.statuses[Owner("ProjectConfig", "demo", "demo")]
    rendered = status.render({}, 1, "2026-01-01T00:00:00Z")["webhookReceivers"]
    assert [r["path"] for r in rendered] == [r.path for r in result.routes.values()]
    assert len({r["path"] for r in rendered}) == 2


def test_not_ready_gives_the_ready_condition_message_only_when_false() -> None:
    def config(name: str, *conditions: dict[str, str]) -> dict[str, object]:
        return {
            "kind": "ProjectConfig",
            "metadata": {"name": name, "namespace": "demo"},
            "status": {"conditions": list(conditions)},
        }

    missing = {
        "type": "Ready",
        "status": "False",
        "message": "receiver 'bb': Secret demo/x not found",
    }
    assert not_ready(config("demo", missing)) == "receiver 'bb': Secret demo/x not found"
    assert not_ready(config("demo", {"type": "Ready", "status": "True", "message": "ok"})) is None
    assert not_ready(config("demo")) is None
    assert not_ready(config("demo", {"type": "Reconciling", "status": "False"})) is None
    # Kargo reads only the ProjectConfig named as its namespace; another one says nothing.
    assert not_ready(config("stray", missing)) is None
