"""opentelemetry-js web instrumentation spans -> page views, performance and actions (pure).

Apps that follow the upstream browser README send spans, not events: `documentLoad`
(instrumentation-document-load; navigation timings as span events, absolute timestamps) is a page
view with its load performance, its child `documentFetch` carries the document's own network
timings (time to first byte), each `resourceFetch` child is one entry of the page's resource load
times, and a `click` span with `event_type` (instrumentation-user-interaction) is a user action
(DESIGN §5). The three document-load spans share one trace: its id is the page view id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from otel_bridge import conventions as conv
from otel_bridge.exporters import analytics as an
from otel_bridge.exporters.analytics import SlugRule
from otel_bridge.exporters.attributes import as_str
from otel_bridge.exporters.context import Identity, ResourceContext
from otel_bridge.exporters.rows import ActionRow, PageViewRow, PerfEventRow, row_id, timestamp
from otel_bridge.privacy import scrub_text

DOCUMENT_LOAD = "documentLoad"
DOCUMENT_FETCH = "documentFetch"
RESOURCE_FETCH = "resourceFetch"
SPAN_NAMES = frozenset({DOCUMENT_LOAD, DOCUMENT_FETCH, RESOURCE_FETCH, "click"})

# documentLoad span event -> the metric it ends (measured from fetchStart).
_LOAD_EVENTS = {
    "loadEventEnd": "page_load_time",
    "domContentLoadedEventEnd": "dom_content_loaded",
    "domInteractive": "time_to_interactive",
    "responseStart": "nav_ttfb",
    "firstContentfulPaint": "fcp",
}


def is_browser_span(name: str, attrs: dict[str, Any]) -> bool:
    if name in (DOCUMENT_FETCH, RESOURCE_FETCH):
        return "url.full" in attrs or "http.url" in attrs
    return name == DOCUMENT_LOAD or (name == "click" and "event_type" in attrs)


def _context(pb: Any, attrs: dict[str, Any], ident: Identity, res: ResourceContext) -> an.EventContext:
    return an.EventContext(attrs, res, ident, pb.start_time_unix_nano, pb.trace_id + pb.span_id,
                           pb.trace_id.hex(), pb.span_id.hex())  # fmt: skip


def document_load_rows(
    pb: Any, attrs: dict[str, Any], ident: Identity, res: ResourceContext, rules: Sequence[SlugRule]
) -> tuple[PageViewRow, list[PerfEventRow]]:
    """The page view (its id: the page view id, else the load's trace) and its load timings."""
    if ident.page_view_id is None:
        ident.page_view_id = pb.trace_id.hex()  # one documentLoad trace per page load
    ev = _context(pb, attrs, ident, res)
    view = an.page_view_row(ev, rules)
    times = {event.name: event.time_unix_nano for event in pb.events}
    start = times.get("fetchStart", pb.start_time_unix_nano)
    perf = [
        PerfEventRow(
            row_id(pb.start_time_unix_nano, ev.key, metric.encode()), ident.page_view_id,
            ident.page_view_id, view.session_id, view.page_slug, view.page_path, ident.user_id,
            ident.user_role, DOCUMENT_LOAD, metric, (times[event] - start) / 1e6, None,
            timestamp(pb.start_time_unix_nano), res.service_name, res.service_version, res.environment,
        )  # fmt: skip
        for event, metric in _LOAD_EVENTS.items()
        if event in times and times[event] >= start
    ]
    return view, perf


def click_action_row(
    pb: Any, attrs: dict[str, Any], ident: Identity, res: ResourceContext, rules: Sequence[SlugRule]
) -> ActionRow:
    ev = _context(pb, attrs, ident, res)
    attrs.setdefault(conv.ACTION_TYPE, as_str(attrs.get("event_type")) or "click")
    return an.action_row(ev, "click", rules)



def _ms(times: dict[str, int], start: str, end: str) -> float | None:
    """Milliseconds between two timing events; None when one is missing or was never reached
    (the browser reports 0, which the instrumentation turns into a time before fetchStart)."""
    a, b, origin = times.get(start), times.get(end), times.get("fetchStart", 0)
    if a is None or b is None or a < origin or b < a:
        return None
    return round((b - a) / 1e6, 3)


def fetch_rows(
    pb: Any, attrs: dict[str, Any], ident: Identity, res: ResourceContext, page: dict[str, Any],
    rules: Sequence[SlugRule],
) -> list[PerfEventRow]:
    """`documentFetch` -> the page's time to first byte; `resourceFetch` -> one resource timing.
    `page` holds the attributes of the trace's `documentLoad` (url.full), when it came along."""
    if ident.page_view_id is None:
        ident.page_view_id = pb.trace_id.hex()
    times = {event.name: event.time_unix_nano for event in pb.events}
    # Without its documentLoad in the same request the page is unknown for now; the stored
    # frontend row takes the page view's slug once that arrives (same page view id).
    path = an.page_location(page)[0] if page else ""
    slug = an.page_slug(path, as_str(page.get(conv.PAGE_SLUG)), rules) if path else "unknown"

    def row(metric: str, value: float | None, resource: Any = None) -> PerfEventRow:
        return PerfEventRow(
            row_id(pb.start_time_unix_nano, pb.trace_id + pb.span_id, metric.encode()), ident.page_view_id,
            ident.page_view_id, ident.session_id, slug, path or None, ident.user_id, ident.user_role, pb.name,
            metric, value, resource, timestamp(pb.start_time_unix_nano), res.service_name, res.service_version,
            res.environment,
        )  # fmt: skip

    if pb.name == DOCUMENT_FETCH:
        ttfb = _ms(times, "fetchStart", "responseStart")
        return [row("nav_ttfb", ttfb)] if ttfb is not None else []
    duration = round((pb.end_time_unix_nano - pb.start_time_unix_nano) / 1e6, 3)
    resource = {
        "url": scrub_text(as_str(attrs.get("url.full") or attrs.get("http.url"))), "type": None,
        "transfer_size": None, "encoded_size": attrs.get("http.response_content_length"),
        "decoded_size": attrs.get("http.response_content_length_uncompressed"), "duration_ms": duration,
        "dns_ms": _ms(times, "domainLookupStart", "domainLookupEnd"), "tcp_ms": _ms(times, "connectStart", "connectEnd"),
        "tls_ms": _ms(times, "secureConnectionStart", "connectEnd"), "ttfb_ms": _ms(times, "requestStart", "responseStart"),
        "download_ms": _ms(times, "responseStart", "responseEnd"),
    }  # fmt: skip
    return [row("resource", duration, resource)]
