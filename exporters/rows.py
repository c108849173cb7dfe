"""One typed row per table, in the column order the writer copies them.

Rows are NamedTuples: cheap to build on the hot path and directly usable by psycopg's binary
COPY. Each row type carries its table name and PostgreSQL column types so the writer needs no
second description of them (`tests/integration/test_migrations.py` checks them against the
migrated schema).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

R = TypeVar("R")

_MASK48 = (1 << 48) - 1
_MASK62 = (1 << 62) - 1


def row_id(unix_nano: int, *parts: bytes) -> uuid.UUID:
    """A deterministic id laid out like UUIDv7: the event's millisecond timestamp first, then
    80 hash bits of the OTLP item's identity where v7 has random bits.

    A re-sent Export produces the same ids, so `ON CONFLICT DO NOTHING` drops the copies, and
    the ids are time-ordered, so B-tree inserts stay at the right edge of the index (random keys
    halve COPY speed on large tables, research/ceilings.md).
    """
    digest = int.from_bytes(hashlib.blake2b(b"\x1f".join(parts), digest_size=10).digest(), "big")
    ms = (unix_nano // 1_000_000) & _MASK48
    value = (ms << 80) | (0x7 << 76) | ((digest >> 68) << 64) | (0b10 << 62) | (digest & _MASK62)
    # uuid.UUID(int=...) re-validates what is valid by construction; this runs once per row.
    row = _new_uuid(uuid.UUID)
    _set(row, "int", value)
    _set(row, "is_safe", _UNKNOWN)
    return row


_new_uuid = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def timestamp(unix_nano: int) -> datetime:
    """Exact to the microsecond (PostgreSQL's resolution); float seconds would round."""
    return _EPOCH + timedelta(microseconds=unix_nano // 1000)


def _table(name: str, time_column: str, pg_types: tuple[str, ...]) -> Callable[[type[R]], type[R]]:
    """Attach the table name, time column and PostgreSQL column types to a row type (NamedTuple
    forbids class attributes with values in its body)."""

    def attach(row_type: type[R]) -> type[R]:
        assert len(pg_types) == len(row_type._fields), row_type.__name__  # type: ignore[attr-defined]
        row_type.table = name  # type: ignore[attr-defined]
        row_type.time_column = time_column  # type: ignore[attr-defined]
        row_type.pg_types = pg_types  # type: ignore[attr-defined]
        return row_type

    return attach


@_table("api_performance_metrics", "request_timestamp", (
        "uuid", "text", "text", "timestamptz", "float8", "int4", "int8", "int8", "text", "text",
        "text", "text", "text", "bool", "text", "text", "text", "text", "text", "text",
    ))  # fmt: skip
class ApiPerformanceRow(NamedTuple):
    id: uuid.UUID
    endpoint_path: str
    http_method: str
    request_timestamp: datetime
    response_time_ms: float
    status_code: int | None
    request_size_bytes: int | None
    response_size_bytes: int | None
    user_id: str | None
    user_role: str | None
    session_id: str | None
    ip_address: str | None
    user_agent: str | None
    slow_request: bool
    service_name: str
    service_version: str | None
    environment: str | None
    trace_id: str
    span_id: str
    page_view_id: str | None


@_table("api_error_logs", "error_timestamp", (
        "uuid", "uuid", "text", "text", "int4", "text", "text", "text", "jsonb", "jsonb", "jsonb",
        "timestamptz", "text", "text", "text", "text", "text", "text", "text", "text", "text",
        "text", "text", "text",
    ))  # fmt: skip
class ApiErrorRow(NamedTuple):
    id: uuid.UUID
    error_id: uuid.UUID
    endpoint_path: str
    http_method: str
    status_code: int
    error_message: str
    error_stack: str | None
    exception_type: str | None
    request_body: Any
    request_headers: Any
    response_body: Any
    error_timestamp: datetime
    user_id: str | None
    user_role: str | None
    session_id: str | None
    ip_address: str | None
    user_agent: str | None
    service_name: str
    service_version: str | None
    environment: str | None
    trace_id: str
    span_id: str
    page_view_id: str | None
    fingerprint: str | None


@_table("database_performance_metrics", "timestamp", (
        "uuid", "text", "text", "float8", "int8", "text", "bool", "int4", "timestamptz", "text",
        "text", "text", "text", "text", "text", "text", "text", "text", "text",
    ))  # fmt: skip
class DbPerformanceRow(NamedTuple):
    id: uuid.UUID
    query_type: str
    table_name: str
    query_duration_ms: float
    rows_affected: int | None
    query_hash: str | None
    slow_query: bool
    connection_pool_size: int | None
    timestamp: datetime
    db_system: str | None
    db_namespace: str | None
    user_id: str | None
    user_role: str | None
    service_name: str
    service_version: str | None
    environment: str | None
    trace_id: str
    span_id: str
    page_view_id: str | None


@_table("error_logs", "error_timestamp", (
        "uuid", "uuid", "text", "text", "text", "text", "text", "timestamptz", "text", "text",
        "text", "text", "text", "text", "jsonb", "jsonb", "jsonb", "text", "text", "text", "text",
        "text", "text", "text", "text",
    ))  # fmt: skip
class ErrorRow(NamedTuple):
    id: uuid.UUID
    error_id: uuid.UUID
    error_type: str
    error_message: str
    error_stack: str | None
    error_code: str | None
    exception_type: str | None
    error_timestamp: datetime
    user_id: str | None
    user_role: str | None
    session_id: str | None
    page_slug: str | None
    url: str | None
    user_agent: str | None
    device_info: Any
    breadcrumbs: Any
    context: Any
    service_name: str
    service_version: str | None
    environment: str | None
    trace_id: str | None
    span_id: str | None
    page_view_id: str | None
    fingerprint: str | None
    occurrence_key: str | None


@_table("crash_reports", "crash_timestamp", (
        "uuid", "uuid", "text", "text", "text", "text", "timestamptz", "text", "text", "text",
        "text", "text", "text", "jsonb", "jsonb", "jsonb", "jsonb", "text", "text", "text", "text",
        "text", "text", "text", "text",
    ))  # fmt: skip
class CrashRow(NamedTuple):
    id: uuid.UUID
    crash_id: uuid.UUID
    crash_type: str
    crash_message: str
    crash_stack: str
    exception_type: str | None
    crash_timestamp: datetime
    user_id: str | None
    user_role: str | None
    session_id: str | None
    page_slug: str | None
    url: str | None
    user_agent: str | None
    device_info: Any
    memory_info: Any
    performance_info: Any
    breadcrumbs: Any
    release_version: str | None
    service_name: str
    service_version: str | None
    environment: str
    trace_id: str | None
    span_id: str | None
    page_view_id: str | None
    fingerprint: str | None


@_table("server_performance_metrics", "timestamp", (
        "uuid", "text", "numeric", "int4", "int4", "int4", "int4", "int4", "numeric", "numeric",
        "timestamptz", "text", "text", "text",
    ))  # fmt: skip
class ServerMetricsRow(NamedTuple):
    id: uuid.UUID
    service_instance_id: str | None
    cpu_usage: Decimal | None
    memory_usage_mb: int | None
    event_loop_lag_ms: int | None
    active_handles: int | None
    active_requests: int | None
    uptime_seconds: int | None
    request_rate: Decimal | None
    error_rate: Decimal | None
    timestamp: datetime
    service_name: str
    service_version: str | None
    environment: str | None


@_table("user_page_views", "view_timestamp", (
        "uuid", "text", "text", "text", "text", "text", "text", "text", "timestamptz", "jsonb",
        "text", "text", "text", "text", "text", "text",
    ))  # fmt: skip
class PageViewRow(NamedTuple):
    id: uuid.UUID
    user_id: str | None
    user_role: str
    session_id: str
    page_slug: str
    page_path: str
    url: str | None
    referrer: str | None
    view_timestamp: datetime
    device_info: Any
    service_name: str
    service_version: str | None
    environment: str | None
    trace_id: str | None
    span_id: str | None
    page_view_id: str | None


@_table("user_actions", "action_timestamp", (
        "uuid", "text", "text", "text", "text", "text", "text", "jsonb", "timestamptz", "jsonb",
        "text", "text", "text", "text", "text", "text",
    ))  # fmt: skip
class ActionRow(NamedTuple):
    id: uuid.UUID
    user_id: str | None
    user_role: str
    session_id: str
    page_slug: str
    action_type: str
    action_target: str | None
    action_context: Any
    action_timestamp: datetime
    device_info: Any
    service_name: str
    service_version: str | None
    environment: str | None
    trace_id: str | None
    span_id: str | None
    page_view_id: str | None


@_table("user_page_leaves", "left_at", (
        "uuid", "text", "text", "timestamptz", "int4", "int4", "int4",
    ))  # fmt: skip
class PageLeaveRow(NamedTuple):
    id: uuid.UUID
    page_view_id: str
    session_id: str
    left_at: datetime
    time_on_page: int | None
    scroll_depth: int | None
    interactions_count: int | None


@_table("frontend_perf_events", "at", (
        "uuid", "text", "text", "text", "text", "text", "text", "text", "text", "text", "float8",
        "jsonb", "timestamptz", "text", "text", "text",
    ))  # fmt: skip
class PerfEventRow(NamedTuple):
    id: uuid.UUID
    perf_key: str  # the page view id, else session + page path
    page_view_id: str | None
    session_id: str
    page_slug: str
    page_path: str
    user_id: str | None
    user_role: str | None
    event_name: str
    metric: str
    value: float | None
    resource: Any
    at: datetime
    service_name: str
    service_version: str | None
    environment: str | None


@_table("query_patterns", "last_seen", (
        "text", "text", "text", "text", "text", "timestamptz", "timestamptz",
    ))  # fmt: skip
class QueryPatternRow(NamedTuple):
    query_hash: str
    normalized_query: str
    query_type: str
    table_name: str
    db_system: str | None
    first_seen: datetime
    last_seen: datetime


# Tables whose rows are appended with deterministic ids (idempotent COPY), in write order.
EVENT_ROW_TYPES: tuple[type[Any], ...] = (
    ApiPerformanceRow, ApiErrorRow, DbPerformanceRow, ErrorRow, CrashRow, ServerMetricsRow,
    PageViewRow, ActionRow, PageLeaveRow, PerfEventRow,
)  # fmt: skip
