"""Initial schema: the ten seed tables (monthly partitions) and otel-bridge's own tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

The seed plan's tables keep its columns and indexes, with the changes of DESIGN §4: text user and
session ids (OTel ids are strings), double precision durations, service/environment columns,
trace/span/page-view ids for drill-down, and `PRIMARY KEY (id, <time column>)` because a primary
key of a partitioned table must contain the partition key.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMMON = """
  service_name TEXT NOT NULL DEFAULT 'unknown_service',
  service_version TEXT,
  environment TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()"""

TRACE_LINK = """
  trace_id TEXT,
  span_id TEXT,
  page_view_id TEXT"""

RESOLUTION = """
  fingerprint TEXT,
  resolved BOOLEAN NOT NULL DEFAULT false,
  resolved_at TIMESTAMPTZ,
  resolved_by TEXT"""

# (table, time column, columns, indexed columns); every one is range-partitioned by month.
PARTITIONED: list[tuple[str, str, str, list[str]]] = [
    ("user_page_views", "view_timestamp", """
  id UUID NOT NULL,
  user_id TEXT,
  user_role TEXT NOT NULL DEFAULT 'anonymous',
  session_id TEXT NOT NULL,
  page_slug TEXT NOT NULL,
  page_path TEXT NOT NULL,
  url TEXT,
  referrer TEXT,
  view_timestamp TIMESTAMPTZ NOT NULL DEFAULT now(),
  time_on_page INTEGER,
  scroll_depth INTEGER,
  interactions_count INTEGER NOT NULL DEFAULT 0,
  device_info JSONB,""", ["user_id", "session_id", "page_slug", "view_timestamp", "user_role", "page_view_id"]),
    ("user_actions", "action_timestamp", """
  id UUID NOT NULL,
  user_id TEXT,
  user_role TEXT NOT NULL DEFAULT 'anonymous',
  session_id TEXT NOT NULL,
  page_slug TEXT NOT NULL,
  action_type TEXT NOT NULL,
  action_target TEXT,
  action_context JSONB,
  action_timestamp TIMESTAMPTZ NOT NULL DEFAULT now(),
  device_info JSONB,""", ["user_id", "session_id", "page_slug", "action_type", "action_timestamp", "user_role"]),
    ("api_performance_metrics", "request_timestamp", """
  id UUID NOT NULL,
  endpoint_path TEXT NOT NULL,
  http_method TEXT NOT NULL,
  request_timestamp TIMESTAMPTZ NOT NULL DEFAULT now(),
  response_time_ms DOUBLE PRECISION NOT NULL,
  status_code INTEGER,
  request_size_bytes BIGINT,
  response_size_bytes BIGINT,
  user_id TEXT,
  user_role TEXT,
  session_id TEXT,
  ip_address TEXT,
  user_agent TEXT,
  slow_request BOOLEAN NOT NULL DEFAULT false,""", ["endpoint_path", "request_timestamp", "status_code", "user_id", "response_time_ms"]),
    ("database_performance_metrics", "timestamp", """
  id UUID NOT NULL,
  query_type TEXT NOT NULL,
  table_name TEXT NOT NULL,
  query_duration_ms DOUBLE PRECISION NOT NULL,
  rows_affected BIGINT,
  query_hash TEXT,
  slow_query BOOLEAN NOT NULL DEFAULT false,
  connection_pool_size INTEGER,
  "timestamp" TIMESTAMPTZ NOT NULL DEFAULT now(),
  db_system TEXT,
  db_namespace TEXT,
  user_id TEXT,
  user_role TEXT,""", ["table_name", "timestamp", "slow_query", "query_hash"]),
    ("frontend_performance_metrics", "timestamp", """
  id UUID NOT NULL,
  user_id TEXT,
  user_role TEXT,
  session_id TEXT NOT NULL,
  page_slug TEXT NOT NULL,
  page_path TEXT,
  page_load_time INTEGER,
  time_to_first_byte INTEGER,
  first_contentful_paint INTEGER,
  largest_contentful_paint INTEGER,
  cumulative_layout_shift NUMERIC(10,4),
  first_input_delay INTEGER,
  interaction_to_next_paint INTEGER,
  time_to_interactive INTEGER,
  dom_content_loaded INTEGER,
  window_load INTEGER,
  javascript_execution_time INTEGER,
  resource_load_times JSONB,
  "timestamp" TIMESTAMPTZ NOT NULL DEFAULT now(),""", ["user_id", "session_id", "page_slug", "timestamp", "page_view_id"]),
    ("server_performance_metrics", "timestamp", """
  id UUID NOT NULL,
  service_instance_id TEXT,
  cpu_usage NUMERIC(6,2),
  memory_usage_mb INTEGER,
  event_loop_lag_ms INTEGER,
  active_handles INTEGER,
  active_requests INTEGER,
  uptime_seconds INTEGER,
  request_rate NUMERIC(10,2),
  error_rate NUMERIC(10,2),
  "timestamp" TIMESTAMPTZ NOT NULL DEFAULT now(),""", ["timestamp"]),
    ("error_logs", "error_timestamp", """
  id UUID NOT NULL,
  error_id UUID NOT NULL,
  error_type TEXT NOT NULL,
  error_message TEXT NOT NULL,
  error_stack TEXT,
  error_code TEXT,
  exception_type TEXT,
  error_timestamp TIMESTAMPTZ NOT NULL DEFAULT now(),
  user_id TEXT,
  user_role TEXT,
  session_id TEXT,
  page_slug TEXT,
  url TEXT,
  user_agent TEXT,
  device_info JSONB,
  breadcrumbs JSONB,
  context JSONB,
  occurrence_key TEXT,""" + RESOLUTION + ",", ["error_type", "user_id", "session_id", "error_timestamp", "resolved", "error_code", "fingerprint", "trace_id"]),
    ("crash_reports", "crash_timestamp", """
  id UUID NOT NULL,
  crash_id UUID NOT NULL,
  crash_type TEXT NOT NULL,
  crash_message TEXT NOT NULL,
  crash_stack TEXT NOT NULL,
  exception_type TEXT,
  crash_timestamp TIMESTAMPTZ NOT NULL DEFAULT now(),
  user_id TEXT,
  user_role TEXT,
  session_id TEXT,
  page_slug TEXT,
  url TEXT,
  user_agent TEXT,
  device_info JSONB,
  memory_info JSONB,
  performance_info JSONB,
  breadcrumbs JSONB,
  release_version TEXT,""" + RESOLUTION + ",", ["crash_type", "user_id", "crash_timestamp", "resolved", "environment", "fingerprint"]),
    ("api_error_logs", "error_timestamp", """
  id UUID NOT NULL,
  error_id UUID NOT NULL,
  endpoint_path TEXT NOT NULL,
  http_method TEXT NOT NULL,
  status_code INTEGER NOT NULL,
  error_message TEXT NOT NULL,
  error_stack TEXT,
  exception_type TEXT,
  request_body JSONB,
  request_headers JSONB,
  response_body JSONB,
  error_timestamp TIMESTAMPTZ NOT NULL DEFAULT now(),
  user_id TEXT,
  user_role TEXT,
  session_id TEXT,
  ip_address TEXT,
  user_agent TEXT,""" + RESOLUTION + ",", ["endpoint_path", "status_code", "user_id", "error_timestamp", "resolved", "fingerprint"]),
]

UNIQUE_EVENT_IDS = {"error_logs": "error_id", "crash_reports": "crash_id", "api_error_logs": "error_id"}

PLAIN_TABLES = """
CREATE TABLE user_sessions (
  id UUID PRIMARY KEY,
  session_id TEXT NOT NULL UNIQUE,
  user_id TEXT,
  user_role TEXT NOT NULL DEFAULT 'anonymous',
  session_start TIMESTAMPTZ NOT NULL DEFAULT now(),
  session_end TIMESTAMPTZ,
  session_duration INTEGER,
  pages_visited TEXT[],
  actions_count INTEGER NOT NULL DEFAULT 0,
  device_info JSONB,
  ip_address TEXT,
  user_agent TEXT,
  service_name TEXT NOT NULL DEFAULT 'unknown_service',
  service_version TEXT,
  environment TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_user_sessions_user_id ON user_sessions (user_id);
CREATE INDEX idx_user_sessions_session_start ON user_sessions (session_start);
CREATE INDEX idx_user_sessions_user_role ON user_sessions (user_role);

CREATE TABLE error_groups (
  fingerprint TEXT PRIMARY KEY,
  title TEXT NOT NULL,
  error_type TEXT NOT NULL,
  exception_type TEXT,
  service_name TEXT,
  first_seen TIMESTAMPTZ NOT NULL,
  last_seen TIMESTAMPTZ NOT NULL,
  occurrences BIGINT NOT NULL DEFAULT 0,
  users_affected BIGINT NOT NULL DEFAULT 0,
  last_release TEXT,
  status TEXT NOT NULL DEFAULT 'unresolved' CHECK (status IN ('unresolved', 'resolved', 'ignored')),
  resolved_at TIMESTAMPTZ,
  resolved_by TEXT,
  resolved_in_release TEXT,
  regressed_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_error_groups_status ON error_groups (status);
CREATE INDEX idx_error_groups_last_seen ON error_groups (last_seen);

CREATE TABLE query_patterns (
  query_hash TEXT PRIMARY KEY,
  normalized_query TEXT NOT NULL,
  query_type TEXT NOT NULL,
  table_name TEXT NOT NULL,
  db_system TEXT,
  first_seen TIMESTAMPTZ NOT NULL,
  last_seen TIMESTAMPTZ NOT NULL
);

CREATE TABLE daily_user_analytics (
  day DATE NOT NULL,
  service_name TEXT NOT NULL,
  environment TEXT NOT NULL DEFAULT '',
  user_role TEXT NOT NULL DEFAULT '',
  active_users INTEGER NOT NULL DEFAULT 0,
  sessions INTEGER NOT NULL DEFAULT 0,
  avg_session_duration_s DOUBLE PRECISION,
  pages_per_session DOUBLE PRECISION,
  bounce_rate DOUBLE PRECISION,
  page_views INTEGER NOT NULL DEFAULT 0,
  actions INTEGER NOT NULL DEFAULT 0,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (day, service_name, environment, user_role)
);

CREATE TABLE daily_api_performance (
  day DATE NOT NULL,
  service_name TEXT NOT NULL,
  environment TEXT NOT NULL DEFAULT '',
  endpoint_path TEXT NOT NULL,
  http_method TEXT NOT NULL,
  user_role TEXT NOT NULL DEFAULT '',
  request_count BIGINT NOT NULL DEFAULT 0,
  error_count BIGINT NOT NULL DEFAULT 0,
  slow_count BIGINT NOT NULL DEFAULT 0,
  avg_ms DOUBLE PRECISION,
  p50_ms DOUBLE PRECISION,
  p95_ms DOUBLE PRECISION,
  p99_ms DOUBLE PRECISION,
  max_ms DOUBLE PRECISION,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (day, service_name, environment, endpoint_path, http_method, user_role)
);

CREATE TABLE daily_error_summary (
  day DATE NOT NULL,
  service_name TEXT NOT NULL,
  environment TEXT NOT NULL DEFAULT '',
  error_type TEXT NOT NULL,
  fingerprint TEXT NOT NULL DEFAULT '',
  user_role TEXT NOT NULL DEFAULT '',
  occurrences BIGINT NOT NULL DEFAULT 0,
  crashes BIGINT NOT NULL DEFAULT 0,
  users_affected BIGINT NOT NULL DEFAULT 0,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (day, service_name, environment, error_type, fingerprint, user_role)
);

CREATE TABLE erased_subjects (
  subject_hash TEXT PRIMARY KEY,
  erased_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at TIMESTAMPTZ NOT NULL DEFAULT now(),
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  target TEXT,
  details JSONB
);
CREATE INDEX idx_audit_log_at ON audit_log (at);
"""

# Creates the monthly partitions of every partitioned table from this month to `months_ahead`
# months ahead, plus a DEFAULT partition so no row is ever refused. When rows for a month already
# sit in the default partition (the month had no partition yet), they are moved into the new one.
ENSURE_PARTITIONS = r"""
CREATE FUNCTION otel_bridge_ensure_partitions(months_ahead INTEGER DEFAULT 2)
RETURNS INTEGER LANGUAGE plpgsql AS $fn$
DECLARE
  parent RECORD;
  month_start DATE;
  part TEXT;
  time_column TEXT;
  created INTEGER := 0;
BEGIN
  FOR parent IN
    SELECT c.oid, c.relname FROM pg_partitioned_table p
    JOIN pg_class c ON c.oid = p.partrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema()
  LOOP
    time_column := substring(pg_get_partkeydef(parent.oid) FROM '\((.*)\)');
    time_column := trim(both '"' FROM time_column);
    IF to_regclass(quote_ident(parent.relname || '_default')) IS NULL THEN
      EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', parent.relname || '_default', parent.relname);
      created := created + 1;
    END IF;
    FOR i IN 0..months_ahead LOOP
      month_start := (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => i))::date;
      part := parent.relname || '_p' || to_char(month_start, 'YYYYMM');
      CONTINUE WHEN to_regclass(quote_ident(part)) IS NOT NULL;
      BEGIN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       part, parent.relname, month_start, (month_start + interval '1 month')::date);
      EXCEPTION WHEN check_violation THEN
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', part, parent.relname);
        EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) '
                       'INSERT INTO %I SELECT * FROM moved',
                       parent.relname || '_default', time_column, month_start, time_column,
                       (month_start + interval '1 month')::date, part);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       parent.relname, part, month_start, (month_start + interval '1 month')::date);
      END;
      created := created + 1;
    END LOOP;
  END LOOP;
  RETURN created;
END
$fn$;
"""


def upgrade() -> None:
    """Create every table of DESIGN §4 and this month's and next months' partitions."""
    for table, time_column, columns, indexed in PARTITIONED:
        unique = ""
        if table in UNIQUE_EVENT_IDS:
            unique = f",\n  UNIQUE ({UNIQUE_EVENT_IDS[table]}, {time_column})"
        op.execute(
            f"CREATE TABLE {table} ({columns}{TRACE_LINK},{COMMON},\n"
            f"  PRIMARY KEY (id, {time_column}){unique}\n) PARTITION BY RANGE ({time_column})"
        )
        for column in indexed:
            op.execute(f'CREATE INDEX idx_{table}_{column} ON {table} ("{column}")')
    op.execute(PLAIN_TABLES)
    op.execute(ENSURE_PARTITIONS)
    op.execute("SELECT otel_bridge_ensure_partitions(2)")


def downgrade() -> None:
    """Drop everything upgrade created (partitions go with their parents)."""
    op.execute("DROP FUNCTION IF EXISTS otel_bridge_ensure_partitions(INTEGER)")
    tables = [t for t, *_ in PARTITIONED] + [
        "user_sessions", "error_groups", "query_patterns", "daily_user_analytics",
        "daily_api_performance", "daily_error_summary", "erased_subjects", "audit_log",
    ]  # fmt: skip
    for table in tables:
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
