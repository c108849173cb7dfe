"""Web vitals and navigation/resource timings (log records) -> performance events (pure).

One page view's performance arrives piecemeal over its life (LCP and CLS are final only when the
page is hidden), so each event is kept as a row and the page view's
`frontend_performance_metrics` row is recomputed from them by the writer. Both shapes of
`browser.web_vital` are read: semconv 1.44 attributes and the older body map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from otel_bridge import conventions as conv
from otel_bridge.exporters.analytics import SlugRule, page_location, page_slug
from otel_bridge.exporters.attributes import Attributes, as_float, as_str
from otel_bridge.exporters.rows import PerfEventRow, row_id, timestamp
from otel_bridge.privacy import scrub_text

PERF_EVENTS = frozenset({"browser.web_vital", "browser.navigation_timing", "browser.resource_timing"})
WEB_VITALS = frozenset({"lcp", "fcp", "cls", "inp", "ttfb", "fid"})

# Navigation timing field (ms from the navigation's start) -> the metric it gives.
_NAVIGATION_FIELDS = {
    "load_event_end": "page_load_time",
    "dom_content_loaded_event_end": "dom_content_loaded",
    "dom_interactive": "time_to_interactive",
    "response_start": "nav_ttfb",
}
# otel-browser's current prefixes first, then the older `navigation.` one.
_NAVIGATION_PREFIXES = ("browser.navigation_timing.", "browser.resource_timing.", "navigation.")
_RESOURCE_PREFIXES = ("browser.resource_timing.", "resource.")


# Timings are stored as INTEGER milliseconds: anything beyond a day is noise, and an absurd value
# must not fail the request's transaction.
_MAX_MS = 86_400_000.0


def _number(value: Any) -> float | None:
    number = as_float(value)
    if number is None or not math.isfinite(number):
        return None
    return max(-_MAX_MS, min(_MAX_MS, number))


def _field(attrs: Attributes, prefixes: Sequence[str], name: str) -> float | None:
    for prefix in prefixes:
        value = _number(attrs.get(prefix + name))
        if value is not None:
            return value
    return None


def _resource(attrs: Attributes) -> dict[str, Any]:
    """The seed's network fields for one resource, from PerformanceResourceTiming values."""

    def f(name: str) -> float | None:
        return _field(attrs, _RESOURCE_PREFIXES, name)

    def span(start: str, end: str) -> float | None:
        a, b = f(start), f(end)
        return round(b - a, 3) if a is not None and b is not None and b >= a else None

    secure = f("secure_connection_start")
    return {
        "url": scrub_text(as_str(attrs.get("url.full") or attrs.get("browser.resource_timing.name"))),
        "type": as_str(attrs.get("browser.resource_timing.initiator_type") or attrs.get("resource.initiator_type")),
        "transfer_size": f("transfer_size"), "encoded_size": f("encoded_body_size"),
        "decoded_size": f("decoded_body_size"), "duration_ms": f("duration"),
        "dns_ms": span("domain_lookup_start", "domain_lookup_end"),
        "tcp_ms": span("connect_start", "connect_end"),
        "tls_ms": span("secure_connection_start", "connect_end") if secure else None,
        "ttfb_ms": span("request_start", "response_start"),
        "download_ms": span("response_start", "response_end"),
    }  # fmt: skip


def _vital(attrs: Attributes, body: Any) -> tuple[str | None, float | None]:
    name = as_str(attrs.get("browser.web_vital.name"))
    value = _number(attrs.get("browser.web_vital.value"))
    if name is None and isinstance(body, dict):  # before semconv 1.44: a body map
        name, value = as_str(body.get("name")), _number(body.get("value"))
    return (name.lower() if name else None), value


def perf_rows(
    name: str, attrs: Attributes, body: Any, ident: Any, res: Any, time_unix_nano: int, key: bytes,
    rules: Sequence[SlugRule],
) -> list[PerfEventRow]:
    """The performance events of one log record (a navigation timing gives several)."""
    # On a resource timing, url.full is the resource; the page is browser.document.url.full.
    if name == "browser.resource_timing":
        page_attrs = {"url.full": attrs.get("browser.document.url.full")}
    else:
        page_attrs = {"url.full": attrs.get("browser.document.url.full") or attrs.get("url.full"),
                      "url.path": attrs.get("url.path")}  # fmt: skip
    path, _ = page_location(page_attrs)
    slug = page_slug(path, as_str(attrs.get(conv.PAGE_SLUG)), rules)
    perf_key = ident.page_view_id or f"{ident.session_id}|{path}"

    def row(metric: str, value: float | None, resource: Any = None) -> PerfEventRow:
        return PerfEventRow(
            row_id(time_unix_nano, key, metric.encode()), perf_key, ident.page_view_id,
            ident.session_id, slug, path, ident.user_id, ident.user_role, name, metric, value,
            resource, timestamp(time_unix_nano), res.service_name, res.service_version, res.environment,
        )  # fmt: skip

    if name == "browser.web_vital":
        metric, value = _vital(attrs, body)
        return [row(metric, value)] if metric in WEB_VITALS and value is not None else []
    if name == "browser.navigation_timing":
        rows = []
        for field_name, metric in _NAVIGATION_FIELDS.items():
            value = _field(attrs, _NAVIGATION_PREFIXES, field_name)
            if value is not None:
                rows.append(row(metric, value))
        js = _number(attrs.get("otel_bridge.page.javascript_execution_time_ms"))
        if js is not None:
            rows.append(row("javascript_execution_time", js))
        return rows
    return [row("resource", _field(attrs, _RESOURCE_PREFIXES, "duration"), _resource(attrs))]
