"""The daily rollups Grafana reads instead of raw rows (DESIGN §4; the seed's `daily_*` tables).

Each is recomputed from the raw rows for whole days (delete the days, insert them again, in one
transaction), so a late row corrects its day the next time its day is refreshed. Days are UTC.
Dimensions: day, service, environment and role (plus endpoint, page or error group).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

# %(from)s / %(to)s: the first day and the day after the last, as dates (UTC).
USER_ANALYTICS = """
INSERT INTO daily_user_analytics (day, service_name, environment, user_role, active_users, sessions,
  avg_session_duration_s, pages_per_session, bounce_rate, page_views, actions)
WITH activity AS (
  SELECT (view_timestamp AT TIME ZONE 'UTC')::date AS day, service_name, coalesce(environment, '') AS env,
         user_role AS role, user_id, 1 AS view, 0 AS action
  FROM user_page_views WHERE view_timestamp >= %(from)s AND view_timestamp < %(to)s
  UNION ALL
  SELECT (action_timestamp AT TIME ZONE 'UTC')::date, service_name, coalesce(environment, ''), user_role, user_id, 0, 1
  FROM user_actions WHERE action_timestamp >= %(from)s AND action_timestamp < %(to)s
), by_activity AS (
  SELECT day, service_name, env, role, count(DISTINCT user_id) AS users, sum(view) AS views, sum(action) AS actions
  FROM activity GROUP BY 1, 2, 3, 4
), sessions AS (
  SELECT (session_start AT TIME ZONE 'UTC')::date AS day, service_name, coalesce(environment, '') AS env,
         user_role AS role, count(*) AS n, avg(session_duration) AS duration,
         avg(coalesce(cardinality(pages_visited), 0)) AS pages,
         avg(CASE WHEN coalesce(cardinality(pages_visited), 0) = 1 AND actions_count = 0
                   AND coalesce(session_duration, 0) < 10 THEN 1.0 ELSE 0.0 END) AS bounce
  FROM user_sessions WHERE session_start >= %(from)s AND session_start < %(to)s GROUP BY 1, 2, 3, 4
)
SELECT coalesce(a.day, s.day), coalesce(a.service_name, s.service_name), coalesce(a.env, s.env),
       coalesce(a.role, s.role), coalesce(a.users, 0), coalesce(s.n, 0), s.duration, s.pages, s.bounce,
       coalesce(a.views, 0), coalesce(a.actions, 0)
FROM by_activity a FULL JOIN sessions s USING (day, service_name, env, role)
"""

PAGE_ANALYTICS = """
INSERT INTO daily_page_analytics (day, service_name, environment, page_slug, user_role, page_views, unique_users,
  avg_time_on_page_s, avg_scroll_depth)
SELECT (view_timestamp AT TIME ZONE 'UTC')::date, service_name, coalesce(environment, ''), page_slug, user_role,
       count(*), count(DISTINCT user_id), avg(time_on_page), avg(scroll_depth)
FROM user_page_views WHERE view_timestamp >= %(from)s AND view_timestamp < %(to)s
GROUP BY 1, 2, 3, 4, 5
"""

API_PERFORMANCE = """
INSERT INTO daily_api_performance (day, service_name, environment, endpoint_path, http_method, user_role,
  request_count, error_count, slow_count, avg_ms, p50_ms, p95_ms, p99_ms, max_ms)
SELECT (request_timestamp AT TIME ZONE 'UTC')::date, service_name, coalesce(environment, ''), endpoint_path,
       http_method, coalesce(user_role, ''), count(*), count(*) FILTER (WHERE status_code >= 500),
       count(*) FILTER (WHERE slow_request), avg(response_time_ms),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY response_time_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY response_time_ms), max(response_time_ms)
FROM api_performance_metrics WHERE request_timestamp >= %(from)s AND request_timestamp < %(to)s
GROUP BY 1, 2, 3, 4, 5, 6
"""

ERROR_SUMMARY = """
INSERT INTO daily_error_summary (day, service_name, environment, error_type, fingerprint, user_role,
  occurrences, crashes, users_affected)
SELECT day, service_name, env, error_type, fingerprint, role, count(*), sum(crash), count(DISTINCT user_id)
FROM (
  SELECT (error_timestamp AT TIME ZONE 'UTC')::date AS day, service_name, coalesce(environment, '') AS env,
         error_type, coalesce(fingerprint, '') AS fingerprint, coalesce(user_role, '') AS role, user_id, 0 AS crash
  FROM error_logs WHERE error_timestamp >= %(from)s AND error_timestamp < %(to)s
  UNION ALL
  SELECT (crash_timestamp AT TIME ZONE 'UTC')::date, service_name, coalesce(environment, ''), 'Crash',
         coalesce(fingerprint, ''), coalesce(user_role, ''), user_id, 1
  FROM crash_reports WHERE crash_timestamp >= %(from)s AND crash_timestamp < %(to)s
  UNION ALL  -- API errors without an exception (a 5xx answer): counted as error groups count them
  SELECT (error_timestamp AT TIME ZONE 'UTC')::date, service_name, coalesce(environment, ''), 'API',
         coalesce(fingerprint, ''), coalesce(user_role, ''), user_id, 0
  FROM api_error_logs WHERE exception_type IS NULL AND error_timestamp >= %(from)s AND error_timestamp < %(to)s
) e GROUP BY 1, 2, 3, 4, 5, 6
"""

ROLLUPS = {
    "daily_user_analytics": USER_ANALYTICS,
    "daily_page_analytics": PAGE_ANALYTICS,
    "daily_api_performance": API_PERFORMANCE,
    "daily_error_summary": ERROR_SUMMARY,
}


def day_range(today: date, days: int) -> tuple[date, date]:
    """[first day, day after the last) for the `days` days ending today."""
    return today - timedelta(days=days - 1), today + timedelta(days=1)


def refresh(conn: Any, first: date, end: date) -> dict[str, int]:
    """Recompute every rollup for the days in [first, end); one transaction per rollup, so a
    reader sees each table either before or after, never half-done. Returns rows written."""
    written: dict[str, int] = {}
    params = {"from": first, "to": end}
    for table, insert in ROLLUPS.items():
        with conn.transaction():
            conn.execute(f"DELETE FROM {table} WHERE day >= %(from)s AND day < %(to)s", params)
            written[table] = conn.execute(insert, params).rowcount
    return written
