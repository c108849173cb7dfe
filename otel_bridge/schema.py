"""SQLAlchemy Core description of the tables, for admin code, tests and `alembic check`.

The migrations in `migrations/versions/` create the tables (as plain DDL: partitions and
functions are beyond SQLAlchemy's DDL); `tests/integration/test_migrations.py` proves this
description and the migrated database agree column by column. The hot path never uses it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Double,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID

metadata = MetaData(naming_convention={"ix": "idx_%(table_name)s_%(column_0_name)s", "pk": "%(table_name)s_pkey"})

TZ = TIMESTAMP(timezone=True)


def _common() -> list[Column]:  # type: ignore[type-arg]
    return [
        Column("service_name", Text, nullable=False),
        Column("service_version", Text),
        Column("environment", Text),
        Column("created_at", TZ, nullable=False),
    ]


def _trace_link() -> list[Column]:  # type: ignore[type-arg]
    return [Column("trace_id", Text), Column("span_id", Text), Column("page_view_id", Text)]


def _resolution() -> list[Column]:  # type: ignore[type-arg]
    return [
        Column("fingerprint", Text),
        Column("resolved", Boolean, nullable=False),
        Column("resolved_at", TZ),
        Column("resolved_by", Text),
    ]


def _event_table(name: str, time_column: str, *columns: Column) -> Table:  # type: ignore[type-arg]
    """A raw, monthly-partitioned event table: primary key (id, time column)."""
    for column in columns:
        if column.name in ("id", time_column):
            column.primary_key = True
    table = Table(name, metadata, *columns, *_trace_link(), *_common())
    table.info["time_column"] = time_column
    return table


def _identity() -> list[Column]:  # type: ignore[type-arg]
    return [Column("user_id", Text), Column("user_role", Text)]


user_page_views = _event_table(
    "user_page_views", "view_timestamp",
    Column("id", UUID, nullable=False), Column("user_id", Text),
    Column("user_role", Text, nullable=False), Column("session_id", Text, nullable=False),
    Column("page_slug", Text, nullable=False), Column("page_path", Text, nullable=False),
    Column("url", Text), Column("referrer", Text), Column("view_timestamp", TZ, nullable=False),
    Column("time_on_page", Integer), Column("scroll_depth", Integer),
    Column("interactions_count", Integer, nullable=False), Column("device_info", JSONB),
)  # fmt: skip

user_actions = _event_table(
    "user_actions", "action_timestamp",
    Column("id", UUID, nullable=False), Column("user_id", Text),
    Column("user_role", Text, nullable=False), Column("session_id", Text, nullable=False),
    Column("page_slug", Text, nullable=False), Column("action_type", Text, nullable=False),
    Column("action_target", Text), Column("action_context", JSONB),
    Column("action_timestamp", TZ, nullable=False), Column("device_info", JSONB),
)  # fmt: skip

api_performance_metrics = _event_table(
    "api_performance_metrics", "request_timestamp",
    Column("id", UUID, nullable=False), Column("endpoint_path", Text, nullable=False),
    Column("http_method", Text, nullable=False), Column("request_timestamp", TZ, nullable=False),
    Column("response_time_ms", Double, nullable=False), Column("status_code", Integer),
    Column("request_size_bytes", BigInteger), Column("response_size_bytes", BigInteger),
    *_identity(), Column("session_id", Text), Column("ip_address", Text),
    Column("user_agent", Text), Column("slow_request", Boolean, nullable=False),
)  # fmt: skip

database_performance_metrics = _event_table(
    "database_performance_metrics", "timestamp",
    Column("id", UUID, nullable=False), Column("query_type", Text, nullable=False),
    Column("table_name", Text, nullable=False), Column("query_duration_ms", Double, nullable=False),
    Column("rows_affected", BigInteger), Column("query_hash", Text),
    Column("slow_query", Boolean, nullable=False), Column("connection_pool_size", Integer),
    Column("timestamp", TZ, nullable=False), Column("db_system", Text), Column("db_namespace", Text),
    *_identity(),
)  # fmt: skip

frontend_performance_metrics = _event_table(
    "frontend_performance_metrics", "timestamp",
    Column("id", UUID, nullable=False), *_identity(), Column("session_id", Text, nullable=False),
    Column("page_slug", Text, nullable=False), Column("page_path", Text),
    *[Column(name, Integer) for name in (
        "page_load_time", "time_to_first_byte", "first_contentful_paint",
        "largest_contentful_paint")],
    Column("cumulative_layout_shift", Numeric(10, 4)),
    *[Column(name, Integer) for name in (
        "first_input_delay", "interaction_to_next_paint", "time_to_interactive",
        "dom_content_loaded", "window_load", "javascript_execution_time")],
    Column("resource_load_times", JSONB), Column("timestamp", TZ, nullable=False),
    Column("perf_key", Text),
)  # fmt: skip

server_performance_metrics = _event_table(
    "server_performance_metrics", "timestamp",
    Column("id", UUID, nullable=False), Column("service_instance_id", Text),
    Column("cpu_usage", Numeric(6, 2)), Column("memory_usage_mb", Integer),
    Column("event_loop_lag_ms", Integer), Column("active_handles", Integer),
    Column("active_requests", Integer), Column("uptime_seconds", Integer),
    Column("request_rate", Numeric(10, 2)), Column("error_rate", Numeric(10, 2)),
    Column("timestamp", TZ, nullable=False),
)  # fmt: skip

error_logs = _event_table(
    "error_logs", "error_timestamp",
    Column("id", UUID, nullable=False), Column("error_id", UUID, nullable=False),
    Column("error_type", Text, nullable=False), Column("error_message", Text, nullable=False),
    Column("error_stack", Text), Column("error_code", Text), Column("exception_type", Text),
    Column("error_timestamp", TZ, nullable=False), *_identity(), Column("session_id", Text),
    Column("page_slug", Text), Column("url", Text), Column("user_agent", Text),
    Column("device_info", JSONB), Column("breadcrumbs", JSONB), Column("context", JSONB),
    Column("occurrence_key", Text), *_resolution(),
)  # fmt: skip

crash_reports = _event_table(
    "crash_reports", "crash_timestamp",
    Column("id", UUID, nullable=False), Column("crash_id", UUID, nullable=False),
    Column("crash_type", Text, nullable=False), Column("crash_message", Text, nullable=False),
    Column("crash_stack", Text, nullable=False), Column("exception_type", Text),
    Column("crash_timestamp", TZ, nullable=False), *_identity(), Column("session_id", Text),
    Column("page_slug", Text), Column("url", Text), Column("user_agent", Text),
    Column("device_info", JSONB), Column("memory_info", JSONB), Column("performance_info", JSONB),
    Column("breadcrumbs", JSONB), Column("release_version", Text), *_resolution(),
)  # fmt: skip

api_error_logs = _event_table(
    "api_error_logs", "error_timestamp",
    Column("id", UUID, nullable=False), Column("error_id", UUID, nullable=False),
    Column("endpoint_path", Text, nullable=False), Column("http_method", Text, nullable=False),
    Column("status_code", Integer, nullable=False), Column("error_message", Text, nullable=False),
    Column("error_stack", Text), Column("exception_type", Text), Column("request_body", JSONB),
    Column("request_headers", JSONB), Column("response_body", JSONB),
    Column("error_timestamp", TZ, nullable=False), *_identity(), Column("session_id", Text),
    Column("ip_address", Text), Column("user_agent", Text), *_resolution(),
)  # fmt: skip

user_sessions = Table(
    "user_sessions", metadata,
    Column("id", UUID, primary_key=True), Column("session_id", Text, nullable=False, unique=True),
    Column("user_id", Text), Column("user_role", Text, nullable=False),
    Column("session_start", TZ, nullable=False), Column("session_end", TZ),
    Column("session_duration", Integer), Column("pages_visited", ARRAY(Text)),
    Column("actions_count", Integer, nullable=False), Column("device_info", JSONB),
    Column("ip_address", Text), Column("user_agent", Text),
    Column("service_name", Text, nullable=False), Column("service_version", Text),
    Column("environment", Text), Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False), Column("finalized_at", TZ),
)  # fmt: skip

error_groups = Table(
    "error_groups", metadata,
    Column("fingerprint", Text, primary_key=True), Column("title", Text, nullable=False),
    Column("error_type", Text, nullable=False), Column("exception_type", Text),
    Column("service_name", Text), Column("first_seen", TZ, nullable=False),
    Column("last_seen", TZ, nullable=False), Column("occurrences", BigInteger, nullable=False),
    Column("users_affected", BigInteger, nullable=False), Column("last_release", Text),
    Column("status", Text, nullable=False), Column("resolved_at", TZ), Column("resolved_by", Text),
    Column("resolved_in_release", Text), Column("regressed_at", TZ),
    Column("created_at", TZ, nullable=False), Column("updated_at", TZ, nullable=False),
    Column("release_at_resolution", Text), Column("regressions", Integer, nullable=False),
    Column("last_spike_at", TZ),
)  # fmt: skip

error_group_users = Table(
    "error_group_users", metadata,
    Column("fingerprint", Text, primary_key=True), Column("user_id", Text, primary_key=True),
    Column("first_seen", TZ, nullable=False),
)  # fmt: skip

error_alerts = Table(
    "error_alerts", metadata,
    Column("id", BigInteger, primary_key=True), Column("kind", Text, nullable=False),
    Column("fingerprint", Text, nullable=False), Column("payload", JSONB, nullable=False),
    Column("created_at", TZ, nullable=False), Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", TZ, nullable=False), Column("delivered_at", TZ), Column("last_error", Text),
)  # fmt: skip

query_patterns = Table(
    "query_patterns", metadata,
    Column("query_hash", Text, primary_key=True), Column("normalized_query", Text, nullable=False),
    Column("query_type", Text, nullable=False), Column("table_name", Text, nullable=False),
    Column("db_system", Text), Column("first_seen", TZ, nullable=False),
    Column("last_seen", TZ, nullable=False),
)  # fmt: skip


def _rollup(name: str, keys: list[tuple[str, type]], measures: list[tuple[str, type]]) -> Table:
    return Table(
        name, metadata,
        Column("day", Date, primary_key=True),
        *[Column(key, kind, primary_key=True) for key, kind in keys],
        *[Column(measure, kind, nullable=kind is Double) for measure, kind in measures],
        Column("updated_at", TZ, nullable=False),
    )  # fmt: skip


daily_user_analytics = _rollup(
    "daily_user_analytics",
    [("service_name", Text), ("environment", Text), ("user_role", Text)],
    [("active_users", Integer), ("sessions", Integer), ("avg_session_duration_s", Double),
     ("pages_per_session", Double), ("bounce_rate", Double), ("page_views", Integer),
     ("actions", Integer)],
)  # fmt: skip

daily_page_analytics = _rollup(
    "daily_page_analytics",
    [("service_name", Text), ("environment", Text), ("page_slug", Text), ("user_role", Text)],
    [("page_views", Integer), ("unique_users", Integer), ("avg_time_on_page_s", Double),
     ("avg_scroll_depth", Double)],
)  # fmt: skip

daily_api_performance = _rollup(
    "daily_api_performance",
    [("service_name", Text), ("environment", Text), ("endpoint_path", Text),
     ("http_method", Text), ("user_role", Text)],
    [("request_count", BigInteger), ("error_count", BigInteger), ("slow_count", BigInteger),
     ("avg_ms", Double), ("p50_ms", Double), ("p95_ms", Double), ("p99_ms", Double),
     ("max_ms", Double)],
)  # fmt: skip

daily_error_summary = _rollup(
    "daily_error_summary",
    [("service_name", Text), ("environment", Text), ("error_type", Text), ("fingerprint", Text),
     ("user_role", Text)],
    [("occurrences", BigInteger), ("crashes", BigInteger), ("users_affected", BigInteger)],
)  # fmt: skip

erased_subjects = Table(
    "erased_subjects", metadata,
    Column("subject_hash", Text, primary_key=True), Column("erased_at", TZ, nullable=False),
)  # fmt: skip

audit_log = Table(
    "audit_log", metadata,
    Column("id", BigInteger, primary_key=True), Column("at", TZ, nullable=False),
    Column("actor", Text, nullable=False), Column("action", Text, nullable=False),
    Column("target", Text), Column("details", JSONB),
)  # fmt: skip

metric_series_state = Table(
    "metric_series_state", metadata,
    Column("series_key", Text, primary_key=True), Column("value", Double, nullable=False),
    Column("time_unix_nano", BigInteger, nullable=False),
    Column("start_time_unix_nano", BigInteger, nullable=False),
    Column("updated_at", TZ, nullable=False),
)  # fmt: skip

user_page_leaves = Table(
    "user_page_leaves", metadata,
    Column("id", UUID, primary_key=True), Column("page_view_id", Text, nullable=False),
    Column("session_id", Text, nullable=False), Column("left_at", TZ, nullable=False),
    Column("time_on_page", Integer), Column("scroll_depth", Integer),
    Column("interactions_count", Integer), Column("created_at", TZ, nullable=False),
)  # fmt: skip

frontend_perf_events = Table(
    "frontend_perf_events", metadata,
    Column("id", UUID, primary_key=True), Column("perf_key", Text, nullable=False),
    Column("page_view_id", Text), Column("session_id", Text, nullable=False),
    Column("page_slug", Text, nullable=False), Column("page_path", Text), *_identity(),
    Column("event_name", Text, nullable=False), Column("metric", Text), Column("value", Double),
    Column("resource", JSONB), Column("at", TZ, nullable=False),
    Column("service_name", Text, nullable=False), Column("service_version", Text),
    Column("environment", Text), Column("created_at", TZ, nullable=False),
)  # fmt: skip

PARTITIONED_TABLES = [t for t in metadata.sorted_tables if "time_column" in t.info]
