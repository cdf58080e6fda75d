"""What the commands share: error kinds and exit codes, common flags, reading and printing."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import orjson
import yaml

from kargo_bitbucket.config import DEFAULT_SYSTEM_NAMESPACE, default_state, env
from kargo_bitbucket.core.manifests import (
    ACCEPTED_KINDS,
    ManifestError,
    Resource,
    UnknownFieldError,
    UnknownKindError,
    canonical_kind,
    parse_documents,
)
from kargo_bitbucket.core.text import http_url_problem, json_c1_escaped

if TYPE_CHECKING:
    from lightkube import AsyncClient

T = TypeVar("T")

FAILURE = 1
USAGE_ERROR = 2
ERRORS_SHOWN = 20  # invalid documents listed one per line; past them, one line counts the rest
SECONDS_FORM = "a number of seconds above 0 and at most 86400, e.g. 10 or 2.5"
OUTPUT_HELP = "output format (default table)"
KIND_HELP = f"object kind: {ACCEPTED_KINDS}"


class UsageError(Exception):
    """Bad input from the user: one line on stderr (one per problem, for several), exit 2."""

    def __init__(self, message: str, *more: str) -> None:
        super().__init__(message)
        self.lines = (message, *more)


class Failure(Exception):
    """A runtime failure (unreachable server, refusing API): one line on stderr, exit 1."""


def fail(message: str, code: int, *more: str) -> NoReturn:
    """Print a ``kargo-bitbucket: ...`` line on stderr for ``message`` and each of ``more``,
    and exit with ``code``."""
    for line in (message, *more):
        print(f"kargo-bitbucket: {line}", file=sys.stderr)
    sys.exit(code)


class CommandParser(argparse.ArgumentParser):
    """A command's parser: unknown arguments are its own usage error, not the top level's."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def state_flag(parser: argparse.ArgumentParser) -> None:
    """``--state FILE``: the embedded store's SQLite file."""
    parser.add_argument(
        "--state",
        type=Path,
        default=default_state(),
        metavar="FILE",
        help="state file (env KARGO_BITBUCKET_STATE; default .kargo-bitbucket/state.db)",
    )


def system_namespace_flag(parser: argparse.ArgumentParser) -> None:
    """``--system-namespace``: where the ClusterConfig's receiver Secrets live."""
    parser.add_argument(
        "--system-namespace",
        default=env("SYSTEM_NAMESPACE", DEFAULT_SYSTEM_NAMESPACE),
        help=f"namespace of the ClusterConfig's Secrets (default {DEFAULT_SYSTEM_NAMESPACE})",
    )


def kubernetes_flags(parser: argparse.ArgumentParser) -> None:
    """``--kubernetes``, ``--kubeconfig``, ``--context``."""
    parser.add_argument(
        "--kubernetes", action="store_true", help="use the Kubernetes API instead of the state file"
    )
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG"),
        metavar="FILE",
        help="kubeconfig file (default $KUBECONFIG, which must name one file; without it, the"
        " in-cluster service account, else ~/.kube/config)",
    )
    parser.add_argument(
        "--context", metavar="NAME", help="kubeconfig context to use (default: its current one)"
    )


def files_flag(parser: argparse.ArgumentParser, what: str, *, required: bool = False) -> None:
    """``-f/--filename PATH`` (repeatable): a file, a directory of *.yaml/*.yml, or - for stdin."""
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        required=required,
        default=None if required else [],
        metavar="PATH",
        help=f"{what} (file, directory of *.yaml/*.yml, or - for stdin; repeatable)",
    )


def validate_flag(parser: argparse.ArgumentParser) -> None:
    """``--validate strict|warn``: how unknown fields inside ``spec.subscriptions`` are met."""
    parser.add_argument(
        "--validate",
        choices=["strict", "warn"],
        default="strict",
        help="unknown fields inside spec.subscriptions (a misspelled branch: widens what a "
        "Warehouse matches): strict rejects the manifest (default), warn keeps them with a "
        "warning; unknown fields elsewhere are always kept with a warning",
    )


def connect(args: argparse.Namespace) -> AsyncClient:
    """A client for ``--kubeconfig``/``--context``; a bad configuration is a usage error."""
    from kargo_bitbucket.store.kubernetes import KubernetesConfigError
    from kargo_bitbucket.store.kubernetes import connect as kube_connect

    try:
        return kube_connect(args.kubeconfig, args.context)
    except KubernetesConfigError as error:
        raise UsageError(str(error)) from error


def from_cluster(load: Coroutine[Any, Any, T]) -> T:
    """Run a one-shot read of the cluster; an unreachable or refusing API is a Failure."""
    import httpx2
    from lightkube import ApiError

    try:
        return asyncio.run(load)
    except (ApiError, httpx2.HTTPError) as error:
        raise _api_failure(error) from error


def _api_failure(error: Exception) -> Failure:
    """One line for a failed read of the cluster: the request, with the API server's own
    reason when it gives one (a 403's names the user and the verb refused); a Kargo kind the
    server does not serve (a plain 404, which httpx words in two lines) names its CRD and
    what to do."""
    import httpx2
    from lightkube import ApiError

    if not isinstance(error, httpx2.HTTPStatusError):
        return Failure(f"cannot read from the Kubernetes API: {error}")
    request, code = error.request, error.response.status_code
    asked = f"HTTP {code} for {request.method} {request.url.path}"
    if code == 404 and request.url.path.startswith("/apis/kargo.akuity.io/"):
        crd = f"{request.url.path.rstrip('/').rsplit('/', 1)[-1]}.kargo.akuity.io"
        return Failure(
            f"cannot read from the Kubernetes API: it does not serve {crd} ({asked}): install "
            f"Kargo, in a version with ProjectConfig and ClusterConfig (kubectl get crd {crd})"
        )
    if isinstance(error, ApiError) and (reason := " ".join((error.status.message or "").split())):
        asked = f"{reason} ({asked})"
    return Failure(f"cannot read from the Kubernetes API: {asked}")


def http_url(flag: str, url: str) -> str:
    """``url`` if it is an http(s) URL with a host, else a usage error naming ``flag``."""
    if problem := http_url_problem(url):
        raise UsageError(f"{flag} {url!r}: {problem}")
    return url


def pushed_refs(refs: list[str]) -> list[str]:
    """The ``--ref`` values, else a usage error when one is blank."""
    if any(not ref.strip() for ref in refs):
        raise UsageError("--ref must not be empty")
    return refs


def kind(text: str) -> str:
    """The canonical kind of a KIND argument, or a usage error listing the accepted ones."""
    try:
        return canonical_kind(text)
    except UnknownKindError as error:
        raise UsageError(str(error)) from error


def qualified(namespace: str, name: str) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects."""
    return f"{namespace}/{name}" if namespace else name


def print_document(document: Any, output: str) -> None:
    """Print ``document`` as indented JSON or as YAML; either escapes the control
    characters a sender wrote (YAML by itself, JSON its C1 ones here)."""
    if output == "json":
        rendered = json_c1_escaped(orjson.dumps(document, option=orjson.OPT_INDENT_2))
        sys.stdout.write(rendered.decode() + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False))


def load_manifests(paths: Sequence[str], validate: str = "warn") -> list[Resource]:
    """Read and check every document of every path; nothing is returned unless all are valid.

    Every path is read first (one that cannot be is the usage error, alone); then every
    invalid document of every file is a line of one usage error (``_invalid_documents``).
    """
    sources = [source for path in paths for source in _read_sources(path)]
    resources: list[Resource] = []
    errors: list[ManifestError] = []
    for source, text in sources:
        found, invalid = parse_documents(text, source, strict=validate == "strict")
        resources.extend(found)
        errors.extend(invalid)
    if errors:
        raise _invalid_documents(errors)
    return resources


def _invalid_documents(errors: Sequence[ManifestError]) -> UsageError:
    """One line per invalid document, at most ERRORS_SHOWN and then a count of the rest;
    the way to keep unknown fields is said once: on the line of the only error, else on a
    line of its own at the end."""
    lines = [str(error) for error in errors[:ERRORS_SHOWN]]
    if len(errors) > ERRORS_SHOWN:
        lines.append(f"... and {len(errors) - ERRORS_SHOWN} more invalid documents")
    if any(isinstance(error, UnknownFieldError) for error in errors):
        if len(errors) == 1:
            lines[0] += "; --validate=warn keeps it"
        else:
            lines.append(
                "--validate=warn keeps unknown fields inside spec.subscriptions, with a warning"
            )
    return UsageError(*lines)


def _read_sources(path: str) -> list[tuple[str, str]]:
    if path == "-":
        return [("<stdin>", sys.stdin.read())]
    target = Path(path)
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise UsageError(
                f"{path}: no *.yaml or *.yml files in this directory: no objects to apply"
            )
    elif target.exists():
        files = [target]
    else:
        raise UsageError(f"{path}: no such file or directory")
    sources = []
    for file in files:
        try:
            sources.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"{file}: cannot read: {error}") from error
    return sources
