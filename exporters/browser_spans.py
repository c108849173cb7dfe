"""opentelemetry-js web instrumentation spans -> page views, performance and actions (pure).

Apps that follow the upstream browser README send spans, not events: `documentLoad`
(instrumentation-document-load; navigation timings as span events, absolute timestamps) is a page
view with its load performance, and a `click` span with `event_type`
(instrumentation-user-interaction) is a user action (DESIGN §5).
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

DOCUMENT_LOAD = "documentLoad"

# documentLoad span event -> the metric it ends (measured from fetchStart).
_LOAD_EVENTS = {
    "loadEventEnd": "page_load_time",
    "domContentLoadedEventEnd": "dom_content_loaded",
    "domInteractive": "time_to_interactive",
    "responseStart": "nav_ttfb",
    "firstContentfulPaint": "fcp",
}


def is_browser_span(name: str, attrs: dict[str, Any]) -> bool:
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

