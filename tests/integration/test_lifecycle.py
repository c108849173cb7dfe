"""`otel-bridge maintain` on 15 months of synthetic data: partitions (also for backfilled months),
retention per class (raw 90 days, errors 365, aggregates 730), finalized sessions, and rollups
equal to the same aggregates computed directly from the raw rows."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

NOW = datetime.now(timezone.utc)
ROLES = ("Auditor", "Manager", "Admin")

# One row every 8 hours for 15 months, in every table the lifecycle touches.
SEED = """
WITH t AS (
  SELECT g AS at, row_number() OVER () AS n
  FROM generate_series(%(now)s - interval '15 months', %(now)s - interval '1 hour', interval '8 hours') g
)
{insert}
"""
INSERTS = [
    """INSERT INTO api_performance_metrics (id, endpoint_path, http_method, response_time_ms, status_code, user_id,
       user_role, request_timestamp, service_name, environment, slow_request)
       SELECT gen_random_uuid(), '/api/audits/{audit_id}', 'GET', 20 + (n % 50) * 7, CASE WHEN n % 9 = 0 THEN 500 ELSE 200 END,
              'u-' || (n % 7), (ARRAY['Auditor','Manager','Admin'])[1 + n % 3], at, 'cqms-api', 'prod', n % 11 = 0 FROM t""",
    """INSERT INTO user_page_views (id, session_id, page_slug, page_path, user_id, user_role, view_timestamp,
       time_on_page, scroll_depth, service_name, environment)
       SELECT gen_random_uuid(), 's-' || (n / 3), (ARRAY['home','dashboard','reports'])[1 + n % 3], '/x', 'u-' || (n % 7),
              (ARRAY['Auditor','Manager','Admin'])[1 + n % 3], at, n % 60, n % 100, 'cqms-web', 'prod' FROM t""",
    """INSERT INTO user_actions (id, session_id, page_slug, action_type, user_id, user_role, action_timestamp,
       service_name, environment)
       SELECT gen_random_uuid(), 's-' || (n / 3), 'reports', 'export', 'u-' || (n % 7),
              (ARRAY['Auditor','Manager','Admin'])[1 + n % 3], at, 'cqms-web', 'prod' FROM t WHERE n % 2 = 0""",
    """INSERT INTO user_sessions (id, session_id, user_id, user_role, session_start, session_end, session_duration,
       pages_visited, actions_count, service_name, environment)
       SELECT gen_random_uuid(), 's-' || (n / 3), 'u-' || (n % 7), (ARRAY['Auditor','Manager','Admin'])[1 + n % 3],
              at, at + interval '5 minutes', 300, ARRAY['home'], 1, 'cqms-web', 'prod' FROM t WHERE n % 3 = 0""",
    """INSERT INTO error_logs (id, error_id, error_type, error_message, error_timestamp, user_id, user_role,
       fingerprint, service_name, environment)
       SELECT id, id, 'Application', 'boom', at, 'u-' || (n % 7), 'Auditor', 'fp-' || (n % 4), 'cqms-api', 'prod'
       FROM (SELECT gen_random_uuid() AS id, * FROM t) t""",
    """INSERT INTO crash_reports (id, crash_id, crash_type, crash_message, crash_stack, crash_timestamp, user_id,
       fingerprint, service_name, environment)
       SELECT id, id, 'uncaught_exception', 'died', 'stack', at, 'u-1', 'fp-crash', 'cqms-worker', 'prod'
       FROM (SELECT gen_random_uuid() AS id, * FROM t WHERE n % 5 = 0) t""",
    """INSERT INTO daily_api_performance (day, service_name, endpoint_path, http_method, request_count)
       SELECT DISTINCT (at AT TIME ZONE 'UTC')::date - 400, 'old', '/x', 'GET', 1 FROM t""",
]


def maintain(db_url: str, *args: str) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "otel-bridge"), "maintain", "--database-url", db_url, *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_maintain_applies_retention_and_rollups_match_raw_rows(db_url: str, rows: Any) -> None:
    with psycopg.connect(db_url) as conn:
        for insert in INSERTS:
            conn.execute(SEED.format(insert=insert.replace(" % ", " %% ")), {"now": NOW})
    assert rows(db_url, "SELECT min(request_timestamp) < now() - interval '14 months' FROM api_performance_metrics")[0][0]

    out = maintain(db_url, "--rollup-days", "120")
    assert "expired partitions dropped: " in out and "rollups for" in out
    # Months that had landed in the DEFAULT partitions got partitions of their own, and the
    # expired ones were dropped whole.
    dropped = out.split("expired partitions dropped: ")[1].splitlines()[0]
    assert "api_performance_metrics_p" in dropped and "user_actions_p" in dropped, out

    def oldest(table: str, column: str) -> Any:
        return rows(db_url, f"SELECT now() - min({column}) FROM {table}")[0][0]

    for table, column in (("api_performance_metrics", "request_timestamp"), ("user_page_views", "view_timestamp"),
                          ("user_actions", "action_timestamp"), ("user_sessions", "session_start")):  # fmt: skip
        assert timedelta(days=88) < oldest(table, column) <= timedelta(days=90), table
    for table, column in (("error_logs", "error_timestamp"), ("crash_reports", "crash_timestamp")):
        assert timedelta(days=360) < oldest(table, column) <= timedelta(days=365), table
    assert rows(db_url, "SELECT min(day) >= (now() - interval '730 days')::date FROM daily_api_performance")[0][0]

    # Rollups equal the aggregates computed straight from the raw rows, for every day and role
    # the raw rows still cover whole (rollups outlive them: older days stay in the rollups).
    full = {"d": NOW.date() - timedelta(days=89)}
    direct = rows(db_url, """
        SELECT (request_timestamp AT TIME ZONE 'UTC')::date, user_role, count(*), count(*) FILTER (WHERE status_code >= 500),
               round(percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms)::numeric, 3)
        FROM api_performance_metrics WHERE request_timestamp >= %(d)s GROUP BY 1, 2 ORDER BY 1, 2""", full)  # fmt: skip
    rolled = rows(db_url, """
        SELECT day, user_role, request_count, error_count, round(p95_ms::numeric, 3) FROM daily_api_performance
        WHERE service_name = 'cqms-api' AND day >= %(d)s ORDER BY 1, 2""", full)  # fmt: skip
    assert len(direct) > 200 and rolled == direct
    assert rows(db_url, "SELECT min(day) < %(d)s FROM daily_api_performance WHERE service_name = 'cqms-api'", full)[0][0]
    direct_users = rows(db_url, """
        SELECT (view_timestamp AT TIME ZONE 'UTC')::date, page_slug, count(*), count(DISTINCT user_id)
        FROM user_page_views WHERE view_timestamp >= %(d)s GROUP BY 1, 2 ORDER BY 1, 2""", full)  # fmt: skip
    assert rows(db_url, "SELECT day, page_slug, sum(page_views)::bigint, sum(unique_users)::bigint "
                        "FROM daily_page_analytics WHERE day >= %(d)s GROUP BY 1, 2 ORDER BY 1, 2", full) == direct_users  # fmt: skip
    direct_errors = rows(db_url, """
        SELECT (error_timestamp AT TIME ZONE 'UTC')::date, fingerprint, count(*) FROM error_logs
        WHERE error_timestamp >= (now() - interval '119 days')::date GROUP BY 1, 2 ORDER BY 1, 2""")  # fmt: skip
    assert rows(db_url, "SELECT day, fingerprint, occurrences FROM daily_error_summary WHERE error_type <> 'Crash' "
                        "ORDER BY 1, 2") == direct_errors  # fmt: skip
    dau = rows(db_url, """SELECT day, sum(active_users)::bigint, sum(sessions)::bigint FROM daily_user_analytics
                          GROUP BY 1 ORDER BY 1 DESC LIMIT 1""")[0]  # fmt: skip
    assert dau[1] > 0 and dau[2] >= 0

    # Sessions idle for 30 minutes are final; a second pass is a no-op (idempotent).
    assert rows(db_url, "SELECT count(*) FROM user_sessions WHERE finalized_at IS NULL")[0][0] == 0
    again = maintain(db_url, "--rollup-days", "120")
    assert "expired partitions dropped: none" in again and "sessions finalized: 0" in again
    audit = rows(db_url, "SELECT action, details FROM audit_log")
    assert len(audit) == 1 and audit[0][0] == "maintain.retention"  # only the pass that deleted data
    assert "api_performance_metrics_p" in str(audit[0][1]["partitions_dropped"])
    assert rows(db_url, "SELECT day, user_role, request_count, error_count, round(p95_ms::numeric, 3) "
                        "FROM daily_api_performance WHERE service_name = 'cqms-api' AND day >= %(d)s ORDER BY 1, 2",
                full) == rolled  # fmt: skip


def test_serve_maintains_in_the_background_and_runs_never_collide(db_url: str, start_bridge: Any, rows: Any) -> None:
    from otel_bridge import maintenance

    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO user_sessions (id, session_id, user_role, session_start, service_name) "
                     "VALUES (gen_random_uuid(), 's-idle', 'Auditor', now() - interval '2 hours', 'web')")  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as holder:  # another receiver is maintaining
        holder.execute("SELECT pg_advisory_lock(%s)", (maintenance.LOCK_KEY,))
        assert maintenance.run(db_url, maintenance.MaintenanceSettings()) is None
    start_bridge(db_url, OTEL_BRIDGE_MAINTENANCE_INTERVAL_S="1")
    deadline = time.monotonic() + 20
    while rows(db_url, "SELECT finalized_at FROM user_sessions WHERE session_id = 's-idle'") == [(None,)]:
        assert time.monotonic() < deadline, "serve never ran maintenance"
        time.sleep(0.3)
