"""The YAML reader: documents, line numbers, one error line per problem."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from kargo_bitbucket.core.manifests.kinds import (
    KIND_TABLE,
    Resource,
    validate,
)
from kargo_bitbucket.core.manifests.schema import (
    DEPTH_SHOWN,
    FLOW_OPENERS_CHECKED,
    MAX_DEPTH,
    MAX_NODES,
    SURROGATE,
    Ctx,
    ManifestError,
    Path,
    Tokens,
    fmt_path,
    quote,
)

# ---------------------------------------------------------------------------- YAML


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe loader used to compose nodes; scalars are converted by ``_Converter``.

    libyaml's parser (``CSafeLoader``) when PyYAML has it: measured 9x faster on 10,000
    Warehouses; the pure-Python one otherwise. Both compose the same nodes.
    """


_TAG = "tag:yaml.org,2002:"


class _Hard(Exception):
    """A YAML problem that stops reading the document: (path, problem, line)."""

    def __init__(self, path: Path, problem: str, line: int) -> None:
        super().__init__(problem)
        self.path, self.problem, self.line = path, problem, line


class _Converter:
    """Nodes to plain JSON-like data, recording source lines and tokens of scalars."""

    def __init__(self, loader: _Loader) -> None:
        self.loader = loader
        self.count = 0
        self.tokens: Tokens = {}
        self.soft: tuple[Path, str] | None = None
        self.flattened: set[int] = set()

    def convert(self, node: yaml.Node, path: Path) -> Any:
        line = node.start_mark.line + 1
        self.count += 1
        if self.count > MAX_NODES:
            raise _Hard(path, f"more than {MAX_NODES} values (after expanding YAML aliases)", line)
        if len(path) > MAX_DEPTH:
            raise _Hard(path[:DEPTH_SHOWN], f"nested more than {MAX_DEPTH} levels deep", line)
        if isinstance(node, yaml.ScalarNode):
            value = self.scalar(node, path, line)
            plain = not node.style and not isinstance(value, str)
            self.tokens[path] = (node.value if plain else None, line)
            return value
        self.tokens[path] = (None, line)
        if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
            return [self.convert(child, (*path, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
            pairs = self.pairs(node, path)
            return {key: self.convert(child, (*path, key)) for key, child in pairs}
        raise _Hard(path, f"unsupported YAML tag {node.tag}", line)

    def scalar(self, node: yaml.ScalarNode, path: Path, line: int) -> Any:
        tag = node.tag
        if tag == _TAG + "str" or tag == _TAG + "timestamp":  # timestamps stay text, as JSON
            if SURROGATE.search(node.value):
                raise _Hard(path, "invalid Unicode text (lone surrogate)", line)
            return node.value
        if tag == _TAG + "null":
            return None
        constructors: dict[str, Callable[[yaml.ScalarNode], Any]] = {
            _TAG + "bool": self.loader.construct_yaml_bool,
            _TAG + "int": self.loader.construct_yaml_int,
            _TAG + "float": self.loader.construct_yaml_float,
        }
        construct = constructors.get(tag)
        if construct is None:
            raise _Hard(path, f"unsupported YAML tag {tag}", line)
        try:
            value = construct(node)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, yaml.YAMLError):
            what = f"invalid {tag.removeprefix(_TAG)} {quote(node.value)}"
            raise _Hard(path, what, line) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise _Hard(path, f"numbers must be finite, got {node.value}", line)
        if type(value) is int and not -(2**63) <= value < 2**63:
            raise _Hard(path, f"integers must fit in 64 bits, as in Kubernetes, got {value}", line)
        return value

    def key(self, node: yaml.Node, path: Path) -> str:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            raise _Hard(path, "mapping keys must be plain strings", line)
        if SURROGATE.search(node.value):
            raise _Hard(path, "invalid Unicode text in a key (lone surrogate)", line)
        return str(node.value)

    def pairs(self, node: yaml.MappingNode, path: Path) -> Iterable[tuple[str, yaml.Node]]:
        """The key/value pairs, merge keys applied; notes the first duplicate key."""
        if id(node) not in self.flattened:
            self.flattened.add(id(node))
            seen: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _TAG + "merge":
                    continue
                key = self.key(key_node, path)
                line = key_node.start_mark.line + 1
                if key in seen and self.soft is None:
                    self.soft = ((*path, key), f"duplicate key (first at line {seen[key]})")
                seen.setdefault(key, line)
            try:
                self.loader.flatten_mapping(node)
            except yaml.YAMLError as error:
                problem = getattr(error, "problem", None) or "invalid merge key"
                raise _Hard(path, str(problem), node.start_mark.line + 1) from None
        return [(self.key(k, path), v) for k, v in node.value]


def _doc_number_at(text: str, line_index: int) -> int:
    """The 1-based document holding 0-based line ``line_index`` (for reader errors)."""
    content_before_first = False
    separators = 0
    for i, line in enumerate(text.splitlines()):
        if i > line_index:
            break
        if line.startswith("---") and line[3:4] in ("", " ", "\t"):
            separators += 1
        elif separators == 0 and line.strip() and not line.lstrip().startswith(("#", "%")):
            content_before_first = True
    return max(1, separators + (1 if content_before_first else 0))


def _yaml_error(source: str, document: int, error: Exception, text: str) -> ManifestError:
    """A one-line ManifestError from whatever PyYAML raised."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        problem = error.problem or error.context or "invalid YAML"
        if error.context and error.problem and error.context_mark is not None:
            problem += f" ({error.context} at line {error.context_mark.line + 1})"
        line = mark.line + 1
        return ManifestError(
            f"{source}: document {document}: line {line}, column {mark.column + 1}: {problem}",
            line=line,
        )
    if isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        document = _doc_number_at(text, line - 1)
        character = error.character
        shown = f"#x{character:04x}" if isinstance(character, int) else repr(character)
        return ManifestError(
            f"{source}: document {document}: line {line}: unacceptable character {shown}: "
            f"{error.reason}",
            line=line,
        )
    if isinstance(error, RecursionError):
        return ManifestError(f"{source}: document {document}: YAML nested too deeply")
    return ManifestError(f"{source}: document {document}: invalid YAML ({type(error).__name__})")


def _is_list_kind(data: Any) -> bool:
    """``kind: List`` (or ``WarehouseList``...), which kubectl unpacks into its items."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if not isinstance(kind, str):
        return False
    return kind == "List" or (kind.endswith("List") and kind[:-4] in KIND_TABLE)


def parse_manifests(
    text: str, source: str, default_namespace: str | None = None, *, strict: bool = False
) -> list[Resource]:
    """Every object of a multi-document YAML text, checked; all-or-nothing.

    ``strict`` refuses unknown fields inside ``spec.subscriptions`` (kubectl's
    ``--validate=strict``); otherwise they are kept with a warning.
    """
    _check_flow_depth(text, source)
    resources: list[Resource] = []
    document = 1
    loader: _Loader | None = None
    try:
        while True:
            try:  # only PyYAML's own failures here: reader, scanner, parser, recursion
                if loader is None:
                    loader = _Loader(text)
                if not loader.check_node():
                    break
                node = loader.get_node()
            except Exception as error:
                raise _yaml_error(source, document, error, text) from None
            resources.extend(_document(loader, node, source, document, default_namespace, strict))
            document += 1
    finally:
        if loader is not None:
            loader.dispose()
    return resources


def _check_flow_depth(text: str, source: str) -> None:
    """Refuse nesting past MAX_DEPTH before libyaml composes it (event by event, no recursion).

    Only texts with enough ``[`` and ``{`` to nest dangerously deep pay for this pass;
    YAML errors are left to the real parse, which words them.
    """
    if text.count("[") + text.count("{") <= FLOW_OPENERS_CHECKED:
        return
    depth = 0
    document = 0
    loader = _Loader(text)
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.DocumentStartEvent):
                document += 1
            elif isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark else None
                    raise ManifestError(
                        f"{source}: document {document}: nested more than {MAX_DEPTH} "
                        f"levels deep" + (f" (line {line})" if line else ""),
                        line=line,
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return
    finally:
        loader.dispose()


def _document(
    loader: _Loader,
    node: yaml.Node | None,
    source: str,
    document: int,
    default_namespace: str | None,
    strict: bool,
) -> list[Resource]:
    """The objects of one document (none if empty, several for a List)."""
    where = f"{source}: document {document}"
    if node is None:
        return []
    converter = _Converter(loader)
    try:
        data = converter.convert(node, ())
    except _Hard as hard:
        text = fmt_path(hard.path)
        raise ManifestError(
            f"{where}: " + (f"{text}: " if text else "") + f"{hard.problem} (line {hard.line})",
            path=text,
            line=hard.line,
        ) from None
    if data is None:
        return []
    tokens, soft = converter.tokens, converter.soft
    if not _is_list_kind(data):
        return [validate(data, Ctx(where, tokens, (), strict), default_namespace, soft)]
    list_ctx = Ctx(where, tokens, ())
    if soft is not None:
        list_ctx.fail(*soft)
    items = data.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        list_ctx.fail(("items",), f"must be a list, got {list_ctx.got(('items',), items)}")
    out = []
    for i, item in enumerate(items):
        ctx = Ctx(f"{where}, items[{i}]", tokens, ("items", i), strict)
        if _is_list_kind(item):
            ctx.fail((), "a List cannot contain another List")
        out.append(validate(item, ctx, default_namespace, None))
    return out
