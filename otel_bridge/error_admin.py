"""The error groups' workflow for people: list, show, resolve, ignore, reopen (`otel-bridge
errors ...`). Every change is one transaction that also writes `audit_log` (who, what, when).

Resolving marks the group and all of its rows (`resolved`, `resolved_at`, `resolved_by`, the seed's
columns); the writer reopens it as regressed when it is seen again in a newer release (or, without
releases, after it was resolved). Fingerprints may be abbreviated to a unique prefix, as git does
with commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

ERROR_TABLES = ("error_logs", "crash_reports", "api_error_logs")
STATUSES = ("unresolved", "resolved", "ignored")

_LIST = """
SELECT fingerprint, status, error_type, exception_type, title, service_name, occurrences, users_affected,
       first_seen, last_seen, last_release, resolved_at, resolved_by, resolved_in_release, regressed_at,
       regressions
FROM error_groups
WHERE (%(status)s::text IS NULL OR status = %(status)s) AND (%(type)s::text IS NULL OR error_type = %(type)s)
  AND (%(service)s::text IS NULL OR service_name = %(service)s) AND (%(since)s::timestamptz IS NULL OR last_seen >= %(since)s)
ORDER BY last_seen DESC LIMIT %(limit)s
"""
_OCCURRENCES = """
SELECT * FROM (
  SELECT 'error' AS kind, error_timestamp AS at, error_message AS message, user_id, user_role, service_version,
         trace_id, breadcrumbs FROM error_logs WHERE fingerprint = %(f)s
  UNION ALL
  SELECT 'crash', crash_timestamp, crash_message, user_id, user_role, coalesce(release_version, service_version),
         trace_id, breadcrumbs FROM crash_reports WHERE fingerprint = %(f)s
  UNION ALL
  SELECT 'api_error', error_timestamp, error_message, user_id, user_role, service_version, trace_id, NULL
  FROM api_error_logs WHERE fingerprint = %(f)s AND exception_type IS NULL
) o ORDER BY at DESC LIMIT %(limit)s
"""
_BY_ROLE = """
SELECT coalesce(user_role, 'anonymous') AS role, count(DISTINCT user_id) AS users, count(*) AS occurrences FROM (
  SELECT user_role, user_id FROM error_logs WHERE fingerprint = %(f)s
  UNION ALL SELECT user_role, user_id FROM crash_reports WHERE fingerprint = %(f)s
  UNION ALL SELECT user_role, user_id FROM api_error_logs WHERE fingerprint = %(f)s AND exception_type IS NULL
) o GROUP BY 1 ORDER BY 3 DESC
"""
_RELEASES = """
SELECT release, count(*) AS occurrences, min(at) AS first_seen, max(at) AS last_seen FROM (
  SELECT service_version AS release, error_timestamp AS at FROM error_logs WHERE fingerprint = %(f)s
  UNION ALL SELECT coalesce(release_version, service_version), crash_timestamp FROM crash_reports WHERE fingerprint = %(f)s
) o GROUP BY 1 ORDER BY 4 DESC
"""


class NotFound(LookupError):
    pass


def _connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(url, row_factory=dict_row)


def resolve_fingerprint(conn: psycopg.Connection[Any], prefix: str) -> str:
    """The full fingerprint for a unique prefix (at least 4 characters)."""
    if len(prefix) < 4:
        raise NotFound("give at least 4 characters of the fingerprint")
    found = conn.execute("SELECT fingerprint FROM error_groups WHERE fingerprint LIKE %s || '%%' LIMIT 2",
                         (prefix,)).fetchall()  # fmt: skip
    if len(found) != 1:
        raise NotFound(f"no error group {prefix!r}" if not found else f"{prefix!r} matches several groups")
    return str(found[0]["fingerprint"])


def list_groups(url: str, status: str | None = None, error_type: str | None = None, service: str | None = None,
                since: datetime | None = None, limit: int = 50) -> list[dict[str, Any]]:  # fmt: skip
    with _connect(url) as conn:
        params = {"status": status, "type": error_type, "service": service, "since": since, "limit": limit}
        return conn.execute(_LIST, params).fetchall()


def show_group(url: str, fingerprint: str, occurrences: int = 5) -> dict[str, Any]:
    with _connect(url) as conn:
        fp = resolve_fingerprint(conn, fingerprint)
        group = conn.execute("SELECT * FROM error_groups WHERE fingerprint = %s", (fp,)).fetchone()
        assert group is not None
        params = {"f": fp, "limit": occurrences}
        group["latest"] = conn.execute(_OCCURRENCES, params).fetchall()
        group["users_by_role"] = conn.execute(_BY_ROLE, params).fetchall()
        group["releases"] = conn.execute(_RELEASES, params).fetchall()
        group["history"] = conn.execute("SELECT at, actor, action, details FROM audit_log WHERE target = %s "
                                        "ORDER BY at", (fp,)).fetchall()  # fmt: skip
        return group


def change_status(url: str, fingerprint: str, action: str, actor: str, in_release: str | None = None) -> dict[str, Any]:
    """`resolve`, `ignore` or `reopen` one group (and its rows); recorded in audit_log."""
    target = {"resolve": "resolved", "ignore": "ignored", "reopen": "unresolved"}[action]
    with _connect(url) as conn, conn.transaction():
        fp = resolve_fingerprint(conn, fingerprint)
        before = conn.execute("SELECT status, last_release FROM error_groups WHERE fingerprint = %s FOR UPDATE",
                              (fp,)).fetchone()  # fmt: skip
        assert before is not None
        if target == "resolved":
            conn.execute(
                "UPDATE error_groups SET status = 'resolved', resolved_at = now(), resolved_by = %s, "
                "resolved_in_release = %s, release_at_resolution = last_release, updated_at = now() "
                "WHERE fingerprint = %s", (actor, in_release, fp))  # fmt: skip
        else:
            conn.execute(
                "UPDATE error_groups SET status = %s, resolved_at = NULL, resolved_by = NULL, resolved_in_release = NULL, "
                "release_at_resolution = NULL, updated_at = now() WHERE fingerprint = %s", (target, fp))  # fmt: skip
        for table in ERROR_TABLES:
            if target == "resolved":
                conn.execute(f"UPDATE {table} SET resolved = true, resolved_at = now(), resolved_by = %s "
                             "WHERE fingerprint = %s AND NOT resolved", (actor, fp))  # fmt: skip
            else:
                conn.execute(f"UPDATE {table} SET resolved = false, resolved_at = NULL, resolved_by = NULL "
                             "WHERE fingerprint = %s AND resolved", (fp,))  # fmt: skip
        details = {"from": before["status"], "to": target, "in_release": in_release}
        conn.execute("INSERT INTO audit_log (actor, action, target, details) VALUES (%s, %s, %s, %s)",
                     (actor, action, fp, Jsonb(details)))  # fmt: skip
        return {"fingerprint": fp, **details}


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, datetime) else "-"


def format_list(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "no error groups"
    lines = [f"{'fingerprint':<16} {'status':<10} {'type':<11} {'events':>6} {'users':>5} {'last seen':<16} title"]
    for g in groups:
        status = g["status"] + ("*" if g["regressed_at"] and g["status"] == "unresolved" else "")
        lines.append(f"{g['fingerprint']:<16} {status:<10} {g['error_type']:<11} {g['occurrences']:>6} "
                     f"{g['users_affected']:>5} {_when(g['last_seen']):<16} {g['title'][:70]}")  # fmt: skip
    lines.append("(* regressed)")
    return "\n".join(lines)


def format_group(g: dict[str, Any]) -> str:
    out = [f"{g['title']}", f"  fingerprint {g['fingerprint']}  status {g['status']}  type {g['error_type']}"
           f"  service {g['service_name'] or '-'}",
           f"  {g['occurrences']} occurrences, {g['users_affected']} users; first {_when(g['first_seen'])}, "
           f"last {_when(g['last_seen'])}, last release {g['last_release'] or '-'}"]  # fmt: skip
    if g["resolved_at"]:
        out.append(f"  resolved {_when(g['resolved_at'])} by {g['resolved_by']}"
                   + (f" in release {g['resolved_in_release']}" if g["resolved_in_release"] else ""))  # fmt: skip
    if g["regressed_at"]:
        out.append(f"  regressed {_when(g['regressed_at'])} ({g['regressions']} time(s))")
    out.append("  users by role: " + (", ".join(f"{r['role']} {r['users']}" for r in g["users_by_role"]) or "-"))
    out.append("  releases: " + (", ".join(f"{r['release'] or '?'} ({r['occurrences']})" for r in g["releases"]) or "-"))
    out.append("  latest occurrences:")
    for o in g["latest"]:
        out.append(f"    {_when(o['at'])} {o['kind']:<9} user {o['user_id'] or '-'} ({o['user_role'] or '-'}) "
                   f"release {o['service_version'] or '-'} trace {o['trace_id'] or '-'}")  # fmt: skip
    crumbs = next((o["breadcrumbs"] for o in g["latest"] if o["breadcrumbs"]), None)
    if crumbs:
        out.append("  breadcrumbs of the latest:")
        out += [f"    [{c.get('category', '')}] {c.get('message', '')}" for c in crumbs[-10:] if isinstance(c, dict)]
    for h in g["history"]:
        out.append(f"  {_when(h['at'])} {h['action']} by {h['actor']}")
    return "\n".join(out)
