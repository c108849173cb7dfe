"""OTLP log records -> crash and error rows (pure: protobuf in, rows out, no I/O).

Exceptions travel as log records more and more (semconv 1.40 deprecated exceptions on spans):
`app.crash` and FATAL records with `exception.*` are crashes; records named `exception` or
`*.exception`, or carrying `exception.*`, are errors (DESIGN §5). The event name is the
`event_name` field, else the deprecated `event.name` attribute, else `otel.event.name`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from otel_bridge import conventions as conv
from otel_bridge.exporters import analytics as an
from otel_bridge.exporters import failures as fl
from otel_bridge.exporters import fingerprint as fp
from otel_bridge.exporters.attributes import (
    Attributes,
    as_int,
    as_str,
    decode_attributes,
    decode_value,
)
from otel_bridge.exporters.context import (
    Identity,
    IpHash,
    MappingSettings,
    ResourceContext,
    client_ip,
    is_browser_scope,
    resource_context,
    user_agent,
)
from otel_bridge.exporters.frontend import PERF_EVENTS, perf_rows
from otel_bridge.exporters.http_route import endpoint_path
from otel_bridge.exporters.rejections import Rejections
from otel_bridge.exporters.rows import (
    ActionRow,
    ApiErrorRow,
    CrashRow,
    ErrorRow,
    PageLeaveRow,
    PageViewRow,
    PerfEventRow,
    row_id,
    timestamp,
)
from otel_bridge.privacy import cap, scrub, scrub_text

SEVERITY_FATAL = 21  # FATAL..FATAL4 are 21-24
CRASH_EVENT = "app.crash"

# Operation-specific exception events (semconv 1.41) and the error type they imply.
_EVENT_ERROR_TYPES = {"http.server.request.exception": "API", "db.client.operation.exception": "Database"}

# Stored in their own columns, so left out of the context.
_CONTEXT_SKIP = frozenset(
    {"exception.type", "exception.message", "exception.stacktrace", "exception.escaped",
     "user.id", "enduser.id", "user.roles", "enduser.role", "session.id", "client.address",
     "user_agent.original", "http.user_agent", "url.full", "event.name", "otel.event.name",
     conv.PAGE_VIEW_ID, conv.PAGE_SLUG, conv.BREADCRUMBS, conv.CRASH_TYPE, conv.CRASH_MEMORY,
     conv.CRASH_PERFORMANCE}
)  # fmt: skip


@dataclass
class LogRows(Rejections):
    """Everything one ExportLogsServiceRequest maps to, plus the bookkeeping for its response."""

    items = "log records"

    errors: list[ErrorRow] = field(default_factory=list)
    api_errors: list[ApiErrorRow] = field(default_factory=list)
    crashes: list[CrashRow] = field(default_factory=list)
    page_views: list[PageViewRow] = field(default_factory=list)
    actions: list[ActionRow] = field(default_factory=list)
    page_leaves: list[PageLeaveRow] = field(default_factory=list)
    perf_events: list[PerfEventRow] = field(default_factory=list)
    # Sessions this request touched, with what their row takes from the events themselves.
    session_meta: dict[str, an.SessionMeta] = field(default_factory=dict)
    records: int = 0
    ignored: int = 0
    query_patterns: dict[str, Any] = field(default_factory=dict)  # none from logs



    def event_rows(self) -> list[list[Any]]:
        return [self.api_errors, self.errors, self.crashes, self.page_views, self.actions, self.page_leaves,
                self.perf_events]

    def perf_keys(self) -> list[str]:
        return an.perf_keys(self.page_views, self.perf_events)


def event_name(record: Any, attrs: Attributes) -> str:
    return record.event_name or as_str(attrs.get("event.name")) or as_str(attrs.get("otel.event.name")) or ""


def _invalid(record: Any) -> str | None:
    if len(record.trace_id) not in (0, 16):
        return "with an invalid trace_id"
    if len(record.span_id) not in (0, 8):
        return "with an invalid span_id"
    if not (record.time_unix_nano or record.observed_time_unix_nano):
        return "without a timestamp"
    return None


@dataclass
class _Record:
    """One log record with what every row built from it needs."""

    pb: Any
    attrs: Attributes
    res: ResourceContext
    name: str
    time_unix_nano: int
    key: bytes  # identity of the record for deterministic row ids
    browser: bool
    body: Any = None
    ident: Identity = field(default_factory=Identity)

    @property
    def trace_hex(self) -> str | None:
        return self.pb.trace_id.hex() if self.pb.trace_id.strip(b"\x00") else None

    @property
    def span_hex(self) -> str | None:
        return self.pb.span_id.hex() if self.pb.span_id.strip(b"\x00") else None


def map_logs(request: Any, settings: MappingSettings, ip_hash: IpHash) -> LogRows:
    """Map a parsed ExportLogsServiceRequest. Invalid records are counted, never raised."""
    out = LogRows()
    seen_failures: set[tuple[bytes, str]] = set()
    for resource_logs in request.resource_logs:
        res = resource_context(decode_attributes(resource_logs.resource.attributes), settings.defaults)
        resource_bytes = resource_logs.resource.SerializeToString(deterministic=True)
        for scope_logs in resource_logs.scope_logs:
            browser = res.is_browser or is_browser_scope(scope_logs.scope.name)
            for pb in scope_logs.log_records:
                out.records += 1
                problem = _invalid(pb)
                if problem:
                    out.reject(problem)
                    continue
                try:
                    _map_record(pb, res, resource_bytes, browser, settings, ip_hash, seen_failures, out)
                except (TypeError, ValueError, AttributeError, OverflowError) as exc:
                    out.reject(f"that could not be mapped ({type(exc).__name__}: {exc})"[:200])
    return out


def _map_record(
    pb: Any,
    res: ResourceContext,
    resource_bytes: bytes,
    browser: bool,
    settings: MappingSettings,
    ip_hash: IpHash,
    seen_failures: set[tuple[bytes, str]],
    out: LogRows,
) -> None:
    attrs = decode_attributes(pb.attributes)
    name = event_name(pb, attrs)
    if name in an.ANALYTICS_EVENTS or name in PERF_EVENTS:
        _map_analytics(pb, attrs, name, res, resource_bytes, settings, ip_hash, out)
        return
    has_exception = "exception.type" in attrs or "exception.message" in attrs
    is_crash = name == CRASH_EVENT or (pb.severity_number >= SEVERITY_FATAL and has_exception)
    if not (is_crash or has_exception or fl.is_exception_event(name)):
        out.ignored += 1
        return
    key = hashlib.blake2b(resource_bytes + pb.SerializeToString(deterministic=True), digest_size=16).digest()
    record = _Record(pb, attrs, res, name, pb.time_unix_nano or pb.observed_time_unix_nano, key, browser)
    if pb.body.WhichOneof("value") is not None:
        record.body = decode_value(pb.body)
    record.ident.absorb(attrs)
    record.ident.absorb(res.attrs)
    if is_crash:
        out.crashes.append(_crash_row(record, settings))
        return
    exc_type, message, stack = _exception(record)
    occurrence = fl.occurrence_key(exc_type, message, stack)
    # One failure = one row: the same exception logged twice for one trace (e.g. by a handler and
    # by the server's request logger) is one occurrence (DESIGN §5 rule 2).
    if pb.trace_id.strip(b"\x00"):
        if (pb.trace_id, occurrence) in seen_failures:
            return
        seen_failures.add((pb.trace_id, occurrence))
    category = _EVENT_ERROR_TYPES.get(name) or ("JavaScript" if browser else "Application")
    error_id = row_id(record.time_unix_nano, record.key, b"error")
    out.errors.append(
        ErrorRow(
            error_id, error_id, category, scrub_text(message) or exc_type or "exception", cap(stack),
            as_str(attrs.get("db.response.status_code")) if category == "Database" else None,
            exc_type, timestamp(record.time_unix_nano), record.ident.user_id,
            record.ident.user_role, record.ident.session_id, _page_slug(record, settings),
            scrub_text(as_str(attrs.get("url.full"))), user_agent(attrs) or user_agent(res.attrs),
            res.device_info, fl.parse_breadcrumbs(attrs.get(conv.BREADCRUMBS)), _context(record),
            res.service_name, res.service_version, res.environment, record.trace_hex,
            record.span_hex, record.ident.page_view_id, _fingerprint(record), occurrence,
        )  # fmt: skip
    )
    if name == "http.server.request.exception":
        out.api_errors.append(_api_error_row(record, exc_type, message, stack, settings, ip_hash))


def _map_analytics(
    pb: Any,
    attrs: Attributes,
    name: str,
    res: ResourceContext,
    resource_bytes: bytes,
    settings: MappingSettings,
    ip_hash: IpHash,
    out: LogRows,
) -> None:
    ident = Identity()
    ident.absorb(attrs)
    ident.absorb(res.attrs)
    if not ident.session_id:
        out.reject(f"{name} without session.id")
        return
    if name == conv.PAGE_LEAVE_EVENT and not ident.page_view_id:
        out.reject(f"{name} without {conv.PAGE_VIEW_ID}")
        return
    key = hashlib.blake2b(resource_bytes + pb.SerializeToString(deterministic=True), digest_size=16).digest()
    ev = an.EventContext(
        attrs, res, ident, pb.time_unix_nano or pb.observed_time_unix_nano, key,
        pb.trace_id.hex() if pb.trace_id.strip(b"\x00") else None,
        pb.span_id.hex() if pb.span_id.strip(b"\x00") else None,
    )  # fmt: skip
    if name in PERF_EVENTS:
        body = decode_value(pb.body) if pb.body.WhichOneof("value") else None
        out.perf_events.extend(perf_rows(name, attrs, body, ident, res, ev.time_unix_nano, key, settings.slug_rules))
        return
    if name in an.PAGE_VIEW_EVENTS:
        out.page_views.append(an.page_view_row(ev, settings.slug_rules))
    elif name in an.ACTION_EVENTS:
        out.actions.append(an.action_row(ev, name, settings.slug_rules))
    else:
        out.page_leaves.append(an.page_leave_row(ev))
    known = out.session_meta.get(ident.session_id)
    if known is None or known.user_agent is None:
        out.session_meta[ident.session_id] = an.session_meta(ev, ip_hash)


def _exception(record: _Record) -> tuple[str | None, str, str | None]:
    attrs = record.attrs
    exc_type = as_str(attrs.get("exception.type"))
    message = as_str(attrs.get("exception.message")) or ""
    if not message and isinstance(record.body, str):
        message = record.body
    return exc_type, message, as_str(attrs.get("exception.stacktrace"))


def _context(record: _Record) -> Any:
    context: dict[str, Any] = {k: v for k, v in record.attrs.items() if k not in _CONTEXT_SKIP}
    if record.name:
        context["event.name"] = record.name
    if isinstance(record.body, dict) and record.body:
        context["body"] = record.body
    if record.pb.severity_text:
        context["severity"] = record.pb.severity_text
    return scrub(context) or None


def _fingerprint(record: _Record) -> str:
    exc_type, message, stack = _exception(record)
    return fp.fingerprint(exc_type, message, stack, fp.custom_value(record.attrs.get(conv.FINGERPRINT)))


def _page_slug(record: _Record, settings: MappingSettings) -> str | None:
    """The page an error happened on: its explicit slug, else, for browser errors, the slug of
    its page URL by the same rules as page views (a server's url.full is a request, not a page)."""
    explicit = as_str(record.attrs.get(conv.PAGE_SLUG))
    if explicit or not record.browser or not record.attrs.get("url.full"):
        return explicit
    path, _ = an.page_location(record.attrs)
    return an.page_slug(path, None, settings.slug_rules)


def _crash_row(record: _Record, settings: MappingSettings) -> CrashRow:
    attrs, res = record.attrs, record.res
    exc_type, message, stack = _exception(record)
    crash_type = as_str(attrs.get(conv.CRASH_TYPE)) or ("fatal_log" if record.name != CRASH_EVENT else "uncaught_exception")
    crash_id = row_id(record.time_unix_nano, record.key, b"crash")
    return CrashRow(
        crash_id, crash_id, crash_type, scrub_text(message) or exc_type or "crash", cap(stack) or "", exc_type,
        timestamp(record.time_unix_nano), record.ident.user_id, record.ident.user_role,
        record.ident.session_id, _page_slug(record, settings), scrub_text(as_str(attrs.get("url.full"))),
        user_agent(attrs) or user_agent(res.attrs), res.device_info,
        scrub(attrs.get(conv.CRASH_MEMORY)) or None, scrub(attrs.get(conv.CRASH_PERFORMANCE)) or None,
        fl.parse_breadcrumbs(attrs.get(conv.BREADCRUMBS)), res.service_version, res.service_name,
        res.service_version, res.environment or settings.defaults.environment or "unknown",
        record.trace_hex, record.span_hex, record.ident.page_view_id, _fingerprint(record),
    )  # fmt: skip


def _api_error_row(
    record: _Record,
    exc_type: str | None,
    message: str,
    stack: str | None,
    settings: MappingSettings,
    ip_hash: IpHash,
) -> ApiErrorRow:
    """`http.server.request.exception` carries the request's HTTP attributes (semconv 1.41)."""
    attrs, res = record.attrs, record.res
    get = attrs.get
    method = (as_str(get("http.request.method") or get("http.method")) or "_OTHER").upper()
    status = as_int(get("http.response.status_code") or get("http.status_code"))
    endpoint = endpoint_path(as_str(get("http.route")), as_str(get("url.path") or get("http.target")), "", method)
    error_id = row_id(record.time_unix_nano, record.key, b"api_error")
    return ApiErrorRow(
        error_id, error_id, endpoint, method, status if status and status >= 100 else 500,
        scrub_text(message) or exc_type or "exception", cap(stack), exc_type, None, None, None,
        timestamp(record.time_unix_nano), record.ident.user_id, record.ident.user_role,
        record.ident.session_id, ip_hash(client_ip(attrs)), user_agent(attrs), res.service_name,
        res.service_version, res.environment, record.trace_hex, record.span_hex,
        record.ident.page_view_id, _fingerprint(record),
    )  # fmt: skip
