"""``kargo-bitbucket send``: build (or read) a delivery, sign it, POST it, print the answer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kargo_bitbucket.cli.common import (
    FAILURE,
    Failure,
    UsageError,
    http_url,
    pushed_refs,
    state_flag,
)
from kargo_bitbucket.config import MAX_SECONDS, env, positive_seconds
from kargo_bitbucket.core.payloads import PayloadArgumentError, build_payload
from kargo_bitbucket.core.text import plain
from kargo_bitbucket.sender import UnreachableError, is_cloud_event, send
from kargo_bitbucket.store.index import decode_secret_data
from kargo_bitbucket.store.state_file import StateFile, StateFileError

_FLAGS = {"repo": "--repo", "pr": "--pr"}
# What to do about the answers a user's own mistake gets, rather than leave the bare body.
_HINTS = {
    401: "the receiver's Secret holds another secret: pass its value with --secret, or "
    "--secret-from NAMESPACE/NAME to read it from the state file",
    404: "no receiver at this URL: compare it with `kargo-bitbucket urls` (a new secret "
    "gives a receiver a new URL)",
}


def register(parser: argparse.ArgumentParser) -> None:
    """Add send's arguments."""
    parser.add_argument("--url", required=True, help="receiver URL (http:// or https://)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--secret", help="the webhook secret (env KARGO_BITBUCKET_SECRET)", default=env("SECRET")
    )
    who.add_argument(
        "--secret-from",
        metavar="NAMESPACE/NAME",
        help="read the secret from a Secret in the state file",
    )
    parser.add_argument(
        "--event",
        required=True,
        metavar="KEY",
        help="X-Event-Key, e.g. repo:push, repo:refs_changed, pr:merged",
    )
    parser.add_argument("--repo", metavar="URL", help="repository URL (push events)")
    parser.add_argument(
        "--ref",
        action="append",
        default=[],
        metavar="REF",
        help="branch name, or a full refs/heads/… or refs/tags/… ref (a tag needs refs/tags/; "
        "repeatable; default main, i.e. refs/heads/main)",
    )
    parser.add_argument("--pr", metavar="URL", help="pull request URL (PR events)")
    parser.add_argument("--payload", metavar="FILE", help="send this body instead of building one")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=15.0,
        metavar="SECONDS",
        help="seconds to wait for an answer (default 15)",
    )
    state_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 on a 2xx answer, 1 on any other answer or none."""
    http_url("--url", args.url)
    if not plain(args.event):
        raise UsageError(f"--event {args.event!r}: an event key is ASCII without spaces")
    secret = _secret(args)
    body = _body(args)
    cloud = is_cloud_event(args.event, args.repo or args.pr)
    try:
        reply = send(args.url, args.event, body, secret, cloud=cloud, timeout=args.timeout)
    except UnreachableError as error:
        raise Failure(str(error)) from error
    print(reply.status)
    print(reply.text)
    if (hint := _HINTS.get(reply.status)) is not None:
        print(f"kargo-bitbucket: {hint}", file=sys.stderr)
    return 0 if reply.ok else FAILURE


def _body(args: argparse.Namespace) -> bytes:
    if args.payload:
        try:
            return Path(args.payload).read_bytes()
        except OSError as error:
            raise UsageError(f"--payload {args.payload}: {error.strerror}") from error
    refs = pushed_refs(args.ref)
    try:
        return build_payload(args.event, repo=args.repo, refs=refs or None, pr=args.pr)
    except PayloadArgumentError as error:
        raise UsageError(f"event {error.event} needs {_FLAGS[error.needs]}") from error
    except ValueError as error:
        raise UsageError(f"--repo/--pr: {error}") from error


def _secret(args: argparse.Namespace) -> bytes:
    if args.secret is not None:
        return str(args.secret).encode()
    if args.secret_from is None:
        raise UsageError("send needs --secret, --secret-from or KARGO_BITBUCKET_SECRET")
    namespace, _, name = str(args.secret_from).partition("/")
    if not name:
        raise UsageError("--secret-from takes NAMESPACE/NAME")
    try:
        state = StateFile(args.state, create=False)
    except StateFileError as error:
        # In a cluster the Secret is the API server's: hand its value over instead.
        raise StateFileError(
            f"{error} (--secret-from reads the embedded state file; in Kubernetes pass "
            f'--secret "$(kubectl -n {namespace} get secret {name} -o '
            "jsonpath='{.data.secret}' | base64 -d)\")"
        ) from error
    try:
        found = state.get("Secret", namespace, name)
    finally:
        state.close()
    if not found:
        raise UsageError(f"Secret {namespace}/{name} not found in {args.state}")
    value = decode_secret_data(found[0]).get("secret")
    if value is None:
        raise UsageError(f"Secret {namespace}/{name} has no key 'secret'")
    return value


def _seconds(text: str) -> float:
    try:
        return positive_seconds(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_SECONDS:g}, got {text!r}"
        ) from None
