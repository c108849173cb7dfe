"""The only code that writes rows to PostgreSQL.

One Export request is one transaction. Rows are binary-COPYed into per-connection temporary
staging tables, then moved with `INSERT ... SELECT ... ON CONFLICT DO NOTHING`: the fastest
idempotent write measured here (research/ceilings.md A), so a re-sent request stores nothing
twice. The caller answers the sender only after `write_*` returns, i.e. after COMMIT.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from otel_bridge.errors import PermanentError, RetryableError
from otel_bridge.exporters.metrics import MetricRows, PreviousPoint, apply_rates
from otel_bridge.exporters.rows import EVENT_ROW_TYPES, QueryPatternRow, ServerMetricsRow

log = logging.getLogger(__name__)

# Query patterns are shared by every request; refreshing last_seen at most this often keeps hot
# patterns from becoming a row-lock queue between concurrent transactions.
LAST_SEEN_RESOLUTION = "1 minute"


def _staging(table: str) -> str:
    return f"otel_bridge_stage_{table}"


# A framework records one failure on several spans, and a batching SDK may export those spans in
# different requests: an error already stored for the same trace and occurrence is not stored
# again (within a request, the mapping merges them already; DESIGN §5 rule 2).
# Probed by trace_id alone: a time-range condition here made the planner AND in the (unselective)
# timestamp index and cost PostgreSQL 3x the CPU per span in the ingest benchmark.
_SAME_OCCURRENCE = sql.SQL(
    "WHERE s.trace_id IS NULL OR NOT EXISTS (SELECT 1 FROM error_logs AS e "
    "WHERE e.trace_id = s.trace_id AND e.occurrence_key = s.occurrence_key)"
)


class _TableCopy:
    """Precomputed statements for one row type."""

    def __init__(self, row_type: Any) -> None:
        self.row_type = row_type
        self.table = row_type.table
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in row_type._fields)
        stage = sql.Identifier(_staging(self.table))
        self.create_stage = sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(stage, sql.Identifier(self.table))
        self.copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(stage, columns)
        self.move = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} AS s {} ON CONFLICT DO NOTHING").format(
            sql.Identifier(self.table), columns, columns, stage,
            _SAME_OCCURRENCE if "occurrence_key" in row_type._fields else sql.SQL(""),
        )  # fmt: skip
        self.json_columns = [i for i, t in enumerate(row_type.pg_types) if t == "jsonb"]

    def adapt(self, row: Sequence[Any]) -> Sequence[Any]:
        if not self.json_columns:
            return row
        values = list(row)
        for i in self.json_columns:
            if values[i] is not None:
                values[i] = Jsonb(values[i])
        return values


_COPIES = {row_type: _TableCopy(row_type) for row_type in EVENT_ROW_TYPES}

_INSERT_PATTERNS = sql.SQL(
    "INSERT INTO query_patterns ({}) SELECT * FROM unnest("
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[]"
    ") ON CONFLICT (query_hash) DO NOTHING"
).format(sql.SQL(", ").join(sql.Identifier(c) for c in QueryPatternRow._fields))

_TOUCH_PATTERNS = sql.SQL(
    "UPDATE query_patterns AS q SET last_seen = s.last_seen "
    "FROM unnest(%s::text[], %s::timestamptz[]) AS s(query_hash, last_seen) "
    "WHERE q.query_hash = s.query_hash AND q.last_seen < s.last_seen - interval {}"
).format(sql.Literal(LAST_SEEN_RESOLUTION))


_LOCK_SERIES = (
    "SELECT series_key, value, time_unix_nano, start_time_unix_nano FROM metric_series_state "
    "WHERE series_key = ANY(%s) ORDER BY series_key FOR UPDATE"
)
_SAVE_SERIES = (
    "INSERT INTO metric_series_state AS m (series_key, value, time_unix_nano, start_time_unix_nano) "
    "SELECT * FROM unnest(%s::text[], %s::float8[], %s::int8[], %s::int8[]) "
    "ON CONFLICT (series_key) DO UPDATE SET value = EXCLUDED.value, "
    "time_unix_nano = EXCLUDED.time_unix_nano, start_time_unix_nano = EXCLUDED.start_time_unix_nano, "
    "updated_at = now() WHERE m.time_unix_nano < EXCLUDED.time_unix_nano"
)


# time_on_page: the page_leave's own figure when there is one, else the time until the next view
# of the same session; scroll depth and interactions from the page_leave.
_REFRESH_PAGE_VIEWS = """
WITH views AS (
  SELECT id, view_timestamp, page_view_id,
         lead(view_timestamp) OVER (PARTITION BY session_id ORDER BY view_timestamp, id) AS next_at
  FROM user_page_views WHERE session_id = ANY(%(s)s)
), leaves AS (
  SELECT page_view_id, max(time_on_page) AS seconds, max(scroll_depth) AS scroll,
         max(interactions_count) AS interactions
  FROM user_page_leaves WHERE session_id = ANY(%(s)s) GROUP BY page_view_id
), computed AS (
  SELECT v.id, v.view_timestamp, l.scroll, l.interactions,
         coalesce(l.seconds, round(extract(epoch FROM v.next_at - v.view_timestamp))::int) AS seconds
  FROM views v LEFT JOIN leaves l ON l.page_view_id = v.page_view_id
)
UPDATE user_page_views p
SET time_on_page = c.seconds, scroll_depth = coalesce(c.scroll, p.scroll_depth),
    interactions_count = coalesce(c.interactions, p.interactions_count)
FROM computed c
WHERE p.id = c.id AND p.view_timestamp = c.view_timestamp
  AND (p.time_on_page IS DISTINCT FROM c.seconds
       OR p.scroll_depth IS DISTINCT FROM coalesce(c.scroll, p.scroll_depth)
       OR p.interactions_count IS DISTINCT FROM coalesce(c.interactions, p.interactions_count))
"""

# One frontend_performance_metrics row per page view, recomputed from its stored events: the
# latest value of each metric (web vitals are re-reported as they change), timed at the page view.
_DELETE_FRONTEND = "DELETE FROM frontend_performance_metrics WHERE perf_key = ANY(%(k)s)"
_INSERT_FRONTEND = """
INSERT INTO frontend_performance_metrics (id, perf_key, page_view_id, user_id, user_role, session_id,
  page_slug, page_path, page_load_time, time_to_first_byte, first_contentful_paint,
  largest_contentful_paint, cumulative_layout_shift, first_input_delay, interaction_to_next_paint,
  time_to_interactive, dom_content_loaded, window_load, javascript_execution_time,
  resource_load_times, "timestamp", service_name, service_version, environment)
SELECT md5(e.perf_key)::uuid, e.perf_key, max(e.page_view_id),
       (array_agg(e.user_id ORDER BY e.at DESC) FILTER (WHERE e.user_id IS NOT NULL))[1],
       (array_agg(e.user_role ORDER BY e.at DESC) FILTER (WHERE e.user_role IS NOT NULL))[1],
       max(e.session_id), coalesce(max(v.page_slug), max(e.page_slug)), max(e.page_path),
       round((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'page_load_time'))[1]),
       round(coalesce((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'ttfb'))[1],
                      (array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'nav_ttfb'))[1])),
       round((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'fcp'))[1]),
       round((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'lcp'))[1]),
       round(((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'cls'))[1])::numeric, 4),
       round((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'fid'))[1]),
       round((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'inp'))[1]),
       round((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'time_to_interactive'))[1]),
       round((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'dom_content_loaded'))[1]),
       round((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'page_load_time'))[1]),
       round((array_agg(e.value ORDER BY e.at DESC) FILTER (WHERE e.metric = 'javascript_execution_time'))[1]),
       jsonb_agg(e.resource ORDER BY e.at) FILTER (WHERE e.metric = 'resource'),
       coalesce(min(v.view_timestamp), min(e.at)), max(e.service_name), max(e.service_version),
       max(e.environment)
FROM frontend_perf_events e
LEFT JOIN user_page_views v ON v.page_view_id = e.page_view_id AND e.page_view_id IS NOT NULL
WHERE e.perf_key = ANY(%(k)s)
GROUP BY e.perf_key
"""

_UPSERT_SESSIONS = """
WITH events AS (
  SELECT session_id, view_timestamp AS at, user_id, user_role, service_name, service_version,
         environment, device_info
  FROM user_page_views WHERE session_id = ANY(%(s)s)
  UNION ALL
  SELECT session_id, action_timestamp, user_id, user_role, service_name, service_version,
         environment, device_info
  FROM user_actions WHERE session_id = ANY(%(s)s)
), agg AS (
  SELECT session_id, min(at) AS started, max(at) AS ended,
         (array_agg(user_id ORDER BY at DESC) FILTER (WHERE user_id IS NOT NULL))[1] AS user_id,
         (array_agg(user_role ORDER BY at DESC) FILTER (WHERE user_role <> 'anonymous'))[1] AS user_role,
         (array_agg(service_name ORDER BY at))[1] AS service_name,
         (array_agg(service_version ORDER BY at DESC))[1] AS service_version,
         (array_agg(environment ORDER BY at DESC))[1] AS environment,
         (array_agg(device_info ORDER BY at DESC) FILTER (WHERE device_info IS NOT NULL))[1] AS device_info
  FROM events GROUP BY session_id
), pages AS (
  SELECT session_id, array_agg(page_slug ORDER BY view_timestamp, id) AS pages
  FROM user_page_views WHERE session_id = ANY(%(s)s) GROUP BY session_id
), actions AS (
  SELECT session_id, count(*) AS n FROM user_actions WHERE session_id = ANY(%(s)s) GROUP BY session_id
), meta AS (
  SELECT * FROM unnest(%(s)s::text[], %(ips)s::text[], %(uas)s::text[]) AS m(session_id, ip, ua)
)
INSERT INTO user_sessions AS u (id, session_id, user_id, user_role, session_start, session_end,
  session_duration, pages_visited, actions_count, device_info, ip_address, user_agent, service_name,
  service_version, environment, updated_at)
SELECT md5(a.session_id)::uuid, a.session_id, a.user_id, coalesce(a.user_role, 'anonymous'),
       a.started, a.ended, round(extract(epoch FROM a.ended - a.started))::int,
       coalesce(p.pages, '{}'), coalesce(n.n, 0), a.device_info, m.ip, m.ua, a.service_name,
       a.service_version, a.environment, now()
FROM agg a LEFT JOIN pages p USING (session_id) LEFT JOIN actions n USING (session_id)
     LEFT JOIN meta m USING (session_id)
ORDER BY a.session_id
ON CONFLICT (session_id) DO UPDATE SET
  user_id = coalesce(EXCLUDED.user_id, u.user_id), user_role = EXCLUDED.user_role,
  session_start = EXCLUDED.session_start, session_end = EXCLUDED.session_end,
  session_duration = EXCLUDED.session_duration, pages_visited = EXCLUDED.pages_visited,
  actions_count = EXCLUDED.actions_count, device_info = coalesce(EXCLUDED.device_info, u.device_info),
  ip_address = coalesce(EXCLUDED.ip_address, u.ip_address),
  user_agent = coalesce(EXCLUDED.user_agent, u.user_agent), service_version = EXCLUDED.service_version,
  environment = EXCLUDED.environment, updated_at = now()
"""


async def prepare_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pool `configure` hook: create this connection's staging tables once."""
    for copy in _COPIES.values():
        await conn.execute(copy.create_stage)
    await conn.commit()


class PostgresWriter:
    """Writes mapped rows through a pool opened with `prepare_connection` as its configure hook."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection in a transaction, with psycopg errors translated at this edge: data the
        database refuses is permanent; everything else (connection lost, pool timeout, shutdown,
        statement timeout) is retryable."""
        try:
            async with self._pool.connection() as conn:
                async with conn.transaction():
                    yield conn
        except psycopg.DataError as exc:
            raise PermanentError(f"database refused the data: {exc}") from exc
        except (psycopg.Error, OSError) as exc:
            raise RetryableError(f"database unavailable: {type(exc).__name__}: {exc}") from exc

    async def write(self, rows: Any) -> None:
        """Store one request's rows (TraceRows, LogRows: `event_rows()` and `query_patterns`)
        in one transaction."""
        async with self._transaction() as conn:
            for table_rows in rows.event_rows():
                if table_rows:
                    await self._copy(conn, _COPIES[type(table_rows[0])], table_rows)
            if rows.query_patterns:
                await self._register_patterns(conn, list(rows.query_patterns.values()))
            session_meta = getattr(rows, "session_meta", None)
            if session_meta:
                await self._refresh_sessions(conn, session_meta)
            perf_keys = rows.perf_keys() if hasattr(rows, "perf_keys") else []
            if perf_keys:
                async with conn.cursor() as cur:
                    await cur.execute(_DELETE_FRONTEND, {"k": perf_keys})
                    await cur.execute(_INSERT_FRONTEND, {"k": perf_keys})

    async def write_metrics(self, rows: MetricRows) -> None:
        """Rates need the previous point of each cumulative series: read (and lock, in key order,
        so concurrent requests of one app queue instead of deadlocking) and update it in the same
        transaction as the rows."""
        async with self._transaction() as conn:
            previous: dict[str, PreviousPoint] = {}
            keys = sorted({c.series for c in rows.counters})
            async with conn.cursor() as cur:
                if keys:
                    await cur.execute(_LOCK_SERIES, (keys,))
                    for key, value, time_ns, start_ns in await cur.fetchall():
                        previous[key] = PreviousPoint(value, time_ns, start_ns)
                remember = apply_rates(rows, previous)
                if remember:
                    items = sorted(remember.items())
                    await cur.execute(_SAVE_SERIES, (
                        [k for k, _ in items], [p.value for _, p in items],
                        [p.time_unix_nano for _, p in items], [p.start_time_unix_nano for _, p in items],
                    ))  # fmt: skip
            if rows.rows:
                await self._copy(conn, _COPIES[ServerMetricsRow], rows.rows)

    async def _refresh_sessions(self, conn: psycopg.AsyncConnection[Any], meta: dict[str, Any]) -> None:
        """Recompute, from the stored rows, each touched session and the time on page of its
        views: right whatever order events arrived in, and a no-op for a re-sent request."""
        ids = sorted(meta)
        async with conn.cursor() as cur:
            await cur.execute(_REFRESH_PAGE_VIEWS, {"s": ids})
            await cur.execute(_UPSERT_SESSIONS, {
                "s": ids, "ips": [meta[i].ip_address for i in ids], "uas": [meta[i].user_agent for i in ids],
            })  # fmt: skip

    async def _copy(self, conn: psycopg.AsyncConnection[Any], copy: _TableCopy, rows: list[Any]) -> None:
        async with conn.cursor() as cur:
            async with cur.copy(copy.copy) as pg_copy:
                pg_copy.set_types(list(copy.row_type.pg_types))
                for row in rows:
                    await pg_copy.write_row(copy.adapt(row))
            await cur.execute(copy.move)

    async def _register_patterns(
        self, conn: psycopg.AsyncConnection[Any], patterns: list[QueryPatternRow]
    ) -> None:
        # Sorted so concurrent transactions take row locks in the same order (no deadlocks).
        patterns.sort(key=lambda p: p.query_hash)
        columns = list(zip(*patterns))
        async with conn.cursor() as cur:
            await cur.execute(_INSERT_PATTERNS, [list(c) for c in columns])
            await cur.execute(_TOUCH_PATTERNS, [list(columns[0]), list(columns[-1])])
