"""The data `queries.py` works on: constants, the generated rows (server-side INSERT ... SELECT),
partitions for their months, and small helpers shared by its steps."""

from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import psycopg

T_START = time.monotonic()
DAYS = 90  # generated history, also the raw retention maintenance applies in step 5
WINDOW_DAYS = 30  # the dashboards' time range
CHUNK_ROWS = 1_000_000  # rows per INSERT ... SELECT: big enough to be fast, small enough for progress
USERS = 5_000
SLOW_MS = 500.0  # the receiver's default APM_SLOW_API_THRESHOLD_MS
TARGET_SPEEDUP = 20.0
EXPIRED_MONTHS_BACK = 5  # its partition ends before now - 90 days whatever the month lengths
EXPIRED_API_ROWS = 200_000
EXPIRED_PAGE_VIEWS = 20_000
BASELINE_S = 3.0  # writer + reader without maintenance
AFTER_S = 2.0  # writer + reader after maintenance
WRITER_WARMUP_S = 0.5  # first commits (connection, caches) are not counted
WRITER_INTERVAL_S = 0.02  # 50 commits/s of 50 rows: a steadily loaded receiver
WRITER_BATCH = 50

ROLES = ("General User", "Employee", "Quality Analyst", "Auditor", "Quality Supervisor", "Manager",
         "Admin", "Super Admin")  # fmt: skip
ROLE_WEIGHTS = (40, 25, 12, 8, 6, 5, 3, 1)  # per 100 users: most users are plain users
# A user's role is ROLE_SLOTS[(user * 37) mod 100]: fixed per user, weighted, scattered over ids.
ROLE_SLOTS = [role for role, weight in zip(ROLES, ROLE_WEIGHTS) for _ in range(weight)]

# (method, route, median ms, service), most requested first (popularity falls off as a power law).
# 30 paths, 40 routes: several paths have methods of very different speed (GET /api/reports vs
# POST /api/reports), which is where a per-path p95 built from per-route rollups drifts most.
ROUTES = (
    ("GET", "/api/auth/session", 8, "identity-api"), ("GET", "/api/notifications", 15, "qa-api"),
    ("GET", "/api/dashboard/summary", 120, "reports-api"), ("GET", "/api/audits", 45, "qa-api"),
    ("GET", "/api/audits/{audit_id}", 30, "qa-api"), ("GET", "/api/users/me", 10, "identity-api"),
    ("POST", "/api/audits/{audit_id}/scores", 55, "qa-api"), ("GET", "/api/scorecards", 25, "qa-api"),
    ("POST", "/api/notifications/{notification_id}/read", 10, "qa-api"), ("GET", "/api/agents", 35, "qa-api"),
    ("POST", "/api/audits", 60, "qa-api"), ("GET", "/api/scorecards/{scorecard_id}", 20, "qa-api"),
    ("POST", "/api/auth/login", 45, "identity-api"), ("PUT", "/api/audits/{audit_id}", 50, "qa-api"),
    ("GET", "/api/reports", 80, "reports-api"), ("GET", "/api/calibrations", 40, "qa-api"),
    ("GET", "/api/agents/{agent_id}/trends", 150, "reports-api"),
    ("PATCH", "/api/audits/{audit_id}/status", 25, "qa-api"), ("GET", "/api/users", 30, "identity-api"),
    ("POST", "/api/disputes", 40, "qa-api"), ("GET", "/api/disputes", 35, "qa-api"),
    ("GET", "/api/reports/{report_id}", 90, "reports-api"), ("POST", "/api/calibrations", 70, "qa-api"),
    ("GET", "/api/teams", 20, "identity-api"), ("DELETE", "/api/audits/{audit_id}", 35, "qa-api"),
    ("PATCH", "/api/disputes/{dispute_id}", 30, "qa-api"),
    ("GET", "/api/reports/{report_id}/export", 400, "reports-api"), ("POST", "/api/reports", 250, "reports-api"),
    ("PUT", "/api/users/{user_id}/role", 25, "identity-api"), ("POST", "/api/auth/logout", 6, "identity-api"),
    ("GET", "/api/audit-log", 60, "identity-api"), ("PUT", "/api/scorecards/{scorecard_id}", 45, "qa-api"),
    ("DELETE", "/api/notifications/{notification_id}", 12, "qa-api"), ("POST", "/api/users", 55, "identity-api"),
    ("DELETE", "/api/users/{user_id}", 40, "identity-api"), ("PATCH", "/api/users/{user_id}", 30, "identity-api"),
    ("GET", "/api/settings", 10, "identity-api"), ("PUT", "/api/settings", 20, "identity-api"),
    ("POST", "/api/imports", 900, "reports-api"), ("GET", "/api/health", 2, "identity-api"),
)  # fmt: skip
PAGES = ("dashboard", "audits", "audit-detail", "notifications", "scorecards", "reports", "agents",
         "audit-new", "calibrations", "disputes", "report-detail", "agent-detail", "profile", "team",
         "settings", "users", "audit-log", "calibration-detail", "dispute-detail", "help")  # fmt: skip
WEB_SERVICES = ("qa-portal", "reports-portal", "admin-portal")  # the browser apps' service.name

# Ids laid out like UUIDv7, as the receiver's are: the row's millisecond first, so B-tree inserts
# stay at the right edge; then the chunk's tag and the row number, so they are unique.
# PostgreSQL's own uuidv7() cost 4.5 us a row here, this 2 us.
ROW_ID = ("(lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7' || lpad(to_hex(%(tag)s::int), 3, '0')"
          " || '8' || lpad(to_hex(i), 15, '0'))::uuid")  # fmt: skip
CHUNK_TAGS = itertools.count(1)  # one tag per INSERT statement: 4095 of them fit in the id

# One chunk of API rows. The innermost SELECT draws the random values once per row (OFFSET 0
# keeps the planner from inlining it, which would draw them again per use); times advance with
# the row number so the chunk is in time order, like real ingest. Endpoint index:
# 1 + floor(n * random()^2.2), the most popular route gets ~19% of requests; user:
# floor(5000 * random()^1.5), some users are much busier. The user fixes role and environment
# (user id mod 10 = 0: staging), the route fixes the service. Response time: the route's median
# x lognormal (sigma 0.5) x 8 for 1% of requests x a +-20% cycle of about a week. r < 0.02: 5xx,
# r < 0.05: 4xx.
API_INSERT = f"""
INSERT INTO api_performance_metrics (id, endpoint_path, http_method, request_timestamp, response_time_ms,
  status_code, user_id, user_role, session_id, service_name, environment, slow_request)
SELECT {ROW_ID}, (%(paths)s::text[])[e], (%(methods)s::text[])[e], ts, ms,
       CASE WHEN r < 0.02 THEN (ARRAY[500, 502, 503, 504])[1 + floor(r * 200)::int]
            WHEN r < 0.05 THEN (ARRAY[400, 401, 403, 404, 409, 422])[1 + floor((r - 0.02) * 200)::int]
            WHEN (%(methods)s::text[])[e] = 'POST' THEN 201 ELSE 200 END,
       'user-' || lpad(u::text, 5, '0'), (%(role_slots)s::text[])[1 + mod(u * 37, 100)],
       'sess-' || u || '-' || floor(extract(epoch FROM ts) / 1800)::bigint, (%(services)s::text[])[e],
       CASE WHEN mod(u, 10) = 0 THEN 'staging' ELSE 'production' END, ms >= %(slow_ms)s
FROM (
  SELECT i, ts, e, u, r,
         round(((%(base_ms)s::float8[])[e] * exp(random_normal(0, 0.5))
                * CASE WHEN random() < 0.01 THEN 8 ELSE 1 END
                * (1 + 0.2 * sin(extract(epoch FROM ts) / 86400)))::numeric, 2)::float8 AS ms
  FROM (
    SELECT i, %(start)s::timestamptz + (i - 1 + random()) * %(step)s::interval AS ts,
           1 + floor(%(routes)s * random() ^ 2.2)::int AS e,
           floor(%(users)s * random() ^ 1.5)::int AS u, random() AS r
    FROM generate_series(1, %(count)s) AS i OFFSET 0
  ) AS draw OFFSET 0
) AS per_row
"""

# One chunk of page views: same users (same fixed role and environment), each on one of the three
# web apps (user id mod 3). A fixed (role, service, environment) per user is what makes the
# rollup's sum of per-group distinct users equal to the distinct users of the day.
PAGE_VIEW_INSERT = f"""
INSERT INTO user_page_views (id, session_id, page_slug, page_path, view_timestamp, user_id, user_role,
  time_on_page, scroll_depth, service_name, environment)
SELECT {ROW_ID}, 'sess-' || u || '-' || floor(extract(epoch FROM ts) / 1800)::bigint,
       (%(pages)s::text[])[p], '/' || (%(pages)s::text[])[p], ts, 'user-' || lpad(u::text, 5, '0'),
       (%(role_slots)s::text[])[1 + mod(u * 37, 100)], (3 + 170 * random() ^ 3)::int,
       (100 * random())::int, (%(services)s::text[])[1 + mod(u, 3)],
       CASE WHEN mod(u, 10) = 0 THEN 'staging' ELSE 'production' END
FROM (
  SELECT i, %(start)s::timestamptz + (i - 1 + random()) * %(step)s::interval AS ts,
         1 + floor(%(page_count)s * random() ^ 2)::int AS p, floor(%(users)s * random() ^ 1.5)::int AS u
  FROM generate_series(1, %(count)s) AS i OFFSET 0
) AS draw
"""

# The dashboard queries: (raw, rollup) per panel, over whole UTC days [from, to).
P95_RAW = """
SELECT endpoint_path, percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms)
FROM api_performance_metrics WHERE request_timestamp >= %(from_ts)s AND request_timestamp < %(to_ts)s
GROUP BY endpoint_path
"""
# Percentiles do not compose: a request-weighted mean of the daily p95s (per day, service, env,
# route and role) only approximates the p95 of the whole 30 days. It is close when the groups
# have alike distributions, and falls short when one path mixes fast and slow methods or slow
# days, because the exact p95 of the union sits in the slowest groups' tails while the mean
# averages them. The result block prints the worst relative error across endpoints.
P95_ROLLUP = """
SELECT endpoint_path, sum(p95_ms * request_count) / sum(request_count)
FROM daily_api_performance WHERE day >= %(from_day)s AND day < %(to_day)s
GROUP BY endpoint_path
"""
DAU_RAW = """
SELECT (view_timestamp AT TIME ZONE 'UTC')::date AS day, count(DISTINCT user_id)
FROM user_page_views WHERE view_timestamp >= %(from_ts)s AND view_timestamp < %(to_ts)s
GROUP BY 1 ORDER BY 1
"""
# Exact only because every user has one (role, service, environment): the rollup keeps a
# distinct count per group, and a user in two groups would be counted twice.
DAU_ROLLUP = """
SELECT day, sum(active_users)::bigint FROM daily_user_analytics
WHERE day >= %(from_day)s AND day < %(to_day)s GROUP BY day ORDER BY day
"""
PANELS = {"p95 by endpoint": (P95_RAW, P95_ROLLUP), "DAU": (DAU_RAW, DAU_ROLLUP)}

# The writer's transaction: 50 rows sent by the client, one INSERT, committed (autocommit).
WRITE = """
INSERT INTO api_performance_metrics (id, endpoint_path, http_method, request_timestamp, response_time_ms,
  status_code, user_id, user_role, service_name, environment, slow_request)
SELECT uuidv7(), path, method, ts, ms, 200, user_id, role, service, 'production', ms >= 500
FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::float8[], %s::text[], %s::text[], %s::text[])
  AS t(path, method, ts, ms, user_id, role, service)
"""


def log(message: str) -> None:
    print(f"[{time.monotonic() - T_START:6.1f}s] {message}", file=sys.stderr, flush=True)


def machine_info() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc={len(os.sched_getaffinity(0))} (cpu_count={os.cpu_count()}), load average {load}"


def connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)  # every run planned alike
    conn.execute("SET TIME ZONE 'UTC'")  # date parameters compared with timestamptz mean UTC days
    return conn


def months(first: date, last: date) -> list[date]:
    """First days of the months from first's month to last's month, inclusive."""
    out, month = [], first.replace(day=1)
    while month <= last:
        out.append(month)
        month = (month + timedelta(days=32)).replace(day=1)
    return out


# --- step 2: data ---------------------------------------------------------------------------------
def generate(conn: Any, table: str, start: datetime, end: datetime, rows: int) -> float:
    """Insert `rows` rows into `table` spread over [start, end), in time-ordered chunks; seconds."""
    statement, params = (API_INSERT, api_params()) if table == "api_performance_metrics" else (
        PAGE_VIEW_INSERT, {"pages": list(PAGES), "page_count": len(PAGES), "services": list(WEB_SERVICES)})  # fmt: skip
    params.update(role_slots=ROLE_SLOTS, users=USERS)
    chunks = max(1, -(-rows // CHUNK_ROWS))
    began, done = time.perf_counter(), 0
    for k in range(chunks):
        count = rows // chunks + (k < rows % chunks)
        chunk_start = start + (end - start) * k / chunks
        step = (end - start) / chunks / count  # every row gets its own slot of time: ordered
        started = time.perf_counter()
        conn.execute(statement, {**params, "start": chunk_start, "step": step, "count": count, "tag": next(CHUNK_TAGS)})
        done += count
        took = time.perf_counter() - started
        log(f"  {table}: {done:,}/{rows:,} rows ({count:,} in {took:.1f} s, {count / took:,.0f} rows/s)")
    return time.perf_counter() - began


def api_params() -> dict[str, Any]:
    return {"methods": [r[0] for r in ROUTES], "paths": [r[1] for r in ROUTES], "base_ms": [float(r[2]) for r in ROUTES],
            "services": [r[3] for r in ROUTES], "routes": len(ROUTES), "slow_ms": SLOW_MS}  # fmt: skip


def partition_months(conn: Any, tables: tuple[str, ...], first: date, last: date) -> int:
    """Monthly partitions for the generated months, so rows go there and not to DEFAULT."""
    created = 0
    for table in tables:
        for month in months(first, last):
            row = conn.execute("SELECT otel_bridge_partition_month(%s, %s)", (table, month)).fetchone()
            created += bool(row[0])
    return created


def drop_secondary_indexes(conn: Any, table: str) -> list[str]:
    """Drop a partitioned table's non-unique indexes; returns the statements that rebuild them."""
    found = conn.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indrelid = %s::regclass AND NOT indisunique", (table,)).fetchall()  # fmt: skip
    for name, _ in found:
        conn.execute(f"DROP INDEX {name}")
    # The parent's definition reads "ON ONLY <parent>": without ONLY it recurses into partitions.
    return [definition.replace(" ON ONLY ", " ON ", 1) for _, definition in found]


def relation_size(conn: Any, parent: str) -> int:
    """Bytes of a partitioned table's partitions, indexes included."""
    row = conn.execute("SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
                       "WHERE inhparent = %s::regclass", (parent,)).fetchone()  # fmt: skip
    return int(row[0])


@dataclass
class Generated:
    api_rows: int = 0
    api_s: float = 0.0
    page_views: int = 0
    page_views_s: float = 0.0
    index_s: float = 0.0
    vacuum_s: float = 0.0
    api_bytes: int = 0
    page_view_bytes: int = 0


def generate_all(conn: Any, rows: int, now: datetime) -> Generated:
    start = now - timedelta(days=DAYS)
    tables = ("api_performance_metrics", "user_page_views")
    created = partition_months(conn, tables, start.date(), now.date())
    log(f"created {created} monthly partitions for {start.date()}..{now.date()}")
    # Secondary indexes are built after the load, as pg_restore does: maintained row by row they
    # held the INSERTs to 25k rows/s here instead of 70k, more than building them afterwards (with
    # sorts) costs. The primary key stays, so ids are still checked unique.
    rebuild = [statement for table in tables for statement in drop_secondary_indexes(conn, table)]
    conn.execute("SELECT setseed(0.42)")  # the same skew every run (ids and times still differ)
    out = Generated(api_rows=rows, page_views=max(rows // 10, 1))
    log(f"generating {out.api_rows:,} api_performance_metrics rows over {DAYS} days")
    out.api_s = generate(conn, "api_performance_metrics", start, now, out.api_rows)
    log(f"generating {out.page_views:,} user_page_views rows by up to {USERS:,} users")
    out.page_views_s = generate(conn, "user_page_views", start, now, out.page_views)
    for table in tables:
        stray = conn.execute(f"SELECT count(*) FROM {table}_default").fetchone()[0]
        if stray:
            raise RuntimeError(f"{stray} rows landed in {table}_default: a partition is missing")
    log(f"building the {len(rebuild)} secondary indexes again")
    began = time.perf_counter()
    conn.execute("SET maintenance_work_mem = '1GB'")  # sorts in memory
    for statement in rebuild:
        conn.execute(statement)
    conn.execute("RESET maintenance_work_mem")
    out.index_s = time.perf_counter() - began
    log(f"  indexes built in {out.index_s:.1f} s")
    log("VACUUM ANALYZE (visibility map, hint bits and statistics, as autovacuum would leave them)")
    began = time.perf_counter()
    conn.execute("VACUUM (ANALYZE) api_performance_metrics, user_page_views")
    out.vacuum_s = time.perf_counter() - began
    out.api_bytes, out.page_view_bytes = (relation_size(conn, t) for t in tables)
    return out
