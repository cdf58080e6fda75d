"""Masterminds/semver v3 version parsing and constraint checks, as Kargo applies them to tags."""

# Semantics follow github.com/Masterminds/semver/v3 at v3.5.0 (the version Kargo's go.mod
# pins), re-implemented here; see tests/core/test_semver.py for the reference tables.
#
# Kargo's rule (pkg/controller/semver/parser.go, pkg/controller/git/commit/semver_selector.go):
# a tag is a version when NewVersion (loose) accepts it; with strictSemvers it must also pass
# StrictNewVersion after removing one leading "v". An empty semverConstraint means "no
# constraint" and is decided by the caller: Constraint.parse("") raises, as NewConstraint does.

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MAX_CONSTRAINT_GROUPS",
    "MAX_CONSTRAINT_LEN",
    "MAX_VERSION_LEN",
    "Constraint",
    "SemverError",
    "Version",
    "parse_version",
]

MAX_VERSION_LEN: Final = 256
"""Longest version text Masterminds accepts (``MaxVersionLen``), in bytes."""
MAX_CONSTRAINT_LEN: Final = 512
"""Longest constraint text Masterminds accepts (``MaxConstraintLen``), in bytes."""
MAX_CONSTRAINT_GROUPS: Final = 32
"""Most ``||`` alternatives Masterminds accepts (``MaxConstraintGroups``)."""

_UINT64_MAX: Final = 2**64 - 1
_DIGITS: Final = frozenset("0123456789")
_IDENT_CHARS: Final = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-")
# Characters of a constraint version segment: Go's class [0-9|x|X|\*] includes a literal "|".
_SEGMENT_CHARS: Final = frozenset("0123456789xX*|")
# Go's \s is ASCII-only: [\t\n\f\r ]. Python's \s is not, so it is never used here.
_SPACE: Final = frozenset(" \t\n\f\r")
_WILDCARDS: Final = frozenset({"x", "X", "*"})

# Loose version shape (NewVersion): v? N(.N)?(.N)? (-ids)? (+ids)?; leading zeros are coerced.
_LOOSE_VERSION: Final = re.compile(
    r"v?([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?",
    re.ASCII,
)

# A constraint version, wildcards allowed (Masterminds' cvRegex), used for hyphen ranges.
_CV: Final = (
    r"v?[0-9|xX*]+(?:\.[0-9|xX*]+)?(?:\.[0-9|xX*]+)?"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_WS: Final = r"[ \t\n\f\r]"
_HYPHEN_RANGE: Final = re.compile(f"{_WS}*({_CV}){_WS}+-{_WS}+({_CV}){_WS}*", re.ASCII)

_TWO_CHAR_OPS: Final = frozenset({"!=", ">=", "=>", "<=", "=<", "~>"})
_ONE_CHAR_OPS: Final = frozenset("=><~^")


class SemverError(ValueError):
    """Raised for any version or constraint text Masterminds/semver v3 (or Kargo) rejects.

    The only exception this module raises for bad input, so callers catch one class.
    """


_PreKey = tuple[tuple[int, int, str], ...]
_Key = tuple[int, int, int, int, _PreKey]


def _prerelease_key(prerelease: str) -> _PreKey:
    """Sort key of a pre-release: numbers (up to uint64) before words, words byte-wise.

    A shorter list of identifiers sorts first when it is a prefix of the longer one.
    """
    parts = []
    for ident in prerelease.split("."):
        if ident.isascii() and ident.isdigit() and int(ident) <= _UINT64_MAX:
            parts.append((0, int(ident), ""))
        else:
            parts.append((1, 0, ident))
    return tuple(parts)


@dataclass(frozen=True, eq=False, slots=True)
class Version:
    """A parsed semantic version.

    Equality, hashing and ordering follow SemVer precedence as Masterminds' ``Compare``:
    build metadata is ignored, a pre-release sorts before its release.
    """

    major: int
    minor: int
    patch: int
    prerelease: str = ""
    metadata: str = ""
    _key: _Key = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Precompute the precedence key once, so comparisons on the hot path are cheap."""
        if self.prerelease:
            key: _Key = (self.major, self.minor, self.patch, 0, _prerelease_key(self.prerelease))
        else:
            key = (self.major, self.minor, self.patch, 1, ())
        object.__setattr__(self, "_key", key)

    def compare(self, other: Version) -> int:
        """Return -1, 0 or 1 as ``self`` sorts before, with, or after ``other``."""
        if self._key == other._key:
            return 0
        return -1 if self._key < other._key else 1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key < other._key

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key <= other._key

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key > other._key

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key >= other._key

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += f"-{self.prerelease}"
        if self.metadata:
            text += f"+{self.metadata}"
        return text


def _number(segment: str) -> int:
    """Parse a numeric segment as Go's ``strconv.ParseUint(s, 10, 64)``."""
    if not segment or not segment.isascii() or not segment.isdigit():
        raise SemverError(f"invalid characters in version segment {segment!r}")
    value = int(segment)
    if value > _UINT64_MAX:
        raise SemverError(f"version segment {segment!r} is out of range")
    return value


def _valid_identifiers(text: str) -> bool:
    """Whether ``text`` is dot-separated, non-empty identifiers of ``[0-9A-Za-z-]``."""
    return all(part and _IDENT_CHARS.issuperset(part) for part in text.split("."))


def _check_prerelease(prerelease: str) -> None:
    """Reject a pre-release with a bad identifier or a numeric one with a leading zero."""
    if not _valid_identifiers(prerelease):
        raise SemverError(f"invalid prerelease string {prerelease!r}")
    for ident in prerelease.split("."):
        if len(ident) > 1 and ident[0] == "0" and _DIGITS.issuperset(ident):
            raise SemverError(f"prerelease identifier {ident!r} starts with 0")


def _new_version(text: str) -> Version:
    """Masterminds ``NewVersion`` (coercing): ``1`` -> 1.0.0, ``v1.2`` -> 1.2.0, ``01`` -> 1."""
    # Byte length in Go; any non-ASCII text is rejected below anyway, so len() suffices.
    if len(text) > MAX_VERSION_LEN:
        raise SemverError(f"version string is too long (max {MAX_VERSION_LEN} bytes)")
    match = _LOOSE_VERSION.fullmatch(text)
    if match is None:
        raise SemverError(f"invalid semantic version {text!r}")
    major, minor, patch, prerelease, metadata = match.groups()
    version = Version(
        _number(major),
        _number(minor) if minor is not None else 0,
        _number(patch) if patch is not None else 0,
        prerelease or "",
        metadata or "",
    )
    if version.prerelease:
        _check_prerelease(version.prerelease)
    return version


def _strict_new_version(text: str) -> Version:
    """Masterminds ``StrictNewVersion``: exactly MAJOR.MINOR.PATCH[-pre][+meta], no ``v``."""
    if not text:
        raise SemverError("version string empty")
    if len(text) > MAX_VERSION_LEN:
        raise SemverError(f"version string is too long (max {MAX_VERSION_LEN} bytes)")
    parts = text.split(".", 2)
    if len(parts) != 3:
        raise SemverError(f"invalid semantic version {text!r}")
    major, minor, rest = parts
    metadata = prerelease = ""
    plus = rest.find("+")
    if plus >= 0:
        rest, metadata = rest[:plus], rest[plus + 1 :]
        if not _valid_identifiers(metadata):
            raise SemverError(f"invalid metadata string {metadata!r}")
    dash = rest.find("-")
    if dash >= 0:
        rest, prerelease = rest[:dash], rest[dash + 1 :]
        _check_prerelease(prerelease)
    for segment in (major, minor, rest):
        if len(segment) > 1 and segment[0] == "0" and _DIGITS.issuperset(segment):
            raise SemverError(f"version segment {segment!r} starts with 0")
    return Version(_number(major), _number(minor), _number(rest), prerelease, metadata)


def parse_version(text: str, *, strict: bool = False) -> Version:
    """Parse a tag as Kargo's SemVer strategy does; raise SemverError if it is not a version.

    ``strict=False``: Masterminds ``NewVersion`` (``1``, ``v1.2``, ``01.2.3`` are accepted).
    ``strict=True`` (Kargo ``strictSemvers``): additionally ``StrictNewVersion`` must accept the
    text with one leading ``v`` removed, i.e. full MAJOR.MINOR.PATCH, no leading zeros.
    """
    if not isinstance(text, str):
        raise SemverError(f"version must be a string, not {type(text).__name__}")
    version = _new_version(text)
    if strict:
        try:
            _strict_new_version(text[1:] if text.startswith("v") else text)
        except SemverError as error:
            raise SemverError(f"not a strict semantic version {text!r}: {error}") from None
    return version


# ---------------------------------------------------------------------------------------------
# Constraints


@dataclass(frozen=True, slots=True)
class _Comparator:
    """One ``op version`` term; ``dirty`` flags mark wildcard or missing parts (``1.x``, ``1``)."""

    text: str
    version: Version
    dirty: bool
    minor_dirty: bool
    patch_dirty: bool
    test: Callable[[_Comparator, Version], bool]

    def matches(self, version: Version) -> bool:
        """Whether ``version`` satisfies this term (the pre-release gate is the group's)."""
        return self.test(self, version)


@dataclass(frozen=True, slots=True)
class _Group:
    """An AND group; pre-releases are considered only if one of its terms names one."""

    comparators: tuple[_Comparator, ...]
    allows_prerelease: bool


def _tilde(c: _Comparator, v: Version) -> bool:
    """``~1.2.3``: >=1.2.3 <1.3.0; ``~1``/``~1.x``: same major; ``~0.0.0``/``~*``: anything."""
    con = c.version
    if v._key < con._key:
        return False
    if not (con.major or con.minor or con.patch or c.minor_dirty or c.patch_dirty):
        return True
    if v.major != con.major:
        return False
    return c.minor_dirty or v.minor == con.minor


def _equal(c: _Comparator, v: Version) -> bool:
    """``=`` or no operator: exact match, or ``~`` when the version has a wildcard."""
    if c.dirty:
        return _tilde(c, v)
    return v._key == c.version._key


def _not_equal(c: _Comparator, v: Version) -> bool:
    """``!=``: with wildcards, outside the named major/minor (oddly: ``!=*`` excludes 0.0.0)."""
    con = c.version
    if c.dirty:
        if con.major != v.major:
            return True
        if c.minor_dirty:
            return False
        if con.minor != v.minor:
            return True
        if c.patch_dirty:
            if v.prerelease or con.prerelease:
                return _prerelease_key(v.prerelease) != _prerelease_key(con.prerelease)
            return False
        if con.patch != v.patch:
            return True
    return v._key != con._key


def _greater(c: _Comparator, v: Version) -> bool:
    """``>``: ``>1.x`` means >=2.0.0 and ``>1.2.x`` means >=1.3.0."""
    con = c.version
    if not c.dirty:
        return v._key > con._key
    if v.major != con.major:
        return v.major > con.major
    if c.minor_dirty:
        return False
    if c.patch_dirty:
        return v.minor > con.minor
    return v._key > con._key


def _less(c: _Comparator, v: Version) -> bool:
    """``<``: wildcards read as zero, so ``<1.x`` is <1.0.0."""
    return v._key < c.version._key


def _greater_equal(c: _Comparator, v: Version) -> bool:
    """``>=`` / ``=>``."""
    return v._key >= c.version._key


def _less_equal(c: _Comparator, v: Version) -> bool:
    """``<=`` / ``=<``: ``<=1.2.x`` and ``<=1.2`` take all of 1.2; ``<=1.x`` all of 1."""
    con = c.version
    if not c.dirty:
        return v._key <= con._key
    if v.major > con.major:
        return False
    return not (v.major == con.major and v.minor > con.minor and not c.minor_dirty)


def _caret(c: _Comparator, v: Version) -> bool:
    """``^``: same major; for 0.y same minor; for 0.0.z exactly z. ``^0``/``^0.x``: major 0."""
    con = c.version
    if v._key < con._key:
        return False
    if con.major > 0 or c.minor_dirty:
        return v.major == con.major
    if v.major > 0:
        return False
    if con.minor > 0 or c.patch_dirty:
        return v.minor == con.minor
    if v.minor > 0:
        return False
    return v.patch == con.patch


_OPERATORS: Final[dict[str, Callable[[_Comparator, Version], bool]]] = {
    "": _equal,
    "=": _equal,
    "!=": _not_equal,
    ">": _greater,
    "<": _less,
    ">=": _greater_equal,
    "=>": _greater_equal,
    "<=": _less_equal,
    "=<": _less_equal,
    "~": _tilde,
    "~>": _tilde,
    "^": _caret,
}


def _rewrite_ranges(text: str) -> str:
    """Turn each hyphen range ``A - B`` into ``>= A, <= B `` as Masterminds' rewriteRange."""
    if "-" not in text:
        return text
    out = text
    for match in [(m.group(0), m.group(1), m.group(2)) for m in _HYPHEN_RANGE.finditer(text)]:
        whole, low, high = match
        out = out.replace(whole, f">= {low}, <= {high} ", 1)
    return out


def _skip_space(text: str, i: int) -> int:
    """Index of the first non-blank character at or after ``i``."""
    n = len(text)
    while i < n and text[i] in _SPACE:
        i += 1
    return i


def _scan_identifiers(text: str, i: int) -> int:
    """End of the dot-separated ``[0-9A-Za-z-]+`` identifiers at ``i`` (``i`` if there are none)."""
    n = len(text)
    end = i
    while end < n and text[end] in _IDENT_CHARS:
        end += 1
    if end == i:
        return i
    while end + 1 < n and text[end] == "." and text[end + 1] in _IDENT_CHARS:
        end += 1
        while end < n and text[end] in _IDENT_CHARS:
            end += 1
    return end


@dataclass(frozen=True, slots=True)
class _Term:
    """One scanned ``op version`` with the version's parts as written."""

    op: str
    version: str
    major: str
    minor: str | None
    patch: str | None
    prerelease: str


def _scan_term(text: str, i: int) -> tuple[_Term, int]:
    """Scan ``op`` blanks ``version`` at ``i``; return the term and the index after it."""
    n = len(text)
    if text[i : i + 2] in _TWO_CHAR_OPS:
        op = text[i : i + 2]
    elif i < n and text[i] in _ONE_CHAR_OPS:
        op = text[i]
    else:
        op = ""
    start = j = _skip_space(text, i + len(op))
    if j < n and text[j] == "v":
        j += 1
    segments: list[str] = []
    while True:
        seg_start = j
        while j < n and text[j] in _SEGMENT_CHARS:
            j += 1
        if j == seg_start:
            raise SemverError(f"improper constraint: {text[i:].strip()!r}")
        segments.append(text[seg_start:j])
        if len(segments) == 3 or j + 1 >= n or text[j] != "." or text[j + 1] not in _SEGMENT_CHARS:
            break
        j += 1
    prerelease = ""
    if j < n and text[j] == "-":
        end = _scan_identifiers(text, j + 1)
        if end > j + 1:
            prerelease, j = text[j + 1 : end], end
    if j < n and text[j] == "+":
        end = _scan_identifiers(text, j + 1)
        if end > j + 1:
            j = end
    term = _Term(
        op,
        text[start:j],
        segments[0],
        segments[1] if len(segments) > 1 else None,
        segments[2] if len(segments) > 2 else None,
        prerelease,
    )
    return term, j


def _scan_group(group: str) -> list[_Term]:
    """Split one ``||`` alternative into terms separated by blanks and/or one comma."""
    n = len(group)
    i = _skip_space(group, 0)
    if i == n:
        raise SemverError(f"improper constraint: {group!r}")
    term, i = _scan_term(group, i)
    terms = [term]
    while True:
        j = _skip_space(group, i)
        if j == n:
            return terms
        if group[j] == ",":
            j = _skip_space(group, j + 1)
            if j == n:
                raise SemverError(f"improper constraint: {group!r} (nothing after ',')")
        elif j == i:
            raise SemverError(f"improper constraint: {group!r} (unexpected {group[j]!r})")
        term, i = _scan_term(group, j)
        terms.append(term)


def _comparator(term: _Term) -> _Comparator:
    """Build a comparator; wildcards (or missing parts) zero the rest and mark it dirty."""
    dash = f"-{term.prerelease}" if term.prerelease else ""
    dirty, minor_dirty, patch_dirty = True, False, False
    if term.major in _WILDCARDS:
        text = f"0.0.0{dash}"
    elif term.minor is None or term.minor in _WILDCARDS:
        minor_dirty = True
        text = f"{term.major}.0.0{dash}"
    elif term.patch is None or term.patch in _WILDCARDS:
        patch_dirty = True
        text = f"{term.major}.{term.minor}.0{dash}"
    else:
        dirty, text = False, term.version
    try:
        version = _new_version(text)
    except SemverError as error:
        raise SemverError(f"improper constraint: {term.op + term.version!r} ({error})") from None
    return _Comparator(
        term.op + term.version,
        version,
        dirty,
        minor_dirty,
        patch_dirty,
        _OPERATORS[term.op],
    )


@dataclass(frozen=True, slots=True)
class Constraint:
    """A parsed Masterminds constraint: ``||`` of AND groups of comparators.

    Parse once with :meth:`parse`, then call :meth:`allows` per version. A pre-release version
    is allowed only by an AND group in which some comparator names a pre-release.
    """

    text: str
    _groups: tuple[_Group, ...] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """Parse constraint text as Masterminds ``NewConstraint``; raise SemverError if bad.

        The empty string is rejected too (Kargo skips the constraint when it is empty).
        """
        if not isinstance(text, str):
            raise SemverError(f"constraint must be a string, not {type(text).__name__}")
        # Byte length in Go; a non-ASCII constraint is rejected below anyway.
        if len(text) > MAX_CONSTRAINT_LEN:
            raise SemverError(f"constraint string is too long (max {MAX_CONSTRAINT_LEN} bytes)")
        alternatives = _rewrite_ranges(text).split("||")
        if len(alternatives) > MAX_CONSTRAINT_GROUPS:
            raise SemverError(f"too many constraint groups (max {MAX_CONSTRAINT_GROUPS})")
        groups = []
        for alternative in alternatives:
            comparators = tuple(_comparator(term) for term in _scan_group(alternative))
            allows_prerelease = any(c.version.prerelease for c in comparators)
            groups.append(_Group(comparators, allows_prerelease))
        return cls(text, tuple(groups))

    def allows(self, version: Version) -> bool:
        """Whether ``version`` satisfies the constraint (Masterminds ``Check``)."""
        prerelease = bool(version.prerelease)
        for group in self._groups:
            if prerelease and not group.allows_prerelease:
                continue
            for comparator in group.comparators:
                if not comparator.test(comparator, version):
                    break
            else:
                return True
        return False

    def __str__(self) -> str:
        return self.text
