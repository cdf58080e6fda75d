"""Tests for the Masterminds/semver v3 port: reference tables, Kargo tag rules, properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kargo_bitbucket.core.semver import (
    MAX_CONSTRAINT_GROUPS,
    MAX_CONSTRAINT_LEN,
    MAX_VERSION_LEN,
    Constraint,
    SemverError,
    Version,
    _check_prerelease,
    _rewrite_ranges,
    _scan_group,
    _strict_new_version,
    _valid_identifiers,
    parse_version,
)


def v(text: str) -> Version:
    """Parse loosely (Masterminds NewVersion), as the reference tables do."""
    return parse_version(text)


# ---------------------------------------------------------------------------------------------
# Version parsing: Masterminds' own tables (version_test.go, v3.4/v3.5), as (text, is_error).

STRICT_NEW_VERSION = [
    ("1.2.3", False),
    ("1.2.3-alpha.01", True),
    ("1.2.3+test.01", False),
    ("1.2.3-alpha.-1", False),
    ("v1.2.3", True),
    ("1.0", True),
    ("v1.0", True),
    ("1", True),
    ("v1", True),
    ("1.2", True),
    ("1.2.beta", True),
    ("v1.2.beta", True),
    ("foo", True),
    ("1.2-5", True),
    ("v1.2-5", True),
    ("1.2-beta.5", True),
    ("v1.2-beta.5", True),
    ("\n1.2", True),
    ("\nv1.2", True),
    ("1.2.0-x.Y.0+metadata", False),
    ("v1.2.0-x.Y.0+metadata", True),
    ("1.2.0-x.Y.0+metadata-width-hypen", False),
    ("v1.2.0-x.Y.0+metadata-width-hypen", True),
    ("1.2.3-rc1-with-hypen", False),
    ("v1.2.3-rc1-with-hypen", True),
    ("1.2.3.4", True),
    ("v1.2.3.4", True),
    ("1.2.2147483648", False),
    ("1.2147483648.3", False),
    ("2147483648.3.0", False),
    ("20221209-update-renovatejson-v4", True),
    ("1.1.2+.123", True),
    ("1.0.0-alpha_beta", True),
    ("1.0.0-alpha..", True),
    ("1.0.0-alpha..1", True),
    ("01.1.1", True),
    ("1.01.1", True),
    ("1.1.01", True),
    ("9.8.7+meta+meta", True),
    ("1.2.31----RC-SNAPSHOT.12.09.1--.12+788", True),
    ("1.2.3-0123", True),
    ("1.2.3-0123.0123", True),
    ("+invalid", True),
    ("-invalid", True),
    ("-invalid.01", True),
    ("alpha+beta", True),
    ("1.2.3-alpha_beta+foo", True),
    # Further edges of the same rules.
    ("", True),
    ("1.2.3-", True),
    ("1.2.3+", True),
    ("1.2.3-+meta", True),
    ("1.2.3-alpha+", True),
    ("1.2.3-0", False),
    ("1.2.3-0a", False),
    ("1.2.3-00", True),
    ("1.2.3+00", False),
    ("0.0.0", False),
    ("18446744073709551615.0.0", False),
    ("18446744073709551616.0.0", True),
    ("1.2.3 ", True),
    (" 1.2.3", True),
    ("1..3", True),
    ("1.2.", True),
    ("1.2.3-a.b.c.d+e.f", False),
]


@pytest.mark.parametrize(("text", "is_error"), STRICT_NEW_VERSION)
def test_strict_new_version(text: str, is_error: bool) -> None:
    if is_error:
        with pytest.raises(SemverError):
            _strict_new_version(text)
    else:
        _strict_new_version(text)


NEW_VERSION = [
    ("1.2.3", False),
    ("1.2.3-alpha.01", True),
    ("1.2.3+test.01", False),
    ("1.2.3-alpha.-1", False),
    ("v1.2.3", False),
    ("1.0", False),
    ("v1.0", False),
    ("1", False),
    ("v1", False),
    ("1.2.beta", True),
    ("v1.2.beta", True),
    ("foo", True),
    ("1.2-5", False),
    ("v1.2-5", False),
    ("1.2-beta.5", False),
    ("v1.2-beta.5", False),
    ("\n1.2", True),
    ("\nv1.2", True),
    ("1.2.0-x.Y.0+metadata", False),
    ("v1.2.0-x.Y.0+metadata", False),
    ("1.2.0-x.Y.0+metadata-width-hypen", False),
    ("v1.2.0-x.Y.0+metadata-width-hypen", False),
    ("1.2.3-rc1-with-hypen", False),
    ("v1.2.3-rc1-with-hypen", False),
    ("1.2.3.4", True),
    ("v1.2.3.4", True),
    ("1.2.2147483648", False),
    ("1.2147483648.3", False),
    ("2147483648.3.0", False),
    ("12.3.4.1234", True),
    ("12.23.4.1234", True),
    ("12.3.34.1234", True),
    ("20221209-update-renovatejson-v4", False),
    ("1.1.2+.123", True),
    ("1.0.0-alpha_beta", True),
    ("1.0.0-alpha..", True),
    ("1.0.0-alpha..1", True),
    ("9.8.7+meta+meta", True),
    ("1.2.31----RC-SNAPSHOT.12.09.1--.12+788", True),
    ("01.1.1", False),
    ("1.01.1", False),
    ("1.1.01", False),
    # Further edges of the same rules.
    ("", True),
    ("v", True),
    ("vv1", True),
    ("V1.2.3", True),
    ("1.2.3\n", True),
    ("1.2.3-", True),
    ("1.2.3+", True),
    ("1.", True),
    (".1", True),
    ("1.2.3-0123", True),
    ("18446744073709551615", False),
    ("18446744073709551616", True),
    ("1.2.3-18446744073709551616", False),
    ("1.2.3+01.02", False),
    ("\u0661.\u0662.\u0663", True),  # non-ASCII digits are not digits here
]


@pytest.mark.parametrize(("text", "is_error"), NEW_VERSION)
def test_new_version(text: str, is_error: bool) -> None:
    if is_error:
        with pytest.raises(SemverError):
            parse_version(text)
    else:
        parse_version(text)


COERCED = [
    ("1.2.3", "1.2.3"),
    ("v1.2.3", "1.2.3"),
    ("1.0", "1.0.0"),
    ("v1.0", "1.0.0"),
    ("1", "1.0.0"),
    ("v1", "1.0.0"),
    ("1.2-5", "1.2.0-5"),
    ("v1.2-5", "1.2.0-5"),
    ("1.2-beta.5", "1.2.0-beta.5"),
    ("v1.2-beta.5", "1.2.0-beta.5"),
    ("1.2.0-x.Y.0+metadata", "1.2.0-x.Y.0+metadata"),
    ("v1.2.0-x.Y.0+metadata", "1.2.0-x.Y.0+metadata"),
    ("1.2.0-x.Y.0+metadata-width-hypen", "1.2.0-x.Y.0+metadata-width-hypen"),
    ("v1.2.0-x.Y.0+metadata-width-hypen", "1.2.0-x.Y.0+metadata-width-hypen"),
    ("1.2.3-rc1-with-hypen", "1.2.3-rc1-with-hypen"),
    ("v1.2.3-rc1-with-hypen", "1.2.3-rc1-with-hypen"),
    ("01.02.03", "1.2.3"),
    ("20221209-update-renovatejson-v4", "20221209.0.0-update-renovatejson-v4"),
    ("1+build", "1.0.0+build"),
    ("1-2+3", "1.0.0-2+3"),
]


@pytest.mark.parametrize(("text", "expected"), COERCED)
def test_coerced_string(text: str, expected: str) -> None:
    assert str(parse_version(text)) == expected


def test_parts() -> None:
    assert parse_version("1.2.3-beta.1+build.123") == Version(1, 2, 3, "beta.1", "build.123")
    parsed = parse_version("1.2.3-beta.1+build.123")
    assert (parsed.major, parsed.minor, parsed.patch) == (1, 2, 3)
    assert (parsed.prerelease, parsed.metadata) == ("beta.1", "build.123")


@pytest.mark.parametrize(
    ("prerelease", "ok"),
    [("foo", True), ("alpha.1", True), ("alpha.01", False), ("foo☃︎", False), ("alpha.0-1", True)],
)
def test_validate_prerelease(prerelease: str, ok: bool) -> None:
    if ok:
        _check_prerelease(prerelease)
    else:
        with pytest.raises(SemverError):
            _check_prerelease(prerelease)


@pytest.mark.parametrize(
    ("metadata", "ok"),
    [
        ("foo", True),
        ("alpha.1", True),
        ("alpha.01", True),
        ("foo☃︎", False),
        ("alpha.0-1", True),
        ("al-pha.1Phe70CgWe050H9K1mJwRUqTNQXZRERwLOEg37wpXUb4JgzgaD5YkL52ABnoyiE", True),
        ("", False),
        ("a..b", False),
    ],
)
def test_validate_metadata(metadata: str, ok: bool) -> None:
    assert _valid_identifiers(metadata) is ok


def test_length_limit() -> None:
    longest = "1.0.0-" + "a" * (MAX_VERSION_LEN - 6)
    assert len(longest) == MAX_VERSION_LEN
    assert parse_version(longest).prerelease == "a" * (MAX_VERSION_LEN - 6)
    assert parse_version(longest, strict=True)
    with pytest.raises(SemverError):
        parse_version(longest + "a")
    with pytest.raises(SemverError):
        _strict_new_version(longest + "a")
    # Kargo parses loosely first, so the "v" counts against the limit even in strict mode.
    with pytest.raises(SemverError):
        parse_version("v" + longest, strict=True)


# ---------------------------------------------------------------------------------------------
# Precedence: Masterminds' TestCompare/LessThan/GreaterThan/Equal tables, plus semver.org's list.

COMPARE = [
    ("1.2.3", "1.5.1", -1),
    ("2.2.3", "1.5.1", 1),
    ("2.2.3", "2.2.2", 1),
    ("3.2-beta", "3.2-beta", 0),
    ("1.3", "1.1.4", 1),
    ("4.2", "4.2-beta", 1),
    ("4.2-beta", "4.2", -1),
    ("4.2-alpha", "4.2-beta", -1),
    ("4.2-alpha", "4.2-alpha", 0),
    ("4.2-beta.2", "4.2-beta.1", 1),
    ("4.2-beta2", "4.2-beta1", 1),
    ("4.2-beta", "4.2-beta.2", -1),
    ("4.2-beta", "4.2-beta.foo", -1),
    ("4.2-beta.2", "4.2-beta", 1),
    ("4.2-beta.foo", "4.2-beta", 1),
    ("1.2+bar", "1.2+baz", 0),
    ("1.0.0-beta.4", "1.0.0-beta.-2", -1),
    ("1.0.0-beta.-2", "1.0.0-beta.-3", -1),
    ("1.0.0-beta.-3", "1.0.0-beta.5", 1),
    # Numbers compare numerically, up to uint64; beyond that they are words.
    ("1.0.0-beta.11", "1.0.0-beta.2", 1),
    ("1.0.0-18446744073709551616", "1.0.0-18446744073709551615", 1),
    ("1.0.0-18446744073709551616", "1.0.0-a", -1),
    ("1.0.0-B", "1.0.0-a", -1),
    ("1.0.0-alpha.1", "1.0.0-alpha.a", -1),
    ("18446744073709551615.0.0", "18446744073709551614.9.9", 1),
]


@pytest.mark.parametrize(("left", "right", "expected"), COMPARE)
def test_compare(left: str, right: str, expected: int) -> None:
    a, b = v(left), v(right)
    assert a.compare(b) == expected
    assert b.compare(a) == -expected
    assert (a < b, a == b, a > b) == (expected < 0, expected == 0, expected > 0)
    assert (a <= b, a >= b, a != b) == (expected <= 0, expected >= 0, expected != 0)


@pytest.mark.parametrize(
    ("left", "right", "less", "greater", "equal"),
    [
        ("1.2.3", "1.5.1", True, False, False),
        ("2.2.3", "1.5.1", False, True, False),
        ("3.2-beta", "3.2-beta", False, False, True),
        ("3.2.0-beta.1", "3.2.0-beta.5", True, False, False),
        ("3.2-beta.4", "3.2-beta.2", False, True, False),
        ("7.43.0-SNAPSHOT.99", "7.43.0-SNAPSHOT.103", True, False, False),
        ("7.43.0-SNAPSHOT.FOO", "7.43.0-SNAPSHOT.103", False, True, False),
        ("7.43.0-SNAPSHOT.99", "7.43.0-SNAPSHOT.BAR", True, False, False),
        ("3.2-beta+foo", "3.2-beta+bar", False, False, True),
        ("1.5.1", "1.5.1", False, False, True),
    ],
)
def test_less_greater_equal(left: str, right: str, less: bool, greater: bool, equal: bool) -> None:
    a, b = v(left), v(right)
    assert (a < b, a > b, a == b) == (less, greater, equal)
    assert (a <= b, a >= b) == (less or equal, greater or equal)


def test_semver_org_precedence_list() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "2.0.0",
        "2.1.0",
        "2.1.1",
    ]
    versions = [v(text) for text in ordered]
    assert sorted(reversed(versions)) == versions
    assert [str(x) for x in sorted(versions[::3] + versions[1::3] + versions[2::3])] == ordered


def test_metadata_is_ignored_by_equality_and_hash() -> None:
    a, b = v("1.2.3+a"), v("1.2.3+b")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a.metadata == "a"
    assert a != "1.2.3+a"


# ---------------------------------------------------------------------------------------------
# Kargo: pkg/controller/semver/parser.go. Loose = NewVersion; strict additionally requires
# StrictNewVersion(strings.TrimPrefix(tag, "v")). Rows: (tag, loose result or None, strict ok).

KARGO_TAGS = [
    ("v1.2.3", "1.2.3", True),
    ("1.2.3", "1.2.3", True),
    ("v1.0.0", "1.0.0", True),
    ("v1.0", "1.0.0", False),  # Kargo's semver_selector_test: "non-strict semver ignored"
    ("1.2", "1.2.0", False),
    ("1", "1.0.0", False),
    ("v1", "1.0.0", False),
    ("01.2.3", "1.2.3", False),
    ("v01.2.3", "1.2.3", False),
    ("1.02.3", "1.2.3", False),
    ("1.2.03", "1.2.3", False),
    ("0.0.0", "0.0.0", True),
    ("v0.1.0-rc.1", "0.1.0-rc.1", True),
    ("1.2.3-rc.1+build.5", "1.2.3-rc.1+build.5", True),
    ("v1.2.3+build.007", "1.2.3+build.007", True),
    ("1.2-rc.1", "1.2.0-rc.1", False),
    ("20221209-update", "20221209.0.0-update", False),
    ("2024", "2024.0.0", False),
    ("vv1.2.3", None, False),
    ("V1.2.3", None, False),
    ("release-1.2.3", None, False),
    ("1.2.3-01", None, False),
    ("1.2.3.4", None, False),
    (" 1.2.3", None, False),
    ("1.2.3 ", None, False),
    ("", None, False),
    ("v", None, False),
    ("foo", None, False),
    ("latest", None, False),
    ("1.2.3-alpha..1", None, False),
    ("1.2.3_rc1", None, False),
]


@pytest.mark.parametrize(("tag", "loose", "strict_ok"), KARGO_TAGS)
def test_kargo_tag_rules(tag: str, loose: str | None, strict_ok: bool) -> None:
    if loose is None:
        with pytest.raises(SemverError):
            parse_version(tag)
    else:
        assert str(parse_version(tag)) == loose
    if strict_ok:
        assert str(parse_version(tag, strict=True)) == loose
    else:
        with pytest.raises(SemverError):
            parse_version(tag, strict=True)


# ---------------------------------------------------------------------------------------------
# Constraints: Masterminds' constraints_test.go tables.


def check(constraint: str, version: str) -> bool:
    return Constraint.parse(constraint).allows(v(version))


@pytest.mark.parametrize(
    ("text", "operator", "version"),
    [
        (">= 1.2", "_greater_equal", "1.2.0"),
        ("1.0", "_equal", "1.0.0"),
        ("<= 1.2", "_less_equal", "1.2.0"),
        ("=< 1.2", "_less_equal", "1.2.0"),
        ("=> 1.2", "_greater_equal", "1.2.0"),
        ("v1.2", "_equal", "1.2.0"),
        ("=1.5", "_equal", "1.5.0"),
        ("> 1.3", "_greater", "1.3.0"),
        ("< 1.4.1", "_less", "1.4.1"),
        ("< 40.50.10", "_less", "40.50.10"),
        ("!=1.2.3", "_not_equal", "1.2.3"),
        ("~1.2", "_tilde", "1.2.0"),
        ("~>1.2", "_tilde", "1.2.0"),
        ("^1.2", "_caret", "1.2.0"),
        ("x", "_equal", "0.0.0"),
        ("*-beta", "_equal", "0.0.0-beta"),
        ("1.x-beta+meta", "_equal", "1.0.0-beta"),
        ("1.2.3-beta+meta", "_equal", "1.2.3-beta+meta"),
        ("01.02", "_equal", "1.2.0"),
    ],
)
def test_parse_single_constraint(text: str, operator: str, version: str) -> None:
    (group,) = Constraint.parse(text)._groups
    (comparator,) = group.comparators
    assert comparator.test.__name__ == operator
    assert str(comparator.version) == version


# TestConstraintCheck (one comparator; pre-releases considered iff it names one).
SINGLE_CHECK = [
    ("=2.0.0", "1.2.3", False),
    ("=2.0.0", "2.0.0", True),
    ("=2.0", "1.2.3", False),
    ("=2.0", "2.0.0", True),
    ("=2.0", "2.0.1", True),
    ("4.1", "4.1.0", True),
    ("!=4.1.0", "4.1.0", False),
    ("!=4.1.0", "4.1.1", True),
    ("!=4.1", "4.1.0", False),
    ("!=4.1", "4.1.1", False),
    ("!=4.1", "5.1.0-alpha.1", False),
    ("!=4.1.0", "5.1.0-alpha.1", False),
    ("!=4.1-alpha", "4.1.0", True),
    ("!=4.1", "5.1.0", True),
    ("<11", "0.1.0", True),
    ("<11", "11.1.0", False),
    ("<1.1", "0.1.0", True),
    ("<1.1", "1.1.0", False),
    ("<1.1", "1.1.1", False),
    ("<=11", "1.2.3", True),
    ("<=11", "12.2.3", False),
    ("<=11", "11.2.3", True),
    ("<=1.1", "1.2.3", False),
    ("<=1.1", "0.1.0", True),
    ("<=1.1", "1.1.0", True),
    ("<=1.1", "1.1.1", True),
    (">1.1", "4.1.0", True),
    (">1.1", "1.1.0", False),
    (">0", "0", False),
    (">0", "1", True),
    (">0", "0.0.1-alpha", False),
    (">0.0", "0.0.1-alpha", False),
    (">0-0", "0.0.1-alpha", False),
    (">0.0-0", "0.0.1-alpha", False),
    (">0", "0.0.0-alpha", False),
    (">0-0", "0.0.0-alpha", False),
    (">0.0.0-0", "0.0.0-alpha", True),
    (">1.2.3-alpha.1", "1.2.3-alpha.2", True),
    (">1.2.3-alpha.1", "1.3.3-alpha.2", True),
    (">11", "11.1.0", False),
    (">11.1", "11.1.0", False),
    (">11.1", "11.1.1", False),
    (">11.1", "11.2.1", True),
    (">=11", "11.1.2", True),
    (">=11.1", "11.1.2", True),
    (">=11.1", "11.0.2", False),
    (">=1.1", "4.1.0", True),
    (">=1.1", "1.1.0", True),
    (">=1.1", "0.0.9", False),
    (">=0", "0.0.1-alpha", False),
    (">=0.0", "0.0.1-alpha", False),
    (">=0-0", "0.0.1-alpha", True),
    (">=0.0-0", "0.0.1-alpha", True),
    (">=0", "0.0.0-alpha", False),
    (">=0-0", "0.0.0-alpha", True),
    (">=0.0.0-0", "0.0.0-alpha", True),
    (">=0.0.0-0", "1.2.3", True),
    (">=0.0.0-0", "3.4.5-beta.1", True),
    ("<0", "0.0.0-alpha", False),
    ("<0-z", "0.0.0-alpha", True),
    (">=0", "0", True),
    ("=0", "1", False),
    ("*", "1", True),
    ("*", "4.5.6", True),
    ("*", "1.2.3-alpha.1", False),
    ("*-0", "1.2.3-alpha.1", True),
    ("2.*", "1", False),
    ("2.*", "3.4.5", False),
    ("2.*", "2.1.1", True),
    ("2.1.*", "2.1.1", True),
    ("2.1.*", "2.2.1", False),
    ("2", "1", False),
    ("2", "3.4.5", False),
    ("2", "2.1.1", True),
    ("2.1", "2.1.1", True),
    ("2.1", "2.2.1", False),
    ("~1.2.3", "1.2.4", True),
    ("~1.2.3", "1.3.4", False),
    ("~1.2", "1.2.4", True),
    ("~1.2", "1.3.4", False),
    ("~1", "1.2.4", True),
    ("~1", "2.3.4", False),
    ("~0.2.3", "0.2.5", True),
    ("~0.2.3", "0.3.5", False),
    ("~1.2.3-beta.2", "1.2.3-beta.4", True),
    ("~1.2.3-beta.2", "1.2.4-beta.2", True),
    ("~1.2.3-beta.2", "1.3.4-beta.2", False),
    ("^1.2.3", "1.8.9", True),
    ("^1.2.3", "2.8.9", False),
    ("^1.2.3", "1.2.1", False),
    ("^1.1.0", "2.1.0", False),
    ("^1.2.0", "2.2.1", False),
    ("^1.2.0", "1.2.1-alpha.1", False),
    ("^1.2.0-alpha.0", "1.2.1-alpha.1", True),
    ("^1.2.0-alpha.0", "1.2.1-alpha.0", True),
    ("^1.2.0-alpha.2", "1.2.0-alpha.1", False),
    ("^1.2", "1.8.9", True),
    ("^1.2", "2.8.9", False),
    ("^1", "1.8.9", True),
    ("^1", "2.8.9", False),
    ("^0.2.3", "0.2.5", True),
    ("^0.2.3", "0.5.6", False),
    ("^0.2", "0.2.5", True),
    ("^0.2", "0.5.6", False),
    ("^0.0.3", "0.0.3", True),
    ("^0.0.3", "0.0.4", False),
    ("^0.0", "0.0.3", True),
    ("^0.0", "0.1.4", False),
    ("^0.0", "1.0.4", False),
    ("^0", "0.2.3", True),
    ("^0", "1.1.4", False),
    ("^0.2.3-beta.2", "0.2.3-beta.4", True),
    ("^0.2.3-beta.2", "0.2.4-beta.2", True),
    ("^0.2.3-beta.2", "0.3.4-beta.2", False),
    ("^0.2.3-beta.2", "0.2.3-beta.2", True),
]


@pytest.mark.parametrize(("constraint", "version", "expected"), SINGLE_CHECK)
def test_single_comparator_check(constraint: str, version: str, expected: bool) -> None:
    assert check(constraint, version) is expected


# TestNewConstraint: (text, OR groups, comparators in the first group) or None for an error.
NEW_CONSTRAINT = [
    (">= 1.1", (1, 1)),
    (">40.50.60, < 50.70", (1, 2)),
    ("2.0", (1, 1)),
    ("v2.3.5-20161202202307-sha.e8fc5e5", (1, 1)),
    (">= bar", None),
    ("BAR >= 1.2.3", None),
    (">= 1.2.3 < 2.0", (1, 2)),
    (">= 1.2.3 < 2.0 || => 3.0 < 4", (2, 2)),
    (">= 1.2.3, < 2.0", (1, 2)),
    (">= 1.2.3, < 2.0 || => 3.0, < 4", (2, 2)),
    ("3 - 4 || => 3.0, < 4", (2, 2)),
    ("12.3.4.1234", None),
    ("12.23.4.1234", None),
    ("12.3.34.1234", None),
    ("12.3.34 ~1.2.3", (1, 2)),
    ("12.3.34~ 1.2.3", None),
    ("1.0.0 - 2.0.0, <=2.0.0", (1, 3)),
    ("1.0.0 - 2.0.0 <=2.0.0", (1, 3)),
    ("2 - 3, 4.0.0 - 5.1", (1, 4)),
]


@pytest.mark.parametrize(("text", "shape"), NEW_CONSTRAINT)
def test_new_constraint(text: str, shape: tuple[int, int] | None) -> None:
    if shape is None:
        with pytest.raises(SemverError):
            Constraint.parse(text)
        return
    parsed = Constraint.parse(text)
    assert (len(parsed._groups), len(parsed._groups[0].comparators)) == shape
    assert parsed.text == text
    assert str(parsed) == text


# TestConstraintsCheck and the Check-equivalent rows of TestConstraintsValidate.
CONSTRAINTS_CHECK = [
    ("*", "1.2.3", True),
    ("~0.0.0", "1.2.3", True),
    ("0.x.x", "1.2.3", False),
    ("0.0.x", "1.2.3", False),
    ("0.0.0", "1.2.3", False),
    ("^0.0.0", "1.2.3", False),
    ("= 2.0", "1.2.3", False),
    ("= 2.0", "2.0.0", True),
    ("4.1", "4.1.0", True),
    ("4.1.x", "4.1.3", True),
    ("1.x", "1.4", True),
    ("!=4.1", "4.1.0", False),
    ("!=4.1-alpha", "4.1.0-alpha", False),
    ("!=4.1-alpha", "4.1.1-alpha", False),
    ("!=4.1-alpha", "4.1.0", True),
    ("!=4.1", "5.1.0", True),
    ("!=4.x", "5.1.0", True),
    ("!=4.x", "4.1.0", False),
    ("!=4.1.x", "4.2.0", True),
    ("!=4.2.x", "4.2.3", False),
    (">1.1", "4.1.0", True),
    (">1.1", "1.1.0", False),
    ("<1.1", "0.1.0", True),
    ("<1.1", "1.1.0", False),
    ("<1.1", "1.1.1", False),
    ("<1.x", "1.1.1", False),
    ("<1.x", "0.1.1", True),
    ("<1.x", "2.0.0", False),
    ("<2.x", "1.1.1", True),
    ("<1.1.x", "1.2.1", False),
    ("<1.1.x", "1.1.500", False),
    ("<1.1.x", "1.0.500", True),
    ("<1.2.x", "1.1.1", True),
    (">=1.1", "4.1.0", True),
    (">=1.1", "4.1.0-beta", False),
    (">=1.1", "1.1.0", True),
    (">=1.1", "0.0.9", False),
    ("<=1.1", "0.1.0", True),
    ("<=1.1", "0.1.0-alpha", False),
    ("<=1.1-a", "0.1.0-alpha", True),
    ("<=1.1", "1.1.0", True),
    ("<=1.x", "1.1.0", True),
    ("<=2.x", "3.0.0", False),
    ("<=2.x", "3.1.0", False),
    ("<=1.1", "1.1.1", True),
    ("<=1.1.x", "1.2.500", False),
    ("<=4.5", "3.4.0", True),
    ("<=4.5", "3.7.0", True),
    ("<=4.5", "4.6.3", False),
    (">1.1, <2", "1.1.1", False),
    (">1.1, <2", "1.2.1", True),
    (">1.1, <3", "4.3.2", False),
    (">=1.1, <2, !=1.2.3", "1.2.3", False),
    (">1.1 <2", "1.1.1", False),
    (">1.1 <2", "1.2.1", True),
    (">1.1    <3", "4.3.2", False),
    (">=1.1    <2    !=1.2.3", "1.2.3", False),
    (">=1.1, <2, !=1.2.3 || > 3", "4.1.2", True),
    (">=1.1, <2, !=1.2.3 || > 3", "3.1.2", False),
    (">=1.1, <2, !=1.2.3 || >= 3", "3.0.0", True),
    (">=1.1, <2, !=1.2.3 || > 3", "3.0.0", False),
    (">=1.1, <2, !=1.2.3 || > 3", "1.2.3", False),
    (">=1.1 <2 !=1.2.3", "1.2.3", False),
    (">=1.1 <2 !=1.2.3 || > 3", "4.1.2", True),
    (">=1.1 <2 !=1.2.3 || > 3", "3.1.2", False),
    (">=1.1 <2 !=1.2.3 || >= 3", "3.0.0", True),
    (">=1.1 <2 !=1.2.3 || > 3", "3.0.0", False),
    (">=1.1 <2 !=1.2.3 || > 3", "1.2.3", False),
    ("> 1.1, <     2", "1.1.1", False),
    (">   1.1, <2", "1.2.1", True),
    (">1.1, <  3", "4.3.2", False),
    (">= 1.1, <     2, !=1.2.3", "1.2.3", False),
    ("> 1.1 < 2", "1.1.1", False),
    (">1.1 < 2", "1.2.1", True),
    ("> 1.1    <3", "4.3.2", False),
    (">=1.1    < 2    != 1.2.3", "1.2.3", False),
    (">= 1.1, <2, !=1.2.3 || > 3", "4.1.2", True),
    (">= 1.1, <2, != 1.2.3 || > 3", "3.1.2", False),
    (">= 1.1, <2, != 1.2.3 || >= 3", "3.0.0", True),
    (">= 1.1, <2, !=1.2.3 || > 3", "3.0.0", False),
    (">= 1.1, <2, !=1.2.3 || > 3", "1.2.3", False),
    (">= 1.1 <2 != 1.2.3", "1.2.3", False),
    (">= 1.1 <2 != 1.2.3 || > 3", "4.1.2", True),
    (">= 1.1 <2 != 1.2.3 || > 3", "3.1.2", False),
    (">= 1.1 <2 != 1.2.3 || >= 3", "3.0.0", True),
    (">= 1.1 < 2 !=1.2.3 || > 3", "3.0.0", False),
    (">=1.1 < 2 !=1.2.3 || > 3", "1.2.3", False),
    (">= 1.0.0  <= 2.0.0-beta", "1.0.1-beta", True),
    (">= 1.0.0  <= 2.0.0-beta", "1.0.1", True),
    (">= 1.0.0  <= 2.0.0-beta", "3.0.0", False),
    (">= 1.0.0  <= 2.0.0-beta || > 3", "1.0.1-beta", True),
    (">= 1.0.0  <= 2.0.0-beta || > 3", "3.0.1-beta", False),
    (">= 1.0.0  <= 2.0.0-beta != 1.0.1 || > 3", "1.0.1-beta", True),
    (">= 1.0.0  <= 2.0.0-beta != 1.0.1-beta || > 3", "1.0.1-beta", False),
    (">= 1.0.0-0  <= 2.0.0", "1.0.1-beta", True),
    ("1.1 - 2", "1.1.1", True),
    ("1.5.0 - 4.5", "3.7.0", True),
    ("1.1 - 3", "4.3.2", False),
    ("1.1-3", "4.3.2", False),
    ("^1.1", "1.1.1", True),
    ("^1.1", "1.1.1-alpha", False),
    ("^1.1", "4.3.2", False),
    ("^1.x", "1.1.1", True),
    ("^2.x", "1.1.1", False),
    ("^1.x", "2.1.1", False),
    ("^1.x", "1.1.1-beta1", False),
    ("^1.1.2-alpha", "1.2.1-beta1", True),
    ("^1.1.1-alpha", "1.1.1-beta", True),
    ("^1.1.1-beta", "1.1.1-alpha", False),
    ("^1.2.x-alpha", "1.1.1-beta1", False),
    ("^0.0.1", "0.0.1", True),
    ("^0.0.1", "0.3.1", False),
    ("^0.0.1", "0.1.3", False),
    ("^1.12.7", "1.6.6", False),
    ("^0.2", "0.3.0", False),
    ("^0.2", "0.1.1", False),
    ("^0.0.3", "0.1.1", False),
    ("^0.0.3", "0.0.2", False),
    ("~*", "2.1.1", True),
    ("~1", "2.1.1", False),
    ("~1", "1.3.5", True),
    ("~1", "1.3.5-beta", False),
    ("~1", "1.4", True),
    ("~1.x", "2.1.1", False),
    ("~1.x", "1.3.5", True),
    ("~1.x", "1.3.5-beta", False),
    ("~1.x", "1.4", True),
    ("~1.1", "1.1.1", True),
    ("~1.1", "1.1.1-alpha", False),
    ("~1.1-alpha", "1.1.1-beta", True),
    ("~1.1.1-beta", "1.1.1-alpha", False),
    ("~1.1.1-beta", "1.1.1", True),
    ("~1.3.6-alpha", "1.3.5-beta", False),
    ("~1.3.5-alpha", "1.3.5-beta", True),
    ("~1.3.5-beta", "1.3.5-alpha", False),
    ("~1.2.3", "1.2.5", True),
    ("~1.2.3", "1.2.2", False),
    ("~1.2.3", "1.3.2", False),
    ("~1.1", "1.2.3", False),
    ("~1.3", "2.4.5", False),
    ("~1", "2.1.2", False),
    ("!= 1.2.5, ^2, <= 1.1.x", "1.2.3", False),
    ("1.0.0 - 2.0.0 <=2.0.0", "1.5.0", True),
    ("1.0.0 - 2.0.0, <=2.0.0", "1.5.0", True),
    ("> 1.2.3", "1.2.3-beta.1", False),
]


@pytest.mark.parametrize(("constraint", "version", "expected"), CONSTRAINTS_CHECK)
def test_constraints_check(constraint: str, version: str, expected: bool) -> None:
    assert check(constraint, version) is expected


@pytest.mark.parametrize(
    ("text", "rewritten"),
    [
        ("2 - 3", ">= 2, <= 3 "),
        ("2 - 3, 2 - 3", ">= 2, <= 3 ,>= 2, <= 3 "),
        ("2 - 3, 4.0.0 - 5.1", ">= 2, <= 3 ,>= 4.0.0, <= 5.1 "),
        ("2 - 3 4.0.0 - 5.1", ">= 2, <= 3 >= 4.0.0, <= 5.1 "),
        ("1.0.0 - 2.0.0 <=2.0.0", ">= 1.0.0, <= 2.0.0 <=2.0.0"),
        ("1.2-1.4", "1.2-1.4"),
        ("1.0.0-alpha - 2", ">= 1.0.0-alpha, <= 2 "),
        ("v1 - v2 || 4.x", ">= v1, <= v2 || 4.x"),
        (">1.0 - 2.0", ">>= 1.0, <= 2.0 "),
        ("1\t-\n2", ">= 1, <= 2 "),
    ],
)
def test_rewrite_ranges(text: str, rewritten: str) -> None:
    assert _rewrite_ranges(text) == rewritten


# ---------------------------------------------------------------------------------------------
# Constraints: wildcards in every position, operators with wildcards, 0.x edges.

WILDCARDS = [
    (f"{w}{rest}", version, expected)
    for w in ("x", "X", "*")
    for rest, version, expected in [
        ("", "0.0.0", True),
        ("", "1.2.3", True),
        ("", "99.0.0", True),
        ("", "1.2.3-beta", False),
        (".2.3", "5.0.0", True),  # a wildcard major ignores what follows
        (f".{w}.{w}", "5.6.7", True),
        ("-0", "1.2.3-beta", True),
        ("-0", "0.0.0-alpha", True),
    ]
] + [
    (text.replace("x", w), version, expected)
    for w in ("x", "X", "*")
    for text, version, expected in [
        ("1.x", "1.0.0", True),
        ("1.x", "1.9.9", True),
        ("1.x", "2.0.0", False),
        ("1.x", "0.9.9", False),
        ("1.x.x", "1.5.5", True),
        ("1.x.5", "1.0.0", True),  # the patch after a wildcard minor is ignored
        ("1.2.x", "1.2.0", True),
        ("1.2.x", "1.2.99", True),
        ("1.2.x", "1.3.0", False),
        ("1.2.x", "1.1.9", False),
        ("v1.x", "1.3.0", True),
        ("=1.x", "1.3.0", True),
        ("=1.2.x", "1.3.0", False),
        (">1.x", "2.0.0", True),
        (">1.x", "1.9.9", False),
        (">1.x", "0.1.0", False),
        (">1.2.x", "1.3.0", True),
        (">1.2.x", "1.2.9", False),
        (">1.2.x", "2.0.0", True),
        (">=1.x", "1.0.0", True),
        (">=1.x", "0.9.0", False),
        (">=1.2.x", "1.2.0", True),
        ("<1.x", "0.9.9", True),
        ("<1.x", "1.0.0", False),
        ("<1.2.x", "1.1.9", True),
        ("<1.2.x", "1.2.0", False),
        ("<=1.x", "1.9.9", True),
        ("<=1.x", "2.0.0", False),
        ("<=1.x", "0.0.1", True),
        ("<=1.2.x", "1.2.99", True),
        ("<=1.2.x", "1.3.0", False),
        ("!=1.x", "1.5.0", False),
        ("!=1.x", "2.0.0", True),
        ("!=1.x", "0.1.0", True),
        ("!=1.2.x", "1.2.5", False),
        ("!=1.2.x", "1.3.0", True),
        ("~1.x", "1.9.0", True),
        ("~1.x", "2.0.0", False),
        ("~1.2.x", "1.2.9", True),
        ("~1.2.x", "1.3.0", False),
        ("^1.x", "1.9.0", True),
        ("^1.x", "2.0.0", False),
        ("^1.2.x", "1.2.0", True),
        ("^1.2.x", "1.9.0", True),
        ("^1.2.x", "1.1.0", False),
        ("^1.2.x", "2.0.0", False),
    ]
]


@pytest.mark.parametrize(("constraint", "version", "expected"), WILDCARDS)
def test_wildcards(constraint: str, version: str, expected: bool) -> None:
    assert check(constraint, version) is expected


ZERO_MAJOR = [
    ("^0.x", "0.9.0", True),
    ("^0.x", "0.0.1", True),
    ("^0.x", "1.0.0", False),
    ("^0", "0.9.0", True),
    ("^0", "1.0.0", False),
    ("^0.0.x", "0.0.9", True),
    ("^0.0.x", "0.1.0", False),
    ("^0.0", "0.0.9", True),
    ("^0.0", "0.1.0", False),
    ("^0.0.0", "0.0.0", True),
    ("^0.0.0", "0.0.1", False),
    ("^0.1", "0.1.5", True),
    ("^0.1", "0.2.0", False),
    ("^0.1.2", "0.1.2", True),
    ("^0.1.2", "0.1.9", True),
    ("^0.1.2", "0.1.1", False),
    ("^0.1.2", "0.2.0", False),
    ("^0.0.3", "0.0.3", True),
    ("^0.0.3", "0.0.4", False),
    ("~0", "0.5.0", True),
    ("~0", "1.0.0", False),
    ("~0.0", "0.0.5", True),
    ("~0.0", "0.1.0", False),
    ("~0.0.0", "5.0.0", True),
    ("~0.1.2", "0.1.5", True),
    ("~0.1.2", "0.1.1", False),
    ("~0.1.2", "0.2.0", False),
    ("~>0.1", "0.1.9", True),
    ("~>0.1", "0.2.0", False),
]


@pytest.mark.parametrize(("constraint", "version", "expected"), ZERO_MAJOR)
def test_caret_and_tilde_zero_major(constraint: str, version: str, expected: bool) -> None:
    assert check(constraint, version) is expected


# Wildcard-major comparators other than = and ~ behave surprisingly; pinned as Masterminds has it.
WILDCARD_MAJOR_SURPRISES = [
    ("^*", "0.0.0", True),
    ("^*", "0.0.1", False),
    ("^*", "1.0.0", False),
    ("^x.x", "2.0.0", False),
    ("<=*", "0.0.5", True),
    ("<=*", "0.1.0", False),
    ("<=*", "1.0.0", False),
    ("!=*", "0.0.0", False),
    ("!=*", "0.0.1", True),
    ("!=*", "1.0.0", True),
    (">*", "0.0.0", False),
    (">*", "0.0.1", True),
    ("<*", "0.0.0", False),
    (">=*", "7.0.0", True),
    ("~*", "7.0.0", True),
    ("=*", "7.0.0", True),
]


@pytest.mark.parametrize(("constraint", "version", "expected"), WILDCARD_MAJOR_SURPRISES)
def test_wildcard_major_with_other_operators(constraint: str, version: str, expected: bool) -> None:
    assert check(constraint, version) is expected


# ---------------------------------------------------------------------------------------------
# Constraints: pre-releases, hyphen ranges, ||, AND by comma and blanks, spacing, "v".

PRERELEASES = [
    (">=1.0.0", "1.5.0-beta", False),
    (">=1.0.0-0", "1.5.0-beta", True),
    (">=1.0.0-0", "0.9.0-beta", False),
    # The whole AND group opts in when any of its comparators names a pre-release (v3.4+).
    (">=1.0.0-alpha <2.0.0", "1.5.0-rc.1", True),
    (">=1.0.0-alpha, <2.0.0", "1.5.0-rc.1", True),
    (">=1.0.0-alpha <2.0.0", "2.0.0-rc.1", True),
    (">=1.0.0 <2.0.0-0", "1.5.0-rc.1", True),
    # ... but not across ||.
    (">1.0.0-beta.1 < 2 || > 3", "3.5.0-beta", False),
    (">1.0.0-beta.1 < 2 || > 3", "1.5.0-beta", True),
    (">1.0.0-beta.1 < 2 || > 3", "3.5.0", False),  # ">3" means 4.0.0 and up
    (">1.0.0-beta.1 < 2 || > 3", "4.0.0", True),
    (">=1.0.0-alpha || >=3.0.0", "3.1.0-beta", True),  # the first group alone allows it
    ("^1.2.3-beta.1", "1.2.3-beta.2", True),
    ("^1.2.3-beta.1", "1.5.0-alpha", True),  # npm would say no: other versions' pre-releases
    ("^1.2.3-beta.1", "2.0.0-alpha", False),
    ("^1.2.3-beta.1", "1.2.3-alpha", False),
    ("~1.2.3-beta", "1.2.9-rc", True),
    ("~1.2.3-beta", "1.3.0-rc", False),
    ("1.2.3-beta", "1.2.3-beta", True),
    ("1.2.3-beta", "1.2.3-beta+build", True),
    ("1.2.3-beta", "1.2.3", False),
    ("1.2.3", "1.2.3+build.7", True),
    ("=1.2.3+abc", "1.2.3+def", True),
    ("!=1.2.3-beta", "1.2.3-beta", False),
    ("!=1.2.3-beta", "1.2.4-beta", True),
    ("!=1.2.3-beta", "1.2.3", True),
    (">1.2.3", "1.2.4-alpha", False),
    ("<2.0.0", "1.9.0-alpha", False),
    ("<2.0.0-0", "1.9.0-alpha", True),
    ("1.2-1.4", "1.2.0", True),  # no blanks: a version 1.2.0-1.4, not a range
    ("1.2-1.4", "1.2.5", True),
    ("1.2-1.4", "1.2.0-2", True),
    ("1.2-1.4", "1.3.0", False),
]


@pytest.mark.parametrize(("constraint", "version", "expected"), PRERELEASES)
def test_prereleases(constraint: str, version: str, expected: bool) -> None:
    assert check(constraint, version) is expected


HYPHEN_RANGES = [
    ("1.2 - 1.4.5", "1.2.0", True),
    ("1.2 - 1.4.5", "1.4.5", True),
    ("1.2 - 1.4.5", "1.4.6", False),
    ("1.2 - 1.4.5", "1.1.9", False),
    ("1.2 - 1.4.5", "1.3.0-beta", False),
    ("1.2.3 - 2.3.4", "2.3.4", True),
    ("1.2.3 - 2.3.4", "2.3.5", False),
    ("1.2.3 - 2.3", "2.3.9", True),  # a partial upper bound takes the whole minor
    ("1.2.3 - 2.3", "2.4.0", False),
    ("1.2.3 - 2", "2.9.9", True),
    ("1.2.3 - 2", "3.0.0", False),
    ("1.x - 2.x", "2.9.9", True),
    ("1.x - 2.x", "3.0.0", False),
    ("1.x - 2.x", "0.9.0", False),
    ("v1.0.0 - v2.0.0", "1.5.0", True),
    ("1.0.0-alpha - 1.0.0", "1.0.0-beta", True),
    ("1.0.0-alpha - 1.0.0", "1.0.0", True),
    ("1 - 2, 3 - 4", "1.5.0", False),
    ("1 - 2 || 3 - 4", "3.5.0", True),
    ("1 - 2 || 3 - 4", "2.5.0", True),
    ("1 - 2 || 3 - 4", "5.0.0", False),
    ("1.2 - 1.4 || 2.x", "1.4.9", True),
    ("1.2 - 1.4 || 2.x", "2.5.0", True),
    ("1.2 - 1.4 || 2.x", "1.5.0", False),
    ("1\t-\t2", "1.5.0", True),
]


@pytest.mark.parametrize(("constraint", "version", "expected"), HYPHEN_RANGES)
def test_hyphen_ranges(constraint: str, version: str, expected: bool) -> None:
    assert check(constraint, version) is expected


COMBINATIONS = [
    ("1.x || 3.x", "2.0.0", False),
    ("1.x || 3.x", "3.5.0", True),
    ("1.x || 3.x", "1.0.0", True),
    ("1.0.0||2.0.0", "2.0.0", True),
    ("1.0.0||2.0.0", "1.5.0", False),
    ("<1.0.0 || >=2.0.0", "1.5.0", False),
    ("<1.0.0 || >=2.0.0", "0.5.0", True),
    ("~1.2 || ^3", "3.9.0", True),
    ("~1.2 || ^3", "1.3.0", False),
    (">=1.0,<2.0", "1.5.0", True),
    (">=1.0,<2.0", "2.0.0", False),
    (">=1.0 <2.0", "1.5.0", True),
    (">=1.0 <2.0", "2.0.0", False),
    (">= 1.0 , < 2.0", "1.5.0", True),
    (">=1.0,\t<2.0", "1.5.0", True),
    (">=1.0\n<2.0", "2.5.0", False),
    ("  >=1.0  ", "1.5.0", True),
    ("> 1.0 < 2.0", "1.5.0", True),
    ("~ 1.2", "1.2.9", True),
    ("^ 1.2", "1.9.0", True),
    ("= 1.2", "1.2.7", True),
    ("!= 1.2.3", "1.2.3", False),
    ("=> 1.2", "1.2.0", True),
    ("=< 1.2", "1.2.9", True),
    ("~> 1.2", "1.3.0", False),
    ("v1.2.3", "1.2.3", True),
    (">=v1.2", "1.3.0", True),
    ("^v1.0.0", "1.9.0", True),  # Kargo's own test constraint
    ("^v1.0.0", "2.0.0", False),
    ("01.02.03", "1.2.3", True),
    ("*.|", "4.0.0", True),  # "|" is a segment character; after a wildcard it is never read
    ("1.x.|", "1.4.0", True),
    ("x.1x", "4.0.0", True),
]


@pytest.mark.parametrize(("constraint", "version", "expected"), COMBINATIONS)
def test_combinations(constraint: str, version: str, expected: bool) -> None:
    assert check(constraint, version) is expected


MALFORMED_CONSTRAINTS = [
    "",  # NewConstraint rejects it; Kargo never calls it for an empty semverConstraint
    " ",
    "\t",
    "foo",
    ">= bar",
    "BAR >= 1.2.3",
    "12.3.4.1234",
    "12.3.34~ 1.2.3",
    "1.2.3,",
    ",1.2.3",
    "1.2.3,,1.3.0",
    "1.2.3 ||",
    "|| 1.2.3",
    "1.0 |||| 2.0",
    ">1<2",
    "> = 1",
    "=> =1",
    "==1.2.3",
    "~=1.0.0",
    "<>1",
    "!1.2",
    "1.2.",
    "1.2.3-",
    "1.2.3+",
    "1.2.3-01",
    "1.2.3-alpha..1",
    "1.2.3-alpha_beta",
    "1.2.3 +build",
    "1x",
    "x|",
    "1.2.x|",
    "1.|",
    "|",
    "1 | 2",
    ">=1.0 - 2.0",
    "1.2 -1.4",
    "1.2- 1.4",
    "1 - 2 - 3",
    "v",
    "V1.2.3",
    "vv1",
    "1.2.3.4",
    "x.abc",
    "18446744073709551616",
    ">=1.0.0 <2.0.0 ≤3",
    "1.0.0\u00a0<2",  # a no-break space is not a Go \s
    "1.0.0\v<2",  # nor is a vertical tab
    "1.0.0-" + "a" * 251,  # the version inside is longer than MaxVersionLen
    "x-" + "a" * 251,
]


@pytest.mark.parametrize("text", MALFORMED_CONSTRAINTS)
def test_malformed_constraints(text: str) -> None:
    with pytest.raises(SemverError):
        Constraint.parse(text)


def test_constraint_limits() -> None:
    padded = "1.0.0".ljust(MAX_CONSTRAINT_LEN)
    assert Constraint.parse(padded).allows(v("1.0.0"))
    with pytest.raises(SemverError, match="too long"):
        Constraint.parse(padded + " ")
    groups = " || ".join(["1.0.0"] * MAX_CONSTRAINT_GROUPS)
    assert Constraint.parse(groups).allows(v("1.0.0"))
    with pytest.raises(SemverError, match="too many"):
        Constraint.parse(groups + " || 1.0.0")
    assert Constraint.parse("1.0.0-" + "a" * 250).allows(v("1.0.0-" + "a" * 250))


def test_non_string_input_is_a_semver_error() -> None:
    with pytest.raises(SemverError):
        parse_version(123)  # type: ignore[arg-type]
    with pytest.raises(SemverError):
        Constraint.parse(None)  # type: ignore[arg-type]


def test_constraint_is_immutable_and_compares_by_text() -> None:
    parsed = Constraint.parse("^1.2")
    with pytest.raises(AttributeError):
        parsed.text = "^2"  # type: ignore[misc]
    assert parsed == Constraint.parse("^1.2")
    assert hash(parsed) == hash(Constraint.parse("^1.2"))


# ---------------------------------------------------------------------------------------------
# Reference oracle: Masterminds' regular expressions for one || alternative (validation, term
# discovery, term parsing), written out in Python with Go's ASCII \s. Compared with the scanner.

_S = r"[ \t\n\f\r]"
_OPS = r"=||!=|>|<|>=|=>|<=|=<|~|~>|\^"
_CVR = (
    r"v?([0-9|x|X|\*]+)(\.[0-9|x|X|\*]+)?(\.[0-9|x|X|\*]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
)
_VALID = re.compile(
    rf"({_S}*({_OPS}){_S}*({_CVR}){_S}*)((?:{_S}+|,{_S}*)({_OPS}){_S}*({_CVR}){_S}*)*"
)
_FIND = re.compile(rf"({_OPS}){_S}*({_CVR})")
_TERM = re.compile(rf"{_S}*({_OPS}){_S}*({_CVR}){_S}*")


def oracle_terms(group: str) -> list[tuple[str, str]] | None:
    """(operator, version) per term as the regular expressions see it, None if invalid."""
    if _VALID.fullmatch(group) is None:
        return None
    terms = []
    for found in _FIND.finditer(group):
        match = _TERM.fullmatch(found.group(0))
        assert match is not None
        terms.append((match.group(1), match.group(2)))
    return terms


def scanner_terms(group: str) -> list[tuple[str, str]] | None:
    try:
        return [(term.op, term.version) for term in _scan_group(group)]
    except SemverError:
        return None


@pytest.mark.parametrize(
    "group",
    [
        ">= 1.2.3 < 2.0",
        " =>3.0, < 4 ",
        "12.3.34~ 1.2.3",
        "1.2.3-beta+meta.1 ,~>1",
        "1.2.3-",
        "1.2.",
        "1.2.3.4",
        "x.|.*",
        "1,,2",
        "v1 v2",
        "!= 1 ^2 ~3",
        ">1<2",
    ],
)
def test_scanner_matches_reference_regexes(group: str) -> None:
    assert scanner_terms(group) == oracle_terms(group)


_CONSTRAINT_ALPHABET = list("0123456789.xX*|-+ ,<>=!~^vab\t")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=_CONSTRAINT_ALPHABET, max_size=16))
def test_scanner_matches_reference_regexes_property(group: str) -> None:
    assert scanner_terms(group) == oracle_terms(group)


# ---------------------------------------------------------------------------------------------
# Properties.


@settings(max_examples=500)
@given(st.text())
def test_parse_version_only_raises_semver_error(text: str) -> None:
    for strict in (False, True):
        try:
            parsed = parse_version(text, strict=strict)
        except SemverError:
            continue
        assert isinstance(parsed, Version)


@settings(max_examples=500)
@given(st.text())
def test_constraint_parse_only_raises_semver_error(text: str) -> None:
    try:
        parsed = Constraint.parse(text)
    except SemverError:
        return
    assert parsed.allows(v("1.2.3")) in (True, False)


_SAMPLE_VERSIONS = [v(text) for text in ("0.0.0", "1.2.3", "1.2.3-beta", "2.0.0", "0.1.0-0")]


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=_CONSTRAINT_ALPHABET, max_size=24))
def test_constraint_like_text_only_raises_semver_error(text: str) -> None:
    try:
        parsed = Constraint.parse(text)
    except SemverError:
        return
    for version in _SAMPLE_VERSIONS:
        assert parsed.allows(version) in (True, False)


@settings(max_examples=1000)
@given(st.text(alphabet=list("0123456789.-+vVab"), max_size=16))
def test_version_like_text(text: str) -> None:
    try:
        strict = parse_version(text, strict=True)
    except SemverError:
        strict = None
    try:
        loose = parse_version(text)
    except SemverError:
        assert strict is None  # strict acceptance implies loose acceptance
        return
    if strict is not None:
        assert (strict, strict.metadata) == (loose, loose.metadata)
        assert str(strict) == (text[1:] if text.startswith("v") else text)


_NUMBER = st.integers(min_value=0, max_value=2**64 - 1)
_WORD = st.from_regex(r"[0-9A-Za-z-]*[A-Za-z-][0-9A-Za-z-]*", fullmatch=True)
_PRE_IDENT = st.one_of(st.integers(min_value=0, max_value=2**70).map(str), _WORD)
_META_IDENT = st.from_regex(r"[0-9A-Za-z-]+", fullmatch=True)


@st.composite
def version_texts(draw: st.DrawFn) -> str:
    text = f"{draw(_NUMBER)}.{draw(_NUMBER)}.{draw(_NUMBER)}"
    prerelease = draw(st.lists(_PRE_IDENT, max_size=4))
    metadata = draw(st.lists(_META_IDENT, max_size=3))
    if prerelease:
        text += "-" + ".".join(prerelease)
    if metadata:
        text += "+" + ".".join(metadata)
    return text


@settings(max_examples=300)
@given(version_texts())
def test_valid_versions_round_trip(text: str) -> None:
    if len(text) > MAX_VERSION_LEN:
        return
    parsed = parse_version(text, strict=True)
    assert str(parsed) == text
    assert _strict_new_version(text) == parsed
    if len(text) < MAX_VERSION_LEN:
        assert parse_version("v" + text, strict=True) == parsed


def reference_compare(a: Version, b: Version) -> int:
    """Masterminds' Compare written out step by step, to check the precomputed sort key."""
    for x, y in ((a.major, b.major), (a.minor, b.minor), (a.patch, b.patch)):
        if x != y:
            return -1 if x < y else 1
    if not a.prerelease or not b.prerelease:
        return (not a.prerelease) - (not b.prerelease)
    left, right = a.prerelease.split("."), b.prerelease.split(".")
    for i in range(max(len(left), len(right))):
        s = left[i] if i < len(left) else ""
        o = right[i] if i < len(right) else ""
        if s == o:
            continue
        if not s or not o:
            return -1 if not s else 1
        s_num = s.isdigit() and int(s) < 2**64
        o_num = o.isdigit() and int(o) < 2**64
        if s_num and o_num:
            return -1 if int(s) < int(o) else 1
        if s_num != o_num:
            return -1 if s_num else 1
        return -1 if s < o else 1
    return 0


_SMALL_VERSION = st.builds(
    Version,
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, 2),
    st.lists(
        st.sampled_from(["0", "1", "2", "10", "a", "b", "-", "18446744073709551616"]), max_size=3
    ).map(".".join),
    st.sampled_from(["", "m"]),
)


@settings(max_examples=1000)
@given(_SMALL_VERSION, _SMALL_VERSION, _SMALL_VERSION)
def test_ordering_matches_reference_and_is_total(a: Version, b: Version, c: Version) -> None:
    assert a.compare(b) == reference_compare(a, b) == -b.compare(a)
    if a == b:
        assert hash(a) == hash(b)
    if a <= b and b <= c:
        assert a <= c
    assert sorted([a, b, c]) == sorted([c, b, a])
