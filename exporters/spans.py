"""OTLP spans -> rows of the APM and error tables (pure: protobuf in, rows out, no I/O).

The mapping contract is DESIGN §5: SERVER spans with an HTTP method become
`api_performance_metrics` (and `api_error_logs` when they failed), CLIENT spans with a database
system become `database_performance_metrics` (+ `query_patterns`), exception events become
`error_logs`. Stable semconv names are read first, then the old ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from otel_bridge import conventions as conv
from otel_bridge.exporters import analytics as an
from otel_bridge.exporters import browser_spans as bs
from otel_bridge.exporters import failures as fl
from otel_bridge.exporters import fingerprint as fp
from otel_bridge.exporters import sql_normalize as sqln
from otel_bridge.exporters.attributes import (
    Attributes,
    as_int,
    as_str,
    decode_attributes,
    first,
    prefixed,
)
from otel_bridge.exporters.context import (
    IDENTITY_KEYS,
    Identity,
    IpHash,
    MappingSettings,
    ResourceContext,
    client_ip,
    has_identity,
    is_browser_scope,
    resource_context,
    user_agent,
)
from otel_bridge.exporters.http_route import endpoint_path
from otel_bridge.exporters.rejections import Rejections
from otel_bridge.exporters.rows import (
    ActionRow,
    ApiErrorRow,
    ApiPerformanceRow,
    DbPerformanceRow,
    ErrorRow,
    PageViewRow,
    PerfEventRow,
    QueryPatternRow,
    row_id,
    timestamp,
)
from otel_bridge.privacy import cap, scrub, scrub_headers, scrub_text

SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_CODE_ERROR = 2

_BROWSER_SPAN_NAMES = bs.SPAN_NAMES
_ASGI_INTERNAL_SUFFIXES = (" http send", " http receive", " websocket send", " websocket receive")
_IDENTITY_AND_CRUMBS = frozenset((*IDENTITY_KEYS, "otel_bridge.breadcrumbs"))
# Every attribute the SERVER and CLIENT rows read; the rest is decoded only for error rows.
_ROW_KEYS = _IDENTITY_AND_CRUMBS | frozenset(
    {"http.request.method", "http.method", "http.route", "url.path", "http.target",
     "http.response.status_code", "http.status_code", "http.request.body.size",
     "http.request_content_length", "http.response.body.size", "http.response_content_length",
     "client.address", "http.client_ip", "net.peer.ip", "user_agent.original", "http.user_agent",
     "db.system.name", "db.system", "db.query.text", "db.statement", "db.operation.name",
     "db.operation", "db.collection.name", "db.sql.table", "db.response.returned_rows",
     "db.namespace", "db.name", conv.DB_CONNECTION_POOL_SIZE, "http.request.header.content-length", "http.request.header.content_length",
     "http.response.header.content-length", "http.response.header.content_length"}
)  # fmt: skip
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)

@dataclass
class TraceRows(Rejections):
    """Everything one ExportTraceServiceRequest maps to, plus the bookkeeping for its response."""

    items = "spans"

    api_performance: list[ApiPerformanceRow] = field(default_factory=list)
    api_errors: list[ApiErrorRow] = field(default_factory=list)
    db_performance: list[DbPerformanceRow] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)
    page_views: list[PageViewRow] = field(default_factory=list)  # opentelemetry-js documentLoad
    actions: list[ActionRow] = field(default_factory=list)  # opentelemetry-js user interaction
    perf_events: list[PerfEventRow] = field(default_factory=list)
    session_meta: dict[str, an.SessionMeta] = field(default_factory=dict)
    query_patterns: dict[str, QueryPatternRow] = field(default_factory=dict)
    pattern_last_seen: dict[str, datetime] = field(default_factory=dict)  # folded in at the end
    spans: int = 0
    ignored: int = 0




    def event_rows(self) -> list[list[Any]]:
        return [self.api_performance, self.api_errors, self.db_performance, self.errors,
                self.page_views, self.actions, self.perf_events]

    def perf_keys(self) -> list[str]:
        return an.perf_keys(self.page_views, self.perf_events)


class _Span:
    """One valid span with its decoded attributes and what the mapping derived from them."""

    __slots__ = ("pb", "attrs", "res", "trace_id", "span_id", "parent_span_id", "events",
                 "method", "db_system", "category", "_all_attrs")  # fmt: skip

    def __init__(self, pb: Any, attrs: Attributes, res: ResourceContext, browser: bool) -> None:
        self.pb = pb
        self.attrs = attrs
        self.res = res
        self.trace_id: bytes = pb.trace_id
        self.span_id: bytes = pb.span_id
        self.parent_span_id: bytes = pb.parent_span_id
        self.events = pb.events
        self._all_attrs: Attributes | None = None
        get = attrs.get
        self.method = as_str(get("http.request.method") or get("http.method"))
        self.db_system = as_str(get("db.system.name") or get("db.system"))
        if pb.kind == SPAN_KIND_CLIENT and self.db_system:
            self.category = "Database"
        elif pb.kind == SPAN_KIND_SERVER and self.method:
            self.category = "API"
        elif browser:
            self.category = "JavaScript"
        else:
            self.category = "Application"


    def all_attrs(self) -> Attributes:
        """Every attribute, decoded on first use: only error rows (context, headers, bodies)
        need them, and decoding is most of the mapping's cost (research/ceilings.md B)."""
        if self._all_attrs is None:
            self._all_attrs = decode_attributes(self.pb.attributes)
        return self._all_attrs

    @property
    def trace_hex(self) -> str:
        return self.trace_id.hex()

    @property
    def span_hex(self) -> str:
        return self.span_id.hex()


def _invalid(span: Any) -> str | None:
    if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE:
        return "with an invalid trace_id"
    if len(span.span_id) != 8 or span.span_id == _ZERO_SPAN:
        return "with an invalid span_id"
    if span.start_time_unix_nano == 0:
        return "without a start time"
    if span.end_time_unix_nano < span.start_time_unix_nano:
        return "ending before they start"
    return None


def _has_exception(span: Any) -> bool:
    return bool(span.events) and any(fl.is_exception_event(e.name) for e in span.events)


def _is_asgi_internal(span: Any) -> bool:
    return span.kind not in (SPAN_KIND_SERVER, SPAN_KIND_CLIENT) and span.name.endswith(
        _ASGI_INTERNAL_SUFFIXES
    )


def map_traces(request: Any, settings: MappingSettings, ip_hash: IpHash) -> TraceRows:
    """Map a parsed ExportTraceServiceRequest. Invalid spans are counted, never raised."""
    out = TraceRows()
    spans: list[_Span] = []
    identities: dict[bytes, Identity] = {}
    for resource_spans in request.resource_spans:
        res = resource_context(decode_attributes(resource_spans.resource.attributes), settings.defaults)
        res_identity = has_identity(res.attrs)
        for scope_spans in resource_spans.scope_spans:
            browser = res.is_browser or is_browser_scope(scope_spans.scope.name)
            for pb in scope_spans.spans:
                out.spans += 1
                problem = _invalid(pb)
                if problem:
                    out.reject(problem)
                    continue
                kind = pb.kind
                if kind == SPAN_KIND_SERVER or kind == SPAN_KIND_CLIENT:
                    attrs = decode_attributes(pb.attributes, _ROW_KEYS)
                elif _is_asgi_internal(pb) and not _has_exception(pb):
                    out.ignored += 1
                    continue
                else:
                    # No row of its own: only its identity and breadcrumbs (and, if it failed,
                    # its other attributes, decoded later for the error's context) can matter.
                    attrs = decode_attributes(pb.attributes, _IDENTITY_AND_CRUMBS)
                span = _Span(pb, attrs, res, browser)
                spans.append(span)
                if has_identity(span.attrs):
                    identities.setdefault(span.trace_id, Identity()).absorb(span.attrs)
                elif res_identity:
                    identities.setdefault(span.trace_id, Identity())
    for span in spans:
        ident = identities.get(span.trace_id)
        if ident is not None and has_identity(span.res.attrs):
            ident.absorb(span.res.attrs)

    failures = fl.collect_failures(spans) if any(s.events for s in spans) else []
    spans_by_id = {(s.trace_id, s.span_id): s for s in spans} if failures else {}
    failures_by_span: dict[bytes, list[fl.Failure]] = {}
    for failure in failures:
        for seen_on in failure.spans:
            failures_by_span.setdefault(seen_on.span_id, []).append(failure)

    servers = {s.trace_id: s for s in spans if s.category == "API"} if failures else {}
    # The page a documentFetch/resourceFetch belongs to is its trace's documentLoad.
    page_loads = {s.trace_id: s for s in spans if s.pb.name == bs.DOCUMENT_LOAD}
    no_identity = Identity()
    for span in spans:
        ident = identities.get(span.trace_id, no_identity)
        try:
            if span.category == "API" and span.pb.kind == SPAN_KIND_SERVER:
                _map_server_span(span, ident, settings, ip_hash, failures_by_span, failures, out)
            elif span.category == "Database":
                _map_db_span(span, ident, settings, out)
            elif span.pb.name in _BROWSER_SPAN_NAMES and bs.is_browser_span(span.pb.name, span.all_attrs()):
                _map_browser_span(span, ident, settings, ip_hash, out, page_loads)
            elif span.span_id not in failures_by_span:
                out.ignored += 1
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            # Attribute values of unexpected types: reject this span, never the whole request
            # (an exception here would make the sender retry the same poison data forever).
            out.reject(f"that could not be mapped ({type(exc).__name__}: {exc})"[:200])
    for query_hash, last_seen in out.pattern_last_seen.items():
        out.query_patterns[query_hash] = out.query_patterns[query_hash]._replace(last_seen=last_seen)
    for failure in failures:
        ident = identities.get(failure.span.trace_id, no_identity)
        try:
            out.errors.append(fl.error_row(failure, ident, spans_by_id, servers.get(failure.span.trace_id)))
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            out.reject(f"with an exception event that could not be mapped ({type(exc).__name__})")
    return out


def _map_server_span(
    span: _Span,
    ident: Identity,
    settings: MappingSettings,
    ip_hash: IpHash,
    failures_by_span: dict[bytes, list[fl.Failure]],
    failures: list[fl.Failure],
    out: TraceRows,
) -> None:
    pb, attrs, res = span.pb, span.attrs, span.res
    get = attrs.get  # `a or b` below: the stable name first, then the old one
    method = (span.method or "").upper()
    route = get("http.route")
    endpoint = endpoint_path(
        route if route.__class__ is str else as_str(route),
        as_str(get("url.path") or get("http.target")),
        pb.name,
        method,
    )
    status = get("http.response.status_code") or get("http.status_code")
    if status.__class__ is not int:
        status = as_int(status)
    if status is not None and not 100 <= status <= 599:
        status = None
    if status is None and span.span_id in failures_by_span:
        # An unhandled exception: the server's error handler (outside the instrumentation, e.g.
        # Starlette's) answers 500 after the span has ended.
        status = 500
    duration_ms = (pb.end_time_unix_nano - pb.start_time_unix_nano) / 1e6
    ip = ip_hash(client_ip(attrs))
    agent = user_agent(attrs)
    start = timestamp(pb.start_time_unix_nano)
    key = (pb.trace_id, pb.span_id)
    out.api_performance.append(
        ApiPerformanceRow(
            row_id(pb.start_time_unix_nano, *key, b"api"), endpoint, method, start, duration_ms,
            status,
            _size(get, _REQUEST_SIZE), _size(get, _RESPONSE_SIZE),
            ident.user_id, ident.user_role, ident.session_id, ip, agent,
            duration_ms >= settings.slow_api_ms, res.service_name, res.service_version,
            res.environment, span.trace_hex, span.span_hex, ident.page_view_id,
        )  # fmt: skip
    )
    own = failures_by_span.get(span.span_id)
    if not own and (status is None or status < settings.api_error_min_status):
        return
    failure = own[0] if own else next((f for f in failures if f.span.trace_id == span.trace_id), None)
    if failure is not None:
        message = failure.message or failure.exc_type or "exception"
    else:
        message = pb.status.message or (f"HTTP {status}" if status else "request failed")
    error_time = failure.time_unix_nano if failure else pb.end_time_unix_nano
    error_id = row_id(error_time, *key, b"api_error")
    out.api_errors.append(
        ApiErrorRow(
            error_id, error_id, endpoint, method, status or 500, scrub_text(message),
            cap(failure.stack) if failure else None, failure.exc_type if failure else None,
            _body(span.all_attrs().get("http.request.body.content")),
            scrub_headers(prefixed(span.all_attrs(), "http.request.header.")) or None,
            _body(span.all_attrs().get("http.response.body.content")),
            timestamp(error_time), ident.user_id, ident.user_role, ident.session_id, ip, agent,
            res.service_name, res.service_version, res.environment, span.trace_hex,
            span.span_hex, ident.page_view_id,
            failure.fingerprint() if failure else fp.fingerprint(None, f"HTTP {status} {method} {endpoint}", None),
        )  # fmt: skip
    )


def _map_browser_span(
    span: _Span, trace_ident: Identity, settings: MappingSettings, ip_hash: IpHash, out: TraceRows,
    page_loads: dict[bytes, _Span],
) -> None:
    ident = Identity(trace_ident.user_id, trace_ident.user_role, trace_ident.session_id, trace_ident.page_view_id)
    ident.absorb(span.res.attrs)
    if not ident.session_id:
        out.reject(f"{span.pb.name} spans without session.id")
        return
    attrs = dict(span.all_attrs())
    if span.pb.name == bs.DOCUMENT_LOAD:
        view, perf = bs.document_load_rows(span.pb, attrs, ident, span.res, settings.slug_rules)
        out.page_views.append(view)
        out.perf_events.extend(perf)
    elif span.pb.name == "click":
        out.actions.append(bs.click_action_row(span.pb, attrs, ident, span.res, settings.slug_rules))
    else:
        load = page_loads.get(span.trace_id)
        page = dict(load.all_attrs()) if load is not None else {}
        out.perf_events.extend(bs.fetch_rows(span.pb, attrs, ident, span.res, page, settings.slug_rules))
        return  # not a user-facing event of the session
    out.session_meta.setdefault(ident.session_id, an.SessionMeta(
        user_agent(attrs) or user_agent(span.res.attrs), ip_hash(client_ip(attrs)), span.res.device_info
    ))  # fmt: skip


# Body size: semconv's `http.*.body.size`, the old `http.*_content_length`, else the captured
# `content-length` header (dashes in semconv, underscores from Python).
_REQUEST_SIZE, _RESPONSE_SIZE = (
    (f"http.{d}.body.size", f"http.{d}_content_length", f"http.{d}.header.content-length",
     f"http.{d}.header.content_length") for d in ("request", "response")
)  # fmt: skip


def _size(get: Any, keys: tuple[str, str, str, str]) -> int | None:
    return as_int(get(keys[0]) or get(keys[1]) or get(keys[2]) or get(keys[3]))


def _body(value: Any) -> Any:
    """Opt-in request/response bodies: JSON kept as JSON, anything else as a scrubbed string."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return scrub(value)
    return scrub(value)


def _map_db_span(span: _Span, ident: Identity, settings: MappingSettings, out: TraceRows) -> None:
    pb, attrs, res = span.pb, span.attrs, span.res
    statement = as_str(first(attrs, "db.query.text", "db.statement"))
    normalized = query_hash = parsed_type = parsed_table = None
    if statement:
        normalized, query_hash, parsed_type, parsed_table = sqln.sql_facts(statement)
    operation = as_str(first(attrs, "db.operation.name", "db.operation"))
    query_type = (operation.split()[0].upper() if operation else None) or parsed_type
    if query_type is None:
        name_head = pb.name.split(" ", 1)[0].upper()
        query_type = name_head if name_head.isalpha() else "UNKNOWN"
    table = as_str(first(attrs, "db.collection.name", "db.sql.table")) or parsed_table or "unknown"
    start = timestamp(pb.start_time_unix_nano)
    if normalized is not None and query_hash is not None:
        known = out.query_patterns.get(query_hash)
        if known is None:
            out.query_patterns[query_hash] = QueryPatternRow(
                query_hash, normalized, query_type, table, span.db_system, start, start
            )
        elif start > out.pattern_last_seen.get(query_hash, known.last_seen):
            out.pattern_last_seen[query_hash] = start
    duration_ms = (pb.end_time_unix_nano - pb.start_time_unix_nano) / 1e6
    out.db_performance.append(
        DbPerformanceRow(
            row_id(pb.start_time_unix_nano, pb.trace_id, pb.span_id, b"db"), query_type, table,
            duration_ms, as_int(first(attrs, "db.response.returned_rows")), query_hash,
            duration_ms >= settings.slow_query_ms, as_int(attrs.get(conv.DB_CONNECTION_POOL_SIZE)), start,
            span.db_system,
            as_str(first(attrs, "db.namespace", "db.name")), ident.user_id, ident.user_role,
            res.service_name, res.service_version, res.environment, span.trace_hex,
            span.span_hex, ident.page_view_id,
        )  # fmt: skip
    )
