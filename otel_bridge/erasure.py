"""`otel-bridge forget --user-id X`: the right to erasure, in one transaction.

Deletes the user from every table that holds per-user rows (page views, actions, sessions and
what hangs off them by session: page leaves and performance events; API and DB rows, errors,
crashes, API errors; the user's entry in error groups), records keyed hashes of the user and of
their sessions in `erased_subjects` so late OTLP retries are dropped at ingest, and writes
`audit_log` without the raw id (its keyed hash names the subject).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

# Tables with a user_id column, partitioned parents included (deletes reach every partition).
USER_TABLES = ("user_page_views", "user_actions", "api_performance_metrics", "api_error_logs",
               "database_performance_metrics", "error_logs", "crash_reports", "frontend_performance_metrics",
               "frontend_perf_events", "user_sessions")  # fmt: skip
# Tables keyed by session only.
SESSION_TABLES = ("user_page_leaves", "frontend_perf_events", "frontend_performance_metrics", "user_page_views",
                  "user_actions", "user_sessions")  # fmt: skip

_SESSIONS = """
SELECT DISTINCT session_id FROM (
  SELECT session_id FROM user_sessions WHERE user_id = %(u)s
  UNION SELECT session_id FROM user_page_views WHERE user_id = %(u)s
  UNION SELECT session_id FROM user_actions WHERE user_id = %(u)s
) s WHERE session_id IS NOT NULL
"""


def forget(url: str, user_id: str, actor: str, subject_hash: Callable[[str, str], str]) -> dict[str, Any]:
    """Erase one user; returns the rows deleted per table and the subject's hash."""
    subject = subject_hash("user", user_id)
    deleted: dict[str, int] = {}
    with psycopg.connect(url) as conn, conn.transaction():
        sessions = [r[0] for r in conn.execute(_SESSIONS, {"u": user_id}).fetchall()]
        for table in USER_TABLES:
            deleted[table] = conn.execute(
                sql.SQL("DELETE FROM {} WHERE user_id = %s").format(sql.Identifier(table)), (user_id,)).rowcount  # fmt: skip
        if sessions:
            for table in SESSION_TABLES:
                deleted[table] = deleted.get(table, 0) + conn.execute(
                    sql.SQL("DELETE FROM {} WHERE session_id = ANY(%s)").format(sql.Identifier(table)), (sessions,)
                ).rowcount  # fmt: skip
        # The user no longer counts among a group's affected users.
        conn.execute("UPDATE error_groups g SET users_affected = greatest(users_affected - 1, 0) "
                     "FROM error_group_users u WHERE u.fingerprint = g.fingerprint AND u.user_id = %s", (user_id,))  # fmt: skip
        deleted["error_group_users"] = conn.execute("DELETE FROM error_group_users WHERE user_id = %s", (user_id,)).rowcount
        hashes = [subject] + [subject_hash("session", s) for s in sessions]
        conn.execute("INSERT INTO erased_subjects (subject_hash) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                     (hashes,))  # fmt: skip
        details = {"rows_deleted": {t: n for t, n in deleted.items() if n}, "sessions": len(sessions)}
        conn.execute("INSERT INTO audit_log (actor, action, target, details) VALUES (%s, 'forget', %s, %s)",
                     (actor, subject, Jsonb(details)))  # fmt: skip
    return {"subject": subject, **details}
