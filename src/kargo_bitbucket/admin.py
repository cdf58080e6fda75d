"""The admin listener: Prometheus metrics and a plain HTML page of recent deliveries."""

from __future__ import annotations

from html import escape

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from kargo_bitbucket.core.text import json_c1_escaped, printable
from kargo_bitbucket.history import DeliveryRecord, to_json
from kargo_bitbucket.metrics import Metrics
from kargo_bitbucket.store.base import Store

PAGE_LIMIT = 200
MAX_LIMIT = 10_000
# Fixed column widths: at 1280 px the reasons column keeps about 40% of the width
# instead of being pushed off-screen by long repository URLs and delivery ids.
COLUMNS = "".join(
    f'<col style="width:{width}">'
    for width in ("7.5em", "10em", "9.5em", "7.5em", "15%", "9%", "8em", "auto")
)
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%;table-layout:fixed}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top;
overflow-wrap:break-word}
th{background:#f4f4f4;position:sticky;top:0}
.ok{color:#176f2c}.bad{color:#b00020}.dim{color:#777}
td.reasons{font-size:13px} ul{margin:0;padding-left:1.1em}
code{font-size:12px}
"""


def _filters(request: Request) -> tuple[str | None, str | None]:
    """The ``namespace`` and ``receiver`` the query string asks for (None: any)."""
    params = request.query_params
    return params.get("namespace") or None, params.get("receiver") or None


async def _selected(store: Store, request: Request) -> list[DeliveryRecord]:
    """The deliveries the query string asks for: ``_filters``, ``limit`` (at most
    ``MAX_LIMIT``) and ``id`` (a delivery id or its start, found in the whole history)."""
    namespace, receiver = _filters(request)
    delivery = request.query_params.get("id") or None
    try:
        limit = max(1, min(int(request.query_params.get("limit", PAGE_LIMIT)), MAX_LIMIT))
    except ValueError:
        limit = PAGE_LIMIT
    return await store.deliveries(namespace, receiver, limit, delivery)


def render(records: list[DeliveryRecord], namespace: str | None, receiver: str | None) -> str:
    """The deliveries page: one row per delivery, its candidates and reasons inside."""
    shown = " ".join(
        f"{label} {_shown(value)}"
        for label, value in (("namespace", namespace), ("receiver", receiver))
        if value
    )
    rows = "".join(_row(record) for record in records) or (
        '<tr><td colspan="8" class="dim">No deliveries recorded yet.</td></tr>'
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>kargo-bitbucket deliveries</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>Recent deliveries</h1><p class=dim>{len(records)} shown, newest first"
        f"{' — ' + shown if shown else ''}. Filter with <code>?namespace=</code>, "
        "<code>?receiver=</code>, <code>?id=</code> (a delivery id or its start), "
        "<code>?limit=</code>.</p>"
        f"<table><colgroup>{COLUMNS}</colgroup>"
        "<thead><tr><th>Time (UTC)</th><th>Receiver</th><th>Event</th>"
        "<th>Delivery id</th><th>Repository / PR</th><th>Refs</th><th>Answer</th>"
        "<th>Candidates</th></tr></thead><tbody>"
        f"{rows}</tbody></table></body></html>"
    )


def _row(record: DeliveryRecord) -> str:
    good = 200 <= record.status < 300
    target = record.pr_url or ", ".join(record.repository)
    refs = (
        "refs unknown"
        if record.refs is None and record.repository
        else ", ".join(record.refs or [])
    )
    if record.omitted_refs:
        refs += f" and {record.omitted_refs} more"
    attempt = f" (attempt {_shown(record.attempt)})" if record.attempt else ""
    candidates = "".join(
        f"<li><span class={'ok' if c.outcome == 'refreshed' else 'dim'}>"
        f"{_shown(c.outcome)}</span> {_shown(c.kind)} "
        f"<b>{_shown(c.namespace + '/' + c.name if c.namespace else c.name)}</b>: "
        f"{_shown(c.reason)}</li>"
        for c in record.candidates
    )
    if record.omitted_candidates:
        candidates += f"<li class=dim>and {record.omitted_candidates} more</li>"
    detail = f"<br><span class=dim>{_shown(record.detail)}</span>" if record.detail else ""
    unsigned = " <span class=dim>(unsigned)</span>" if not record.signed else ""
    return (
        "<tr>"
        f"<td>{_shown(record.time.replace('T', ' ').rstrip('Z'))}</td>"
        f"<td>{_shown(record.receiver)}</td>"
        f"<td>{_shown(record.event)}</td>"
        f"<td><code>{_shown(record.delivery_id)}</code>{attempt}</td>"
        f"<td>{_shown(target)}</td>"
        f"<td>{_shown(refs)}</td>"
        f"<td class={'ok' if good else 'bad'}>{record.status} {_shown(record.message)}"
        f"{unsigned} <span class=dim>{record.duration_ms:.1f} ms</span>{detail}</td>"
        f"<td class=reasons>{'<ul>' + candidates + '</ul>' if candidates else '—'}</td>"
        "</tr>"
    )


def listing(records: list[DeliveryRecord]) -> bytes:
    """``/deliveries.json``: C1 controls a sender wrote escaped, as JSON escapes C0 ones."""
    return json_c1_escaped(to_json(records))


def _shown(text: str) -> str:
    """Text from a record or the query string for the page: control characters escaped
    (``\\x9b``) as ``kargo-bitbucket deliveries`` shows them, so that ``curl /deliveries``
    in a terminal cannot obey them; then HTML-escaped."""
    return escape(printable(text))


INDEX = (
    "<!doctype html><meta charset=utf-8><title>kargo-bitbucket</title>"
    f"<style>{STYLE}</style><h1>kargo-bitbucket</h1><ul>"
    "<li><a href=/deliveries>/deliveries</a>: recent deliveries and why each candidate was "
    "(not) refreshed (<a href=/deliveries.json>JSON</a>)</li>"
    "<li><a href=/metrics>/metrics</a>: Prometheus metrics</li></ul>"
)


def create_admin_app(store: Store, metrics: Metrics) -> Starlette:
    """``/`` (what is here), ``/metrics``, ``/deliveries`` (HTML) and ``/deliveries.json``."""

    async def index(request: Request) -> Response:
        return HTMLResponse(INDEX)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def deliveries_page(request: Request) -> Response:
        records = await _selected(store, request)
        return HTMLResponse(render(records, *_filters(request)))

    async def deliveries_json(request: Request) -> Response:
        return Response(listing(await _selected(store, request)), media_type="application/json")

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/deliveries", deliveries_page, methods=["GET"]),
            Route("/deliveries.json", deliveries_json, methods=["GET"]),
        ]
    )
