"""The demo's terminal report: what each table got, read back with plain SQL (the same rows a
Grafana panel would query)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

TABLES = ("api_performance_metrics", "api_error_logs", "database_performance_metrics", "query_patterns",
          "error_logs", "crash_reports", "server_performance_metrics", "user_page_views", "user_actions",
          "user_sessions", "frontend_performance_metrics")  # fmt: skip

LATENCY_SQL = """
SELECT http_method, endpoint_path, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY response_time_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms),
       count(*) FILTER (WHERE status_code >= 500)
FROM api_performance_metrics WHERE created_at >= %(since)s
GROUP BY 1, 2 ORDER BY 5 DESC
"""
SLOW_QUERIES_SQL = """
SELECT p.normalized_query, count(*), percentile_cont(0.95) WITHIN GROUP (ORDER BY d.query_duration_ms),
       count(*) FILTER (WHERE d.slow_query), max(d.connection_pool_size)
FROM database_performance_metrics d JOIN query_patterns p USING (query_hash)
WHERE d.created_at >= %(since)s
GROUP BY 1 ORDER BY 3 DESC LIMIT 5
"""
TOP_ERRORS_SQL = """
SELECT g.service_name, g.error_type, g.title, g.occurrences, g.users_affected, g.fingerprint, g.status,
       (SELECT e.breadcrumbs FROM error_logs e WHERE e.fingerprint = g.fingerprint AND e.breadcrumbs IS NOT NULL
        ORDER BY e.error_timestamp DESC LIMIT 1)
FROM error_groups g WHERE g.last_seen >= %(since)s
ORDER BY g.occurrences DESC LIMIT 5
"""
CRASHES_SQL = """
SELECT service_name, crash_type, exception_type, crash_message, release_version, memory_info, breadcrumbs
FROM crash_reports WHERE created_at >= %(since)s ORDER BY crash_timestamp
"""
USAGE_SQL = """
WITH views AS (
    SELECT user_role, count(*) AS views, count(DISTINCT user_id) AS users, count(DISTINCT session_id) AS sessions,
           mode() WITHIN GROUP (ORDER BY page_slug) AS top_page
    FROM user_page_views WHERE created_at >= %(since)s GROUP BY 1),
actions AS (SELECT user_role, count(*) AS actions FROM user_actions WHERE created_at >= %(since)s GROUP BY 1),
sessions AS (SELECT user_role, avg(session_duration) AS duration FROM user_sessions
             WHERE created_at >= %(since)s GROUP BY 1)
SELECT v.user_role, v.users, v.sessions, v.views, coalesce(a.actions, 0), s.duration, v.top_page
FROM views v LEFT JOIN actions a USING (user_role) LEFT JOIN sessions s USING (user_role)
ORDER BY v.views DESC
"""
VITALS_SQL = """
SELECT page_slug, count(*), percentile_cont(0.75) WITHIN GROUP (ORDER BY largest_contentful_paint),
       percentile_cont(0.75) WITHIN GROUP (ORDER BY interaction_to_next_paint),
       percentile_cont(0.75) WITHIN GROUP (ORDER BY cumulative_layout_shift)
FROM frontend_performance_metrics WHERE created_at >= %(since)s GROUP BY 1 ORDER BY 3 DESC NULLS LAST LIMIT 5
"""
HEALTH_SQL = """
SELECT service_name, count(*), max(cpu_usage), max(memory_usage_mb), max(event_loop_lag_ms), max(active_requests),
       max(request_rate), max(error_rate)
FROM server_performance_metrics WHERE created_at >= %(since)s GROUP BY 1 ORDER BY 1
"""


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in TABLES}  # type: ignore[index]


def _crumbs(crumbs: Sequence[Any] | None, last: int = 4) -> list[str]:
    lines = []
    for crumb in (crumbs or [])[-last:]:
        if isinstance(crumb, dict):
            lines.append(f"      · [{crumb.get('category', '')}] {crumb.get('message', '')}")
    return lines


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}"


def render(url: str, since: datetime, before: dict[str, int], after: dict[str, int]) -> str:
    params = {"since": since}
    with psycopg.connect(url) as conn:
        latency = conn.execute(LATENCY_SQL, params).fetchall()
        slow = conn.execute(SLOW_QUERIES_SQL, params).fetchall()
        errors = conn.execute(TOP_ERRORS_SQL, params).fetchall()
        crashes = conn.execute(CRASHES_SQL, params).fetchall()
        usage = conn.execute(USAGE_SQL, params).fetchall()
        vitals = conn.execute(VITALS_SQL, params).fetchall()
        health = conn.execute(HEALTH_SQL, params).fetchall()
    out = ["", "rows stored (this run / total)"]
    out += [f"  {t:<30} {after[t] - before[t]:>7} / {after[t]}" for t in TABLES]
    out += ["", "API latency by endpoint (this run, slowest p95 first)",
            f"  {'method':<6} {'endpoint':<46} {'count':>5} {'p50 ms':>7} {'p95 ms':>7} {'5xx':>4}"]  # fmt: skip
    out += [f"  {m:<6} {e:<46} {n:>5} {_ms(p50):>7} {_ms(p95):>7} {x:>4}" for m, e, n, p50, p95, x in latency]
    out += ["", "slowest queries (normalized; p95; slow = over APM_SLOW_QUERY_THRESHOLD_MS)"]
    out += [f"  {_ms(p95):>6} ms  {n:>4}x  {s} slow  pool {pool if pool is not None else '-'}  {q[:70]}"
            for q, n, p95, s, pool in slow]  # fmt: skip
    out += ["", "top error groups (seen this run; `otel-bridge errors show FINGERPRINT` for more)"]
    for service, kind, group_title, n, users, fingerprint, status, crumbs in errors:
        out.append(f"  {n:>4}x  {kind:<11} {fingerprint}  {status}  in {service}, {users} user(s)")
        out.append(f"      {group_title[:100]}")
        out += _crumbs(crumbs)
    out += ["", "crashes (this run)"]
    for service, kind, exc_type, message, release, memory, crumbs in crashes:
        rss = (memory or {}).get("rss_mb") if isinstance(memory, dict) else None
        out.append(f"  {service} {release or ''}: {kind} {exc_type or ''}: {message[:80]}" + (f" (rss {rss} MB)" if rss else ""))
        out.append(f"      {len(crumbs or [])} breadcrumbs; the last ones:")
        out += _crumbs(crumbs, last=3)
    if not crashes:
        out.append("  none")
    out += ["", "usage by role (this run)",
            f"  {'role':<20} {'users':>5} {'sessions':>8} {'views':>6} {'actions':>7} {'avg session s':>13}  top page"]  # fmt: skip
    out += [f"  {r:<20} {u:>5} {s:>8} {v:>6} {a:>7} {_ms(d):>13}  {top}" for r, u, s, v, a, d, top in usage]
    out += ["", "web vitals p75 by page (this run)", f"  {'page':<22} {'views':>5} {'LCP ms':>7} {'INP ms':>7} {'CLS':>6}"]
    out += [f"  {p:<22} {n:>5} {_ms(lcp):>7} {_ms(inp):>7} {float(cls or 0):>6.3f}" for p, n, lcp, inp, cls in vitals]
    out += ["", "server health (this run, max per service)"]
    for service, n, *values in health:
        cpu, rss, lag, active, rate, error_rate = ("-" if v is None else v for v in values)
        out.append(f"  {service}: {n} samples, cpu {cpu}%, rss {rss} MB, loop lag {lag} ms, "
                   f"{active} active requests, {rate} req/s, {error_rate} errors/s")  # fmt: skip
    return "\n".join(out)
