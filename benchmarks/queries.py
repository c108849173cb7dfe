"""Dashboard queries on raw rows against the daily rollups, and insert latency while retention
drops a partition, on a throwaway embedded PostgreSQL, in one run.

    .venv/bin/python benchmarks/queries.py [--rows 10000000] [--repeat 5] [--check] [--keep]

1. Starts an embedded PostgreSQL in a temporary directory and migrates it.
2. Generates --rows `api_performance_metrics` rows and --rows/10 `user_page_views` rows over the
   last 90 days, server-side (`INSERT ... SELECT ... FROM generate_series`, 1M rows a statement,
   in time order like real ingest) into real monthly partitions: 30 endpoint paths (40 routes, 5
   methods, popularity skewed), 3 services, 2 environments, 5,000 users with a fixed role (8
   roles, skewed), lognormal response times with a 1% slow tail, 2% 5xx. Then VACUUM ANALYZE.
3. Times `rollups.refresh` for the 90 days.
4. Times two dashboard queries for the last 30 days, raw then rollup, interleaved, --repeat
   times (medians): p95 response time by endpoint, and daily active users. Target: raw/rollup
   >= 20x (PASS/FAIL is information; --check makes a FAIL exit 1). The rollup DAU must equal
   the raw DAU exactly (exit 1 otherwise); the rollup p95 is an approximation, its error is
   printed.
5. Fills an expired monthly partition (5 months back), then runs `maintenance.run` (90-day raw
   retention: it detaches and drops that partition) while a writer commits 50-row inserts 50
   times a second and a reader runs the raw p95 query on the parent table back to back. Prints
   commit latency before, during and after maintenance, and any DETACH retry.

Progress goes to stderr, the result block to stdout. The data directory is removed at the end
(also on Ctrl-C or SIGTERM) unless --keep.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from otel_bridge import maintenance, rollups
from otel_bridge.database import EmbeddedPostgres, migrate

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


# --- steps 3 and 4: rollups and the dashboard queries -------------------------------------------
def build_rollups(conn: Any, now: datetime) -> tuple[float, dict[str, int]]:
    first, end = (now - timedelta(days=DAYS)).date(), now.date() + timedelta(days=1)
    log(f"rollups.refresh for {first}..{end - timedelta(days=1)}")
    began = time.perf_counter()
    written = rollups.refresh(conn, first, end)
    took = time.perf_counter() - began
    # Autovacuum would analyze the freshly filled rollups soon after; without statistics the
    # planner would guess their size.
    conn.execute("ANALYZE " + ", ".join(rollups.ROLLUPS))
    return took, written


def window(now: datetime) -> dict[str, Any]:
    """The last WINDOW_DAYS whole UTC days (today included), as timestamps and as days."""
    to_day = now.date() + timedelta(days=1)
    from_day = to_day - timedelta(days=WINDOW_DAYS)
    as_ts = lambda d: datetime(d.year, d.month, d.day, tzinfo=timezone.utc)  # noqa: E731
    return {"from_day": from_day, "to_day": to_day, "from_ts": as_ts(from_day), "to_ts": as_ts(to_day)}


@dataclass
class Panel:
    raw_ms: list[float] = field(default_factory=list)
    rollup_ms: list[float] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)
    rollup: list[Any] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return statistics.median(self.raw_ms) / max(statistics.median(self.rollup_ms), 1e-6)


def time_panels(conn: Any, params: dict[str, Any], repeat: int) -> dict[str, Panel]:
    """Raw, rollup, raw, rollup...: both see the same cache state and machine noise."""
    panels = {name: Panel() for name in PANELS}
    for run in range(1, repeat + 1):
        for name, (raw_sql, rollup_sql) in PANELS.items():
            panel = panels[name]
            for sql_text, times, kind in ((raw_sql, panel.raw_ms, "raw"), (rollup_sql, panel.rollup_ms, "rollup")):
                began = time.perf_counter()
                rows = conn.execute(sql_text, params).fetchall()
                times.append((time.perf_counter() - began) * 1000)
                setattr(panel, kind, rows)
            log(f"  run {run}/{repeat} {name}: raw {panel.raw_ms[-1]:.1f} ms, rollup {panel.rollup_ms[-1]:.1f} ms")
    return panels


def p95_errors(panel: Panel) -> list[tuple[float, str, float, float]]:
    """Relative error of the rollup p95 against the exact one per endpoint, worst first:
    (error, endpoint, exact, rollup); an endpoint missing from the rollup counts as infinite."""
    rollup = {endpoint: float(value) for endpoint, value in panel.rollup}
    out = []
    for endpoint, exact in panel.raw:
        approx = rollup.get(endpoint)
        error = float("inf") if approx is None else abs(approx - exact) / exact if exact else 0.0
        out.append((error, endpoint, float(exact), float("nan") if approx is None else approx))
    return sorted(out, reverse=True)


# --- step 5: retention under load -----------------------------------------------------------------
class Writer(threading.Thread):
    """Commits a 50-row INSERT every WRITER_INTERVAL_S, like a loaded receiver; records latencies."""

    def __init__(self, url: str) -> None:
        super().__init__(name="writer", daemon=True)
        self.url, self.stop = url, threading.Event()
        self.commits: list[tuple[float, float]] = []  # (perf_counter at start, latency ms)
        self.error: BaseException | None = None
        self.rng = random.Random(7)

    def batch(self) -> list[list[Any]]:
        now = datetime.now(timezone.utc)
        picked = self.rng.choices(ROUTES[:12], k=WRITER_BATCH)  # the popular routes
        users = [self.rng.randrange(USERS) for _ in picked]
        return [[r[1] for r in picked], [r[0] for r in picked], [now] * len(picked),
                [round(r[2] * self.rng.lognormvariate(0, 0.5), 2) for r in picked],
                [f"user-{u:05d}" for u in users], [ROLE_SLOTS[u * 37 % 100] for u in users],
                [r[3] for r in picked]]  # fmt: skip

    def run(self) -> None:
        try:
            with connect(self.url) as conn:
                next_at = time.perf_counter()
                while not self.stop.is_set():
                    params = self.batch()
                    began = time.perf_counter()
                    conn.execute(WRITE, params)
                    self.commits.append((began, (time.perf_counter() - began) * 1000))
                    # A stalled commit is not made up for with a burst: keep the pace from now.
                    next_at = max(next_at + WRITER_INTERVAL_S, time.perf_counter())
                    self.stop.wait(next_at - time.perf_counter())
        except BaseException as exc:  # reported in the result block
            self.error = exc


class Reader(threading.Thread):
    """Runs the raw p95 dashboard query on the parent table back to back: the worst case for
    DETACH, whose ACCESS EXCLUSIVE lock on the parent must wait for each running SELECT."""

    def __init__(self, url: str, params: dict[str, Any]) -> None:
        super().__init__(name="reader", daemon=True)
        self.url, self.params, self.stop = url, params, threading.Event()
        self.queries: list[tuple[float, float]] = []  # (perf_counter at start, seconds)
        self.conn: psycopg.Connection[Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.url) as conn:
                self.conn = conn
                while not self.stop.is_set():
                    began = time.perf_counter()
                    try:
                        conn.execute(P95_RAW, self.params).fetchall()
                    except psycopg.errors.QueryCanceled:
                        break  # our own cancel at the end
                    self.queries.append((began, time.perf_counter() - began))
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        if self.conn is not None and self.is_alive():
            self.conn.cancel_safe(timeout=5)  # do not wait seconds for the last query
        self.join(timeout=30)


class Captured(logging.Handler):
    """Keeps the maintenance log lines (DETACH retries are logged at INFO) with their times."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.perf_counter(), record.getMessage()))
        log(f"  maintenance log: {record.getMessage()}")


@dataclass
class Retention:
    windows: dict[str, list[float]] = field(default_factory=dict)
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (s after maintenance start, ms)
    maintenance_s: float = 0.0
    report: maintenance.MaintenanceReport | None = None
    error: str = ""
    retries: list[tuple[float, str]] = field(default_factory=list)
    reader_s: list[float] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def fill_expired(conn: Any, now: datetime) -> list[str]:
    """A month partition past the 90-day raw retention, per table, with rows in it."""
    month = now.date().replace(day=1)
    for _ in range(EXPIRED_MONTHS_BACK):
        month = (month - timedelta(days=1)).replace(day=1)
    start = datetime(month.year, month.month, 1, tzinfo=timezone.utc)
    end = datetime.combine((month + timedelta(days=32)).replace(day=1), datetime.min.time(), timezone.utc)
    names = []
    for table, rows in (("user_page_views", EXPIRED_PAGE_VIEWS), ("api_performance_metrics", EXPIRED_API_ROWS)):
        conn.execute("SELECT otel_bridge_partition_month(%s, %s)", (table, month))
        generate(conn, table, start, end, rows)
        names.append(f"{table}_p{month:%Y%m}")
    return names


def retention_under_load(url: str, conn: Any, params: dict[str, Any]) -> Retention:
    out = Retention()
    log(f"filling expired partitions ({EXPIRED_MONTHS_BACK} months back)")
    out.expired = fill_expired(conn, datetime.now(timezone.utc))
    conn.execute("CHECKPOINT")  # the load's dirty pages are not flushed during the latency windows
    captured = Captured()
    mlog = logging.getLogger(maintenance.__name__)
    mlog.addHandler(captured)
    mlog.setLevel(logging.INFO)
    writer, reader = Writer(url), Reader(url, params)
    try:
        began = time.perf_counter()
        writer.start()
        reader.start()
        log(f"writer ({WRITER_BATCH}-row commits every {WRITER_INTERVAL_S * 1000:.0f} ms) and reader (raw p95 "
            f"query back to back) running; {BASELINE_S:g} s baseline")  # fmt: skip
        writer.stop.wait(WRITER_WARMUP_S + BASELINE_S)
        log(f"maintenance.run(raw_days={DAYS}) while both keep going")
        m_start = time.perf_counter()
        try:
            out.report = maintenance.run(url, maintenance.MaintenanceSettings(raw_days=DAYS))
        except Exception as exc:  # e.g. "could not detach ...: the table stayed busy"
            out.error = f"{type(exc).__name__}: {exc}"
            log(f"  maintenance failed: {out.error}")
        m_end = time.perf_counter()
        out.maintenance_s = m_end - m_start
        for line in out.report.lines() if out.report else []:
            log(f"  {line}")
        log(f"maintenance done in {out.maintenance_s:.1f} s; {AFTER_S:g} s more")
        writer.stop.wait(AFTER_S)
    finally:
        writer.stop.set()
        reader.finish()
        writer.join(timeout=30)
        mlog.removeHandler(captured)
    bounds = {"before": (began + WRITER_WARMUP_S, m_start), "during": (m_start, m_end), "after": (m_end, float("inf"))}
    out.windows = {name: [ms for t, ms in writer.commits if lo <= t < hi] for name, (lo, hi) in bounds.items()}
    out.stalls = [(t - m_start, ms) for t, ms in writer.commits if ms >= 100]
    out.retries = [(t - m_start, msg) for t, msg in captured.records if "waited too long" in msg]
    out.reader_s = [s for _, s in reader.queries]
    out.problems = [f"{name} failed: {type(e).__name__}: {e}" for name, e in (("writer", writer.error),
                    ("reader", reader.error)) if e is not None]  # fmt: skip
    return out


# --- the result block -----------------------------------------------------------------------------
def latency(values: list[float]) -> str:
    if not values:
        return "no commits"
    p99 = statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]
    return f"{len(values):4d} commits, p50 {statistics.median(values):6.1f} ms, p99 {p99:7.1f} ms, max {max(values):7.1f} ms"


def report(args: argparse.Namespace, gen: Generated, rollup_s: float, written: dict[str, int],
           panels: dict[str, Panel], dau_ok: bool, ret: Retention) -> bool:  # fmt: skip
    """Print the result block; True when every speedup meets the target."""
    print(f"\n== otel-bridge dashboard queries: {gen.api_rows:,} API rows + {gen.page_views:,} page views "
          f"over {DAYS} days; panels over the last {WINDOW_DAYS} days, median of {args.repeat}")
    print(f"generation : api_performance_metrics {gen.api_s:.1f} s ({gen.api_rows / gen.api_s:,.0f} rows/s), "
          f"user_page_views {gen.page_views_s:.1f} s ({gen.page_views / gen.page_views_s:,.0f} rows/s), "
          f"indexes {gen.index_s:.1f} s, VACUUM ANALYZE {gen.vacuum_s:.1f} s")
    print(f"on disk    : api_performance_metrics {gen.api_bytes / 2**20:,.0f} MiB, user_page_views "
          f"{gen.page_view_bytes / 2**20:,.0f} MiB (indexes included)")
    rows = ", ".join(f"{table} {n:,}" for table, n in written.items())
    print(f"rollups    : refresh of {DAYS + 1} days in {rollup_s:.1f} s ({rows} rows)")
    passed = True
    for name, panel in panels.items():
        ok = panel.speedup >= TARGET_SPEEDUP
        passed &= ok
        print(f"{name:15s}: raw {statistics.median(panel.raw_ms):9.1f} ms, rollup {statistics.median(panel.rollup_ms):7.1f} ms, "
              f"speedup {panel.speedup:7.1f}x (target >= {TARGET_SPEEDUP:g}x): {'PASS' if ok else 'FAIL'}")  # fmt: skip
    errors = p95_errors(panels["p95 by endpoint"])
    error, endpoint, exact, approx = errors[0]
    print(f"p95 accuracy   : request-weighted mean of daily p95s vs exact p95 over {len(errors)} endpoints: "
          f"max error {error:.1%} ({endpoint}: exact {exact:.1f} ms, rollup {approx:.1f} ms), median "
          f"{statistics.median(e for e, *_ in errors):.1%}, {sum(e > 0.1 for e, *_ in errors)} above 10%")
    days = len(panels["DAU"].raw)
    print(f"DAU check      : rollup {'equals' if dau_ok else 'DIFFERS FROM'} raw on {days} days "
          f"(raw DAU {min(n for _, n in panels['DAU'].raw):,}-{max(n for _, n in panels['DAU'].raw):,})")
    print(f"retention      : maintenance.run {ret.maintenance_s:.1f} s, expired partitions dropped: "
          f"{', '.join(ret.report.partitions_dropped) if ret.report else 'none'}"
          f"{'; FAILED ' + ret.error if ret.error else ''}")
    for name, values in ret.windows.items():
        print(f"  commits {name:6s}: {latency(values)}")
    retries = "; ".join(f"+{t:.1f} s {msg}" for t, msg in ret.retries) or "none"
    print(f"  DETACH retries: {len(ret.retries)} ({retries})")
    stalls = ", ".join(f"+{t:.1f} s {ms:.0f} ms" for t, ms in ret.stalls) or "none"
    print(f"  commits >= 100 ms (s after maintenance start): {stalls}")
    if ret.reader_s:
        print(f"  reader: {len(ret.reader_s)} raw p95 queries on the parent, median {statistics.median(ret.reader_s):.1f} s, "
              f"max {max(ret.reader_s):.1f} s")  # fmt: skip
    for problem in ret.problems:
        print(f"  {problem}")
    print(f"machine        : {machine_info()}")
    return passed


# --- main -------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000,
                        help="api_performance_metrics rows over 90 days; page views are a tenth (default 10,000,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each query, median (default 5)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a speedup is below the target")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and print its path")
    args = parser.parse_args(argv)
    if args.rows < 1000 or args.repeat < 1:
        parser.error("--rows must be >= 1000 and --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on SIGTERM too
    root = Path(tempfile.mkdtemp(prefix="otel-bridge-queries-"))
    server = EmbeddedPostgres(root)
    log(f"machine: {machine_info()}")
    try:
        log(f"starting embedded PostgreSQL in {root} and migrating")
        url = server.start()
        migrate(url)
        with connect(url) as conn:
            # A bulk load of gigabytes: avoid a checkpoint every 1 GB of WAL (the default).
            conn.execute("ALTER SYSTEM SET max_wal_size = '8GB'")
            conn.execute("SELECT pg_reload_conf()")
            now = datetime.now(timezone.utc)
            gen = generate_all(conn, args.rows, now)
            rollup_s, written = build_rollups(conn, now)
            log(f"rollups built in {rollup_s:.1f} s: {written}")
            conn.execute("CHECKPOINT")
            params = window(now)
            log(f"timing the panels for {params['from_day']}..{params['to_day'] - timedelta(days=1)}, {args.repeat} runs")
            panels = time_panels(conn, params, args.repeat)
            for error, endpoint, exact, approx in p95_errors(panels["p95 by endpoint"]):
                if error > 0.1:  # the paths whose methods differ in speed, mostly
                    log(f"  rollup p95 off by {error:.1%}: {endpoint} (exact {exact:.1f} ms, rollup {approx:.1f} ms)")
            dau_ok = [(d, int(n)) for d, n in panels["DAU"].raw] == [(d, int(n)) for d, n in panels["DAU"].rollup]
            ret = retention_under_load(url, conn, params)
        passed = report(args, gen, rollup_s, written, panels, dau_ok, ret)
        if not dau_ok:
            print("DAU rollup differs from the raw DAU: a rollup bug", file=sys.stderr)
            return 1
        return 1 if args.check and not passed else 0
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        server.stop()
        if args.keep:
            print(f"data kept in {root} (EmbeddedPostgres(Path('{root}')).start() serves it again)")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
