"""Rows derived from other stored rows, recomputed inside the request's transaction.

Sessions, each view's time on page, a page view's performance row and an error's session
breadcrumbs depend on events of other requests. Recomputing them from the stored rows of the
sessions or page views a request touched keeps them right whatever order events arrive in, and
makes a re-sent request a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg

from otel_bridge.exporters.rows import CrashRow, ErrorRow

SESSION_BREADCRUMBS = 20
# How far back an error's session history is read.
BREADCRUMB_WINDOW = timedelta(hours=12)

BREADCRUMB_ROW_TYPES = (ErrorRow, CrashRow)

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



_SESSION_HISTORY = """
SELECT session_id, at, category, message, data FROM (
  SELECT session_id, view_timestamp AS at, 'navigation' AS category, page_slug AS message,
         jsonb_build_object('path', page_path) AS data
  FROM user_page_views WHERE session_id = ANY(%(s)s) AND view_timestamp BETWEEN %(since)s AND %(until)s
  UNION ALL
  SELECT session_id, action_timestamp, 'ui.' || action_type, coalesce(action_target, action_type),
         action_context
  FROM user_actions WHERE session_id = ANY(%(s)s) AND action_timestamp BETWEEN %(since)s AND %(until)s
) history ORDER BY at
"""


def session_refresh(ids: list[str], meta: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The statements that recompute these sessions and their views' time on page from the
    stored rows (the writer runs them per request; `maintain` to finalize idle sessions)."""
    meta = meta or {}
    ips = [meta[i].ip_address if i in meta else None for i in ids]
    uas = [meta[i].user_agent if i in meta else None for i in ids]
    return [(_REFRESH_PAGE_VIEWS, {"s": ids}), (_UPSERT_SESSIONS, {"s": ids, "ips": ips, "uas": uas})]


async def refresh_sessions(conn: psycopg.AsyncConnection[Any], meta: dict[str, Any]) -> None:
    """Each touched session and the time on page of its views, from the stored rows."""
    async with conn.cursor() as cur:
        for statement, params in session_refresh(sorted(meta), meta):
            await cur.execute(statement, params)


async def refresh_frontend(conn: psycopg.AsyncConnection[Any], perf_keys: list[str]) -> None:
    async with conn.cursor() as cur:
        await cur.execute(_DELETE_FRONTEND, {"k": perf_keys})
        await cur.execute(_INSERT_FRONTEND, {"k": perf_keys})


async def with_session_breadcrumbs(conn: psycopg.AsyncConnection[Any], rows: Sequence[Any]) -> list[Any]:
    """DESIGN §7's last resort: errors and crashes that came with no breadcrumbs of their own get
    their session's last page views and actions before them, as stored."""
    wanting = [r for r in rows if r.breadcrumbs is None and r.session_id]
    if not wanting:
        return list(rows)
    times = [_time(r) for r in wanting]
    async with conn.cursor() as cur:
        await cur.execute(_SESSION_HISTORY, {
            "s": sorted({r.session_id for r in wanting}),
            "since": min(times) - BREADCRUMB_WINDOW, "until": max(times),
        })  # fmt: skip
        history = await cur.fetchall()
    by_session: dict[str, list[tuple[Any, ...]]] = {}
    for event in history:
        by_session.setdefault(event[0], []).append(event)
    out = []
    for row in rows:
        events = by_session.get(row.session_id) if row.breadcrumbs is None and row.session_id else None
        if events:
            before = [e for e in events if e[1] <= _time(row)][-SESSION_BREADCRUMBS:]
            crumbs = [{"timestamp": e[1].timestamp(), "category": e[2], "message": e[3], "level": "info",
                       **({"data": e[4]} if e[4] else {})} for e in before]  # fmt: skip
            row = row._replace(breadcrumbs=crumbs or None)
        out.append(row)
    return out


def _time(row: Any) -> Any:
    return row.error_timestamp if isinstance(row, ErrorRow) else row.crash_timestamp
