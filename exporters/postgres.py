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
from otel_bridge.exporters import derived, erased, error_groups
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


def _render(query: sql.Composable) -> bytes:
    """Statements built once, as bytes: psycopg would otherwise re-render a `sql.Composed` on
    every execute, which measured a quarter of the writer's CPU."""
    return query.as_bytes(None)


class _TableCopy:
    """Precomputed statements for one row type."""

    def __init__(self, row_type: Any) -> None:
        self.row_type = row_type
        self.table = row_type.table
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in row_type._fields)
        stage = sql.Identifier(_staging(self.table))
        self.create_stage = _render(sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(stage, sql.Identifier(self.table)))
        self.copy = _render(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(stage, columns))
        # Error tables report what they really inserted: those rows are the groups' occurrences.
        returning = error_groups.RETURNING.get(self.table)
        self.move = _render(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} AS s {} ON CONFLICT DO NOTHING{}").format(
            sql.Identifier(self.table), columns, columns, stage,
            _SAME_OCCURRENCE if "occurrence_key" in row_type._fields else sql.SQL(""),
            sql.SQL(" RETURNING " + returning) if returning else sql.SQL(""),
        ))  # fmt: skip
        self.pg_types = list(row_type.pg_types)
        self.returns = returning is not None
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

_INSERT_PATTERNS = _render(sql.SQL(
    "INSERT INTO query_patterns ({}) SELECT * FROM unnest("
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[]"
    ") ON CONFLICT (query_hash) DO NOTHING"
).format(sql.SQL(", ").join(sql.Identifier(c) for c in QueryPatternRow._fields)))

_TOUCH_PATTERNS = _render(sql.SQL(
    "UPDATE query_patterns AS q SET last_seen = s.last_seen "
    "FROM unnest(%s::text[], %s::timestamptz[]) AS s(query_hash, last_seen) "
    "WHERE q.query_hash = s.query_hash AND q.last_seen < s.last_seen - interval {}"
).format(sql.Literal(LAST_SEEN_RESOLUTION)))


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


async def prepare_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pool `configure` hook: create this connection's staging tables once."""
    for copy in _COPIES.values():
        await conn.execute(copy.create_stage)
    await conn.commit()


class PostgresWriter:
    """Writes mapped rows through a pool opened with `prepare_connection` as its configure hook."""

    def __init__(self, pool: Any, alerts: bool = False, subject_hash: erased.SubjectHash | None = None) -> None:
        """`alerts`: queue new groups and regressions for the webhook notifier. `subject_hash`:
        the keyed hash of forgotten users and sessions, whose rows are then never stored again."""
        self._pool = pool
        self._alerts = alerts
        self._subject_hash = subject_hash

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
        """Store one request's TraceRows or LogRows in one transaction: the rows, then what is
        derived from them (query patterns, sessions, page performance)."""
        async with self._transaction() as conn:
            if self._subject_hash is not None:
                await erased.drop_erased(conn, rows, self._subject_hash)
            inserted_errors: list[error_groups.Occurrence] = []
            for table_rows in rows.event_rows():
                if table_rows and table_rows[0].__class__ in derived.BREADCRUMB_ROW_TYPES:
                    table_rows[:] = await derived.with_session_breadcrumbs(conn, table_rows)
                if table_rows:
                    inserted = await self._copy(conn, _COPIES[type(table_rows[0])], table_rows)
                    inserted_errors += error_groups.occurrences(inserted)
            if inserted_errors:
                await error_groups.record(conn, inserted_errors, self._alerts)
            if rows.query_patterns:
                await self._register_patterns(conn, list(rows.query_patterns.values()))
            if rows.session_meta:
                await derived.refresh_sessions(conn, rows.session_meta)
            perf_keys = rows.perf_keys()
            if perf_keys:
                await derived.refresh_frontend(conn, perf_keys)

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

    async def _copy(self, conn: psycopg.AsyncConnection[Any], copy: _TableCopy, rows: list[Any]) -> list[Any]:
        """COPY into staging, move what is new; the moved rows' RETURNING values, if any."""
        async with conn.cursor() as cur:
            async with cur.copy(copy.copy) as pg_copy:
                pg_copy.set_types(copy.pg_types)
                write_row, adapt = pg_copy.write_row, copy.adapt
                for row in rows:
                    await write_row(adapt(row))
            await cur.execute(copy.move)
            return await cur.fetchall() if copy.returns else []

    async def _register_patterns(
        self, conn: psycopg.AsyncConnection[Any], patterns: list[QueryPatternRow]
    ) -> None:
        # Sorted so concurrent transactions take row locks in the same order (no deadlocks).
        patterns.sort(key=lambda p: p.query_hash)
        columns = list(zip(*patterns))
        async with conn.cursor() as cur:
            await cur.execute(_INSERT_PATTERNS, [list(c) for c in columns])
            await cur.execute(_TOUCH_PATTERNS, [list(columns[0]), list(columns[-1])])
