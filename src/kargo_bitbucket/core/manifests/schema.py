"""The schema DSL: typed nodes that check a parsed value and say where it is wrong."""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from kargo_bitbucket.core.text import printable

MAX_NODES = 500_000  # values per document after expanding YAML aliases
MAX_DEPTH = 200  # nesting levels
DEPTH_SHOWN = 3  # path segments a "nested too deep" error names
# libyaml's composer recurses in C and overflowed the stack between 20,000 and 40,000
# levels (measured); a text with fewer flow openers cannot nest that deep.
FLOW_OPENERS_CHECKED = 10_000
MAX_SECRET_BYTES = 1024 * 1024
MAX_ANNOTATION_BYTES = 256 * 1024

Path = tuple[str | int, ...]
Tokens = dict[Path, tuple[str | None, int]]


class ManifestError(ValueError):
    """A manifest that cannot be applied; ``str(e)`` is one line saying where and why."""

    def __init__(self, message: str, *, path: str = "", line: int | None = None) -> None:
        self.path = path
        self.line = line
        super().__init__(one_line(message))


class UnknownFieldError(ManifestError):
    """An unknown field where strict validation refuses it (inside ``spec.subscriptions``)."""


class UnknownKindError(ValueError):
    """A kind name that is none of the accepted spellings."""


# ---------------------------------------------------------------------------- text helpers

SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_BRACKET_KEY = re.compile(r"[A-Za-z0-9_.\-/~@:+]+\Z")


def one_line(text: str) -> str:
    """Escape every character that would break a line or a terminal (``printable``)."""
    return printable(text)


def quote(text: str, limit: int = 80) -> str:
    """A short, quoted rendering of a user string."""
    shown = json.dumps(text[:limit], ensure_ascii=False)
    return shown + "…" if len(text) > limit else shown


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``; did you mean branch?`` for a misspelt ``brnach`` (or ``repoURL`` for ``repoUrl``:
    case is not compared); empty when no known name is close."""
    close = closest(name, known)
    return f"; did you mean {close}?" if close else ""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` is most likely a misspelling of, if one is close enough."""
    by_lower = {candidate.lower(): candidate for candidate in sorted(candidates, reverse=True)}
    close = difflib.get_close_matches(name.lower(), by_lower, n=1, cutoff=0.75)
    return by_lower[close[0]] if close else None


def fmt_path(path: Path) -> str:
    """``spec.subscriptions[0].git.branch``; odd keys in brackets, as Kubernetes does."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif _PLAIN_KEY.match(seg):
            out += f".{seg}" if out else seg
        elif _BRACKET_KEY.match(seg):
            out += f"[{seg}]"
        else:
            out += f"[{quote(seg)}]"
    return out


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- context


class Ctx:
    """Where we are, the YAML source positions, and the warnings gathered."""

    def __init__(
        self, where: str, tokens: Tokens | None, prefix: Path, strict: bool = False
    ) -> None:
        self.where = where
        self.tokens = tokens
        self.prefix = prefix
        self.strict = strict
        self.ident = ""
        self.warnings: list[str] = []

    def line(self, path: Path) -> int | None:
        """The source line of ``path`` or of its nearest ancestor."""
        if self.tokens is None:
            return None
        full = self.prefix + path
        for end in range(len(full), -1, -1):
            hit = self.tokens.get(full[:end])
            if hit is not None:
                return hit[1]
        return None

    def fail(
        self, path: Path, problem: str, error: type[ManifestError] = ManifestError
    ) -> NoReturn:
        line = self.line(path)
        text = fmt_path(path)
        message = f"{self.where}{self.ident}: " + (f"{text}: " if text else "") + problem
        raise error(message + (f" (line {line})" if line else ""), path=text, line=line)

    def warn(self, path: Path, problem: str) -> None:
        self.warnings.append(one_line(f"{self.where}{self.ident}: {fmt_path(path)}: {problem}"))

    def got(self, path: Path, value: Any, sensitive: bool = False) -> str:
        """``number 1.20``: the type, and the value as written unless it is secret."""
        name = type_name(value)
        if value is None or isinstance(value, dict | list) or sensitive:
            return name
        if isinstance(value, str):
            return f"{name} {quote(value)}"
        token = self.written(path) or json.dumps(value)
        return f"{name} {token[:40]}{'…' if len(token) > 40 else ''}"

    def written(self, path: Path) -> str | None:
        """A scalar as the YAML document spelled it (``1.20``, not ``1.2``); None when
        the value did not come from YAML."""
        if self.tokens is not None:
            hit = self.tokens.get(self.prefix + path)
            if hit:
                return str(hit[0])
        return None


# ---------------------------------------------------------------------------- schema


class Spec:
    """One node of our schema; ``check`` returns the value to store."""

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        raise NotImplementedError


_Rule = Callable[[str], str | None]


class Str(Spec):
    def __init__(
        self,
        *,
        min_len: int = 0,
        max_len: int | None = None,
        enum: tuple[str, ...] = (),
        rule: _Rule | None = None,
        sensitive: bool = False,
    ) -> None:
        self.min_len, self.max_len, self.enum = min_len, max_len, enum
        self.rule, self.sensitive = rule, sensitive

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, str):
            message = f"must be a string, got {ctx.got(path, value, self.sensitive)}"
            token = ctx.written(path) if not self.sensitive else None
            if isinstance(value, bool | int | float) and token and len(token) <= 40:
                # YAML read unquoted text as a number or a boolean
                message += f" (quote it to keep it as written: {json.dumps(token)})"
            ctx.fail(path, message)
        if len(value) < self.min_len:
            ctx.fail(path, "must not be empty")
        if self.max_len is not None and len(value) > self.max_len:
            ctx.fail(path, f"must be at most {self.max_len} characters, got {len(value)}")
        if self.enum and value not in self.enum:
            ctx.fail(path, f"must be one of {', '.join(self.enum)}; got {quote(value)}")
        problem = self.rule(value) if self.rule else None
        if problem:
            ctx.fail(path, problem)
        return value


class Int(Spec):
    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not _is_int(value):
            ctx.fail(path, f"must be an integer, got {ctx.got(path, value)}")
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            ctx.fail(path, f"must be between {low} and {high}, got {value}")
        return value


class Bool(Spec):
    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, bool):
            ctx.fail(path, f"must be a boolean (true or false), got {ctx.got(path, value)}")
        return value


class AnyOf(Spec):
    """Free-form JSON, optionally required to be an object or a list."""

    def __init__(self, kind: str | None = None) -> None:
        self.kind = kind

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if self.kind == "object" and not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        if self.kind == "list" and not isinstance(value, list):
            ctx.fail(path, f"must be a list, got {ctx.got(path, value)}")
        return value


class NullAsEmpty(Spec):
    """``null`` read as ``""`` before ``inner`` checks it: the API server stores an empty
    string for a null map value (labels, annotations, Secret data)."""

    def __init__(self, inner: Spec) -> None:
        self.inner = inner

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        return self.inner.check("" if value is None else value, path, ctx)


_Hook = Callable[[Any, Path, Ctx], None]


class Obj(Spec):
    """An object with known fields; ``unknown`` is ``warn`` (keep, note), ``keep``, or
    ``strict`` (refused when the context is strict, else as ``warn``)."""

    def __init__(
        self,
        fields: dict[str, Spec],
        *,
        required: tuple[str, ...] = (),
        unknown: str = "warn",
        after: _Hook | None = None,
    ) -> None:
        self.fields, self.required, self.unknown, self.after = fields, required, unknown, after

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            spec = self.fields.get(key)
            if spec is None:
                hint = did_you_mean(key, self.fields)
                if self.unknown == "strict" and ctx.strict:
                    why = hint or " (a misspelled filter would widen the subscription)"
                    # A misspelt required field (repoUrl:) is refused with --validate=warn
                    # too: not the UnknownFieldError whose message offers that flag.
                    missed = closest(key, self.required)
                    error = ManifestError if missed and missed not in value else UnknownFieldError
                    ctx.fail((*path, key), f"unknown field{why}", error)
                if self.unknown in ("warn", "strict"):
                    ctx.warn((*path, key), f"unknown field, kept as is and not checked{hint}")
                out[key] = item
            elif item is not None or key in self.required:
                out[key] = spec.check(item, (*path, key), ctx)
            # else: null in an optional field means absent (the API server prunes it)
        for key in self.required:
            if key not in out:
                unknown = (
                    name for name in out if isinstance(name, str) and name not in self.fields
                )
                misspelt = closest(key, unknown)
                also = f" (misspelt as {quote(misspelt)}?)" if misspelt else ""
                ctx.fail((*path, key), f"required field is missing{also}")
        if self.after:
            self.after(out, path, ctx)
        return out


class List(Spec):
    def __init__(self, item: Spec, *, min_items: int = 0, after: _Hook | None = None) -> None:
        self.item, self.min_items, self.after = item, min_items, after

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, list):
            ctx.fail(path, f"must be a list, got {ctx.got(path, value)}")
        if len(value) < self.min_items:
            ctx.fail(path, f"must have at least {self.min_items} item(s)")
        out = [self.item.check(item, (*path, i), ctx) for i, item in enumerate(value)]
        if self.after:
            self.after(out, path, ctx)
        return out


class Map(Spec):
    """A map of user-chosen keys to values of one type."""

    def __init__(
        self, value: Spec, *, key: _Rule | None = None, after: _Hook | None = None
    ) -> None:
        self.value, self.key, self.after = value, key, after

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, dict):
            ctx.fail(path, f"must be an object, got {ctx.got(path, value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            problem = self.key(key) if self.key else None
            if problem:
                ctx.fail((*path, key), f"invalid key {quote(key)}: {problem}")
            out[key] = self.value.check(item, (*path, key), ctx)
        if self.after:
            self.after(out, path, ctx)
        return out


class Base64(Spec):
    """A Secret ``data`` value: standard base64 with padding (line breaks ignored, as Go)."""

    _SHAPE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")

    def check(self, value: Any, path: Path, ctx: Ctx) -> Any:
        if not isinstance(value, str):
            ctx.fail(path, f"must be a base64 string, got {ctx.got(path, value, True)}")
        compact = value.replace("\r", "").replace("\n", "")
        if not self._SHAPE.match(compact):
            ctx.fail(path, "must be valid base64 (standard alphabet, with = padding)")
        try:
            raw = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            ctx.fail(path, "must be valid base64 (standard alphabet, with = padding)")
        return base64.b64encode(raw).decode("ascii")
