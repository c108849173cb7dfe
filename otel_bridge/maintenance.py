"""`otel-bridge maintain`: partitions, sessions, rollups and retention, idempotent.

Run by hand, from cron, or every `OTEL_BRIDGE_MAINTENANCE_INTERVAL_S` inside `serve`. A session
advisory lock makes concurrent runs (several receivers) skip instead of colliding. Steps:

1. partitions for this month and at least two ahead, and for any month whose rows landed in a
   DEFAULT partition (backfills, late data), so retention can drop them whole;
2. sessions idle for 30 minutes are finalized (duration, pages visited in view order, actions);
3. the daily rollups of the last `rollup_days` days are recomputed from the raw rows;
4. retention: whole expired partitions are dropped; rows older than the cutoff left in the
   boundary and DEFAULT partitions (and plain tables) are deleted in small batches.

Retention departs from the issue's "DETACH ... CONCURRENTLY": PostgreSQL refuses a concurrent
detach while the table has a DEFAULT partition (which keeps rows of months without a partition
from failing an Export). A plain DETACH takes a brief ACCESS EXCLUSIVE lock, so it runs with a
short `lock_timeout` (200 ms) and retries; a partition that stays busy is trimmed instead and dropped
on a later pass (benchmarks/queries.py measures the worst commit latency while one is dropped).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from otel_bridge import rollups
from otel_bridge.exporters import derived

log = logging.getLogger(__name__)

LOCK_KEY = 0x07E1B21D  # pg_try_advisory_lock key: one maintenance at a time per database
SESSION_IDLE = timedelta(minutes=30)
DELETE_BATCH = 5000
# A waiting DETACH holds up every insert queued behind it (benchmarks/queries.py saw 1 s stalls at
# 1 s): wait briefly, often, and give up for this pass rather than stall ingestion.
LOCK_TIMEOUT = "200ms"
DETACH_ATTEMPTS = 20

# Partitioned tables by retention class, with their time column.
RAW_PARTITIONED = {"user_page_views": "view_timestamp", "user_actions": "action_timestamp",
                   "api_performance_metrics": "request_timestamp", "database_performance_metrics": "timestamp",
                   "frontend_performance_metrics": "timestamp", "server_performance_metrics": "timestamp"}  # fmt: skip
ERROR_PARTITIONED = {"error_logs": "error_timestamp", "crash_reports": "crash_timestamp",
                     "api_error_logs": "error_timestamp"}  # fmt: skip
RAW_PLAIN = {"user_sessions": "session_start", "user_page_leaves": "left_at", "frontend_perf_events": "at",
             "query_patterns": "last_seen", "metric_series_state": "updated_at"}  # fmt: skip
ERROR_PLAIN = {"error_alerts": "created_at", "error_groups": "last_seen"}
AGGREGATES = {table: "day" for table in rollups.ROLLUPS}


@dataclass(frozen=True)
class MaintenanceSettings:
    raw_days: int = 90
    errors_days: int = 365
    aggregates_days: int = 730
    rollup_days: int = 3
    months_ahead: int = 2


@dataclass
class MaintenanceReport:
    partitions_created: int = 0
    sessions_finalized: int = 0
    rollup_rows: dict[str, int] = field(default_factory=dict)
    rollup_days: tuple[str, str] = ("", "")
    partitions_dropped: list[str] = field(default_factory=list)
    rows_deleted: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        deleted = ", ".join(f"{t} {n}" for t, n in sorted(self.rows_deleted.items()) if n) or "none"
        rolled = ", ".join(f"{t} {n}" for t, n in self.rollup_rows.items())
        return [
            f"partitions created: {self.partitions_created}",
            f"sessions finalized: {self.sessions_finalized}",
            f"rollups for {self.rollup_days[0]}..{self.rollup_days[1]}: {rolled} rows",
            f"expired partitions dropped: {', '.join(self.partitions_dropped) or 'none'}",
            f"expired rows deleted: {deleted}",
            f"took {self.seconds:.1f} s",
        ]


def run(url: str, settings: MaintenanceSettings, now: datetime | None = None,
        actor: str = "otel-bridge") -> MaintenanceReport | None:  # fmt: skip
    """One maintenance pass; None when another one holds the lock. Deleting data is an admin
    action: when retention removed anything, `audit_log` says what, when and by whom."""
    now = now or datetime.now(timezone.utc)
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]
            log.info("maintenance skipped: another run holds the lock")
            return None
        try:
            report = MaintenanceReport()
            report.partitions_created = ensure_partitions(conn, settings, now)
            report.sessions_finalized = finalize_sessions(conn, now)
            first, end = rollups.day_range(now.date(), settings.rollup_days)
            report.rollup_days = (first.isoformat(), (end - timedelta(days=1)).isoformat())
            report.rollup_rows = rollups.refresh(conn, first, end)
            apply_retention(conn, settings, now, report)
            report.seconds = time.monotonic() - started
            if report.partitions_dropped or any(report.rows_deleted.values()):
                details = {"partitions_dropped": report.partitions_dropped,
                           "rows_deleted": {t: n for t, n in report.rows_deleted.items() if n}}  # fmt: skip
                conn.execute("INSERT INTO audit_log (actor, action, target, details) VALUES (%s, 'maintain.retention', "
                             "NULL, %s)", (actor, Jsonb(details)))  # fmt: skip
            return report
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def ensure_partitions(conn: Any, settings: MaintenanceSettings, now: datetime) -> int:
    created = int(conn.execute("SELECT otel_bridge_ensure_partitions(%s)", (settings.months_ahead,)).fetchone()[0])
    oldest = (now - timedelta(days=max(settings.raw_days, settings.errors_days))).date().replace(day=1)
    for table, column in {**RAW_PARTITIONED, **ERROR_PARTITIONED}.items():
        months = conn.execute(
            sql.SQL("SELECT DISTINCT date_trunc('month', {} AT TIME ZONE 'UTC')::date FROM {} WHERE {} >= %s").format(
                sql.Identifier(column), sql.Identifier(f"{table}_default"), sql.Identifier(column)),
            (oldest,),
        ).fetchall()  # fmt: skip
        for (month,) in months:
            created += bool(conn.execute("SELECT otel_bridge_partition_month(%s, %s)", (table, month)).fetchone()[0])
    return created


def finalize_sessions(conn: Any, now: datetime) -> int:
    """Sessions idle for 30 minutes get their final duration, pages and actions from the rows."""
    ids = [r[0] for r in conn.execute(
        "SELECT session_id FROM user_sessions WHERE finalized_at IS NULL AND coalesce(session_end, session_start) < %s",
        (now - SESSION_IDLE,)).fetchall()]  # fmt: skip
    for start in range(0, len(ids), 1000):
        batch = ids[start : start + 1000]
        with conn.transaction():
            for statement, params in derived.session_refresh(batch):
                conn.execute(statement, params)
            conn.execute("UPDATE user_sessions SET finalized_at = now() WHERE session_id = ANY(%s)", (batch,))
    return len(ids)


def _partitions(conn: Any, parent: str) -> list[tuple[str, date]]:
    """(partition, first day after it) for the monthly partitions named `<parent>_pYYYYMM`."""
    found = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s) AND c.relname ~ '_p[0-9]{6}$'", (parent,)).fetchall()  # fmt: skip
    out = []
    for (name,) in found:
        year, month = int(name[-6:-2]), int(name[-2:])
        out.append((name, date(year + month // 12, month % 12 + 1, 1)))
    return sorted(out, key=lambda p: p[1])


def _drop_partition(conn: Any, parent: str, partition: str) -> bool:
    for attempt in range(DETACH_ATTEMPTS):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                # Detach and drop in one function the writer role may call (it owns no table).
                conn.execute("SELECT otel_bridge_drop_partition(%s, %s)", (parent, partition))
            return True
        except psycopg.errors.LockNotAvailable:
            log.info("detaching %s waited too long for its lock; retrying", partition)
            time.sleep(min(3.0, 0.25 * (attempt + 1)))
    log.warning("%s stayed busy (long queries on %s): it is dropped on a later pass", partition, parent)
    return False


def _delete_before(conn: Any, table: str, column: str, cutoff: Any) -> int:
    """Delete rows older than the cutoff in small batches (each its own transaction)."""
    statement = sql.SQL("DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE {c} < %s LIMIT %s))").format(
        t=sql.Identifier(table), c=sql.Identifier(column))  # fmt: skip
    total = 0
    while True:
        deleted = conn.execute(statement, (cutoff, DELETE_BATCH)).rowcount
        total += deleted
        if deleted < DELETE_BATCH:
            return total


def apply_retention(conn: Any, settings: MaintenanceSettings, now: datetime, report: MaintenanceReport) -> None:
    raw_cutoff = now - timedelta(days=settings.raw_days)
    errors_cutoff = now - timedelta(days=settings.errors_days)
    for tables, cutoff in ((RAW_PARTITIONED, raw_cutoff), (ERROR_PARTITIONED, errors_cutoff)):
        for parent, column in tables.items():
            deleted = 0
            for partition, ends in _partitions(conn, parent):
                if ends <= cutoff.date():
                    if _drop_partition(conn, parent, partition):
                        report.partitions_dropped.append(partition)
                    else:  # still trimmed, so no expired row outlives this pass
                        deleted += _delete_before(conn, partition, column, cutoff)
                elif ends - timedelta(days=31) <= cutoff.date():  # the boundary month
                    deleted += _delete_before(conn, partition, column, cutoff)
            deleted += _delete_before(conn, f"{parent}_default", column, cutoff)
            report.rows_deleted[parent] = deleted
    aggregates_cutoff = (now - timedelta(days=settings.aggregates_days)).date()
    for tables, cutoff in ((RAW_PLAIN, raw_cutoff), (ERROR_PLAIN, errors_cutoff), (AGGREGATES, aggregates_cutoff)):
        for table, column in tables.items():
            report.rows_deleted[table] = _delete_before(conn, table, column, cutoff)
    # A group's users go with the group (kept while it lives: users_affected stays exact).
    report.rows_deleted["error_group_users"] = conn.execute(
        "DELETE FROM error_group_users u WHERE NOT EXISTS "
        "(SELECT 1 FROM error_groups g WHERE g.fingerprint = u.fingerprint)").rowcount  # fmt: skip
