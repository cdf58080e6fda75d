"""``kargo-bitbucket deliveries``: recent deliveries and why each candidate was (not) refreshed."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request

import msgspec
import orjson

from kargo_bitbucket.cli.common import (
    OUTPUT_HELP,
    Failure,
    UsageError,
    http_url,
    print_document,
    qualified,
    state_flag,
)
from kargo_bitbucket.core.text import printable
from kargo_bitbucket.history import MAX_HISTORY_SIZE, DeliveryRecord
from kargo_bitbucket.store.state_file import StateFile, StateFileError

DEFAULT_LIMIT = 20


def register(parser: argparse.ArgumentParser) -> None:
    """Add deliveries' arguments."""
    parser.add_argument(
        "-n", "--namespace", help="project namespace (cluster for the ClusterConfig's receivers)"
    )
    parser.add_argument("--receiver", metavar="NAME", help="receiver name")
    parser.add_argument(
        "--id",
        metavar="DELIVERY_ID",
        help="only the delivery (every attempt) with this id, as Bitbucket's request history "
        "shows it, or its first characters; searches the whole history",
    )
    parser.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"how many, newest first (a whole number above 0; default {DEFAULT_LIMIT})",
    )
    parser.add_argument(
        "-o", "--output", choices=["table", "json", "yaml"], default="table", help=OUTPUT_HELP
    )
    state_flag(parser)
    parser.add_argument(
        "--admin-url",
        metavar="URL",
        help="read a running server's history from its admin listener, "
        "e.g. http://127.0.0.1:9090 (Kubernetes mode keeps it per replica)",
    )
    parser.set_defaults(run=run)


ADMIN_PAGES = ("/deliveries.json", "/deliveries", "/metrics")
"""Pages of the admin listener a given --admin-url may end with (its base is what counts)."""


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_HISTORY_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {MAX_HISTORY_SIZE}, got {text!r}"
        )
    return value


def run(args: argparse.Namespace) -> int:
    """Print the newest deliveries (from the state file or a running server)."""
    if args.id == "":
        raise UsageError("--id: give a delivery id, or its first characters")
    wanted = args.limit + 1  # one more than shown, to say when there are more
    if args.admin_url:
        records = _fetch(args, wanted)  # the server looks through its whole history for --id
    else:
        try:
            state = StateFile(args.state, create=False)
        except StateFileError as error:
            hint = "--admin-url reads a running server's history"
            raise StateFileError(f"{error} ({hint})") from error
        try:
            records = state.deliveries(args.namespace, args.receiver, wanted, delivery_id=args.id)
        finally:
            state.close()
    more = len(records) > args.limit
    records = records[: args.limit]
    if args.output != "table":
        print_document(msgspec.to_builtins(records), args.output)
    elif records:
        for record in records:
            print(describe(record))
    else:
        print(f"No deliveries recorded{_matching(args)}.", file=sys.stderr)
    if more:
        find = "" if args.id else ", --id finds one delivery"
        print(
            f"(the newest {args.limit} shown; more are recorded: --limit N shows more{find})",
            file=sys.stderr,
        )
    return 0


def _matching(args: argparse.Namespace) -> str:
    """`` matching -n X, --receiver Y`` for the filters given, "" for none."""
    given = [
        f"{flag} {value}"
        for flag, value in (
            ("-n", args.namespace),
            ("--receiver", args.receiver),
            ("--id", args.id),
        )
        if value
    ]
    return f" matching {', '.join(given)}" if given else ""


def _fetch(args: argparse.Namespace, limit: int) -> list[DeliveryRecord]:
    query = urllib.parse.urlencode(
        {
            k: v
            for k, v in (
                ("namespace", args.namespace),
                ("receiver", args.receiver),
                ("limit", limit),
                ("id", args.id),
            )
            if v
        }
    )
    # serve prints its admin listener as ".../deliveries": take that, or a page of it as a
    # browser shows it (a query or fragment is the page's, not the listener's).
    parts = urllib.parse.urlsplit(http_url("--admin-url", args.admin_url))
    base = urllib.parse.urlunsplit(parts._replace(query="", fragment="")).rstrip("/")
    for page in ADMIN_PAGES:
        if base.endswith(page):
            base = base.removesuffix(page)
            break
    url = f"{base}/deliveries.json?{query}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            data = orjson.loads(response.read())
        return [DeliveryRecord.from_dict(item) for item in data]
    except (msgspec.ValidationError, TypeError) as error:
        raise Failure(f"{url} is not a list of deliveries: {error}") from error
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise Failure(f"cannot read {url}: {error.reason}") from error
        raise Failure(
            f"cannot read {url}: Not Found (not an admin listener: --admin-url takes the "
            "address serve prints after 'metrics and delivery history on', port 9090 in "
            "the chart, not the webhook port)"
        ) from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise Failure(f"cannot read {url}: {getattr(error, 'reason', error)}") from error


def describe(record: DeliveryRecord) -> str:
    """One delivery as a few indented lines, every payload-borne text escaped."""
    attempt = f" attempt {record.attempt}" if record.attempt and record.attempt != "1" else ""
    lines = [
        f"{record.time}  {record.receiver}  {record.event}  {record.delivery_id or '-'}{attempt}"
        f"  -> {record.status} {record.message} ({record.duration_ms:.1f} ms)"
        f"{'' if record.signed else '  unsigned'}"
    ]
    if record.detail:
        lines.append(f"  detail: {record.detail}")
    if record.pr_url:
        lines.append(f"  pull request: {record.pr_url}")
    elif record.repository:
        refs = ", ".join(record.refs) if record.refs is not None else "unknown (refresh all)"
        if record.omitted_refs:
            refs += f" and {record.omitted_refs} more"
        lines.append(f"  repository: {', '.join(record.repository)}")
        lines.append(f"  refs: {refs}")
    for c in record.candidates:
        lines.append(f"  {c.outcome:<13} {c.kind} {qualified(c.namespace, c.name)}: {c.reason}")
    if record.omitted_candidates:
        lines.append(f"  and {record.omitted_candidates} more candidates")
    if record.status == 200 and not record.candidates:
        if record.pr_url:
            lines.append(
                "  no Running Promotion in the receiver's scope waits on this pull request"
                " in a git-wait-for-pr step"
            )
        elif record.repository:
            lines.append("  no Warehouse in the receiver's scope subscribes to this repository")
    return "\n".join(printable(line) for line in lines)
