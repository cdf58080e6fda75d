"""Settings from the environment are checked like flags; apply refuses empty input (issue 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import cli


@pytest.mark.parametrize(
    ("variable", "value", "form"),
    [
        ("BODY_LIMIT", "2MiB", "a whole number of bytes"),
        ("BODY_LIMIT", "0", "a whole number of bytes"),
        ("LOG_LEVEL", "loud", "debug or info or warning or error"),
        ("HISTORY_SIZE", "-1", "a whole number from 0 to 1000000"),
        ("HISTORY_SIZE", "9" * 30, "a whole number from 0 to 1000000"),
        ("BODY_TIMEOUT", "soon", "a number of seconds above 0"),
        ("SHUTDOWN_GRACE", "1e12", "a number of seconds above 0 and at most 86400"),
        ("LISTEN", "8080", "HOST:PORT"),
        ("ADMIN_LISTEN", "nowhere", "HOST:PORT or off"),
        ("NO_PUBLISH", "yes please", "1, true, 0 or false"),
    ],
)
def test_bad_variable_is_one_line_naming_it_and_exit_2(
    state: Path, variable: str, value: str, form: str
) -> None:
    result = cli("serve", state=state, check=False, env={f"KARGO_BITBUCKET_{variable}": value})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"KARGO_BITBUCKET_{variable}={value!r}" in result.stderr
    assert f"expected {form}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_base_url_names_the_setting_it_came_from(state: Path) -> None:
    variable = {"KARGO_BITBUCKET_BASE_URL": "CHANGE-ME"}
    from_env = cli("serve", state=state, check=False, env=variable)
    assert from_env.returncode == 2
    assert from_env.stderr.startswith("kargo-bitbucket: KARGO_BITBUCKET_BASE_URL: base URL")
    from_flag = cli("serve", "--base-url", "ftp://x", state=state, check=False, env=variable)
    assert from_flag.returncode == 2
    assert from_flag.stderr.startswith("kargo-bitbucket: --base-url: base URL 'ftp://x'")


def test_a_history_size_past_a_million_is_refused(state: Path) -> None:
    """Its SQLite binding overflowed: the server ran, its store never started."""
    result = cli("serve", "--history-size", "9" * 30, state=state, check=False)
    assert result.returncode == 2
    assert "--history-size must be from 0 (off) to 1000000" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_timeout_flag_past_a_day_is_refused(state: Path) -> None:
    result = cli("serve", "--body-timeout", "1e12", state=state, check=False)
    assert result.returncode == 2
    assert "at most 86400 seconds" in result.stderr and "Traceback" not in result.stderr


def test_help_and_commands_without_the_setting_still_work(state: Path) -> None:
    bad = {"KARGO_BITBUCKET_BODY_LIMIT": "2MiB", "KARGO_BITBUCKET_LEASE_DURATION": "long"}
    for args in (["--help"], ["serve", "--help"], ["secret"]):
        result = cli(*args, state=state, check=False, env=bad)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr


def test_bad_log_level_stops_every_command_but_help(state: Path) -> None:
    loud = {"KARGO_BITBUCKET_LOG_LEVEL": "loud"}
    assert cli("--help", state=state, env=loud).returncode == 0
    result = cli("secret", state=state, check=False, env=loud)
    assert result.returncode == 2
    assert result.stderr == (
        "kargo-bitbucket: KARGO_BITBUCKET_LOG_LEVEL='loud': "
        "expected debug or info or warning or error\n"
    )
    assert cli("secret", state=state, env={"KARGO_BITBUCKET_LOG_LEVEL": "DEBUG"}).returncode == 0


@pytest.mark.parametrize("text", ["", "---\n", "# nothing here\n---\n---\n"])
def test_apply_of_no_objects_exits_2(tmp_path: Path, state: Path, text: str) -> None:
    manifest = tmp_path / "empty.yaml"
    manifest.write_text(text)
    result = cli("apply", "-f", str(manifest), state=state, check=False)
    assert (result.returncode, result.stderr) == (2, "kargo-bitbucket: no objects to apply\n")
    assert not state.exists()
    from_stdin = cli("apply", "-f", "-", state=state, stdin=text, check=False)
    assert (from_stdin.returncode, from_stdin.stderr) == (2, result.stderr)


def test_apply_of_an_empty_directory_exits_2(tmp_path: Path, state: Path) -> None:
    empty = tmp_path / "manifests"
    empty.mkdir()
    result = cli("apply", "-f", str(empty), state=state, check=False)
    assert result.returncode == 2
    assert result.stderr.endswith("no objects to apply\n")
