"""Error groups, kept in the ingest transaction (DESIGN §7).

Every error, crash and API error row the writer actually inserted (a retried request inserts
nothing, so nothing is counted twice) is an occurrence of its fingerprint's group: the group is
created or updated (first/last seen, occurrences, exact affected users, last release), a resolved
group seen again in a newer release (or, without releases, after it was resolved) is reopened
as regressed, and new groups and regressions are queued for the webhook notifier.
An API error row counts only when it has no exception: with one, the same failure is already an
`error_logs` row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from otel_bridge.exporters.fingerprint import title

# What the writer's INSERT ... SELECT returns for each inserted row of these tables.
RETURNING = {
    "error_logs": "fingerprint, error_timestamp, user_id, error_type, exception_type, error_message, "
                  "service_name, service_version, true",
    "crash_reports": "fingerprint, crash_timestamp, user_id, 'Crash', exception_type, crash_message, "
                     "service_name, coalesce(release_version, service_version), true",
    "api_error_logs": "fingerprint, error_timestamp, user_id, 'API', exception_type, error_message, "
                      "service_name, service_version, exception_type IS NULL",
}  # fmt: skip


@dataclass(frozen=True)
class Occurrence:
    fingerprint: str
    at: datetime
    user_id: str | None
    error_type: str
    exception_type: str | None
    message: str
    service_name: str | None
    release: str | None
    counts: bool  # False: an API error whose failure is counted through its error_logs row


def occurrences(rows: Iterable[Sequence[Any]]) -> list[Occurrence]:
    return [o for o in (Occurrence(*row) for row in rows) if o.counts and o.fingerprint]


def version_key(release: str) -> tuple[tuple[int, Any], ...]:
    """Orders releases naturally: 2.10.0 after 2.9.1, 1.0.0 after 1.0.0-rc2 is not attempted."""
    parts = re.findall(r"\d+|[A-Za-z]+", release)
    return tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in parts)


def is_regression(status: str, resolved_at: datetime | None, resolved_in_release: str | None,
                  release_at_resolution: str | None, at: datetime, release: str | None) -> bool:  # fmt: skip
    """A new occurrence reopens a resolved group when it comes from the release it was resolved
    in or a later one (`--in-release`), from a release newer than the one seen when it was
    resolved, or, when releases are unknown, after it was resolved."""
    if status != "resolved":
        return False
    if release and resolved_in_release:
        return version_key(release) >= version_key(resolved_in_release)
    if release and release_at_resolution:
        return version_key(release) > version_key(release_at_resolution)
    return resolved_at is not None and at > resolved_at


_ADD_USERS = """
INSERT INTO error_group_users (fingerprint, user_id, first_seen)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[])
ON CONFLICT DO NOTHING RETURNING fingerprint
"""
_UPSERT_GROUPS = """
INSERT INTO error_groups AS g (fingerprint, title, error_type, exception_type, service_name, first_seen,
                               last_seen, occurrences, users_affected, last_release)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
                     %s::timestamptz[], %s::bigint[], %s::bigint[], %s::text[])
ON CONFLICT (fingerprint) DO UPDATE SET
  first_seen = least(g.first_seen, excluded.first_seen),
  last_seen = greatest(g.last_seen, excluded.last_seen),
  occurrences = g.occurrences + excluded.occurrences,
  users_affected = g.users_affected + excluded.users_affected,
  last_release = CASE WHEN excluded.last_seen >= g.last_seen
                      THEN coalesce(excluded.last_release, g.last_release) ELSE g.last_release END,
  updated_at = now()
RETURNING fingerprint, xmax = 0, status, resolved_at, resolved_in_release, release_at_resolution,
          title, error_type, service_name, occurrences, users_affected, first_seen, last_seen, last_release
"""
_REOPEN = """
UPDATE error_groups SET status = 'unresolved', regressed_at = now(), regressions = regressions + 1,
  resolved_at = NULL, resolved_by = NULL, resolved_in_release = NULL, release_at_resolution = NULL
WHERE fingerprint = ANY(%s)
"""
_AUDIT_REGRESSIONS = """
INSERT INTO audit_log (actor, action, target, details)
SELECT 'otel-bridge', 'regression', f, %s::jsonb FROM unnest(%s::text[]) AS f
"""
_QUEUE_ALERTS = "INSERT INTO error_alerts (kind, fingerprint, payload) SELECT * FROM unnest(%s::text[], %s::text[], %s::jsonb[])"


def alert_payload(kind: str, group: dict[str, Any]) -> dict[str, Any]:
    """Slack-compatible (`text`) with the structured fields next to it."""
    what = {"new": "New error", "regression": "Regression", "spike": "Error spike"}[kind]
    text = (f"*{what}* in {group.get('service_name') or 'unknown service'}: {group['title']} "
            f"({group['occurrences']} occurrences, {group['users_affected']} users)")  # fmt: skip
    return {"text": text, "kind": kind, **{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in group.items()}}


async def record(conn: Any, found: list[Occurrence], alerts: bool) -> list[dict[str, Any]]:
    """Update the groups of these occurrences; returns the alerts queued (for logs and tests)."""
    if not found:
        return []
    found.sort(key=lambda o: (o.fingerprint, o.at))
    by_group: dict[str, list[Occurrence]] = {}
    for o in found:
        by_group.setdefault(o.fingerprint, []).append(o)
    async with conn.cursor() as cur:
        users = sorted({(o.fingerprint, o.user_id): o.at for o in reversed(found) if o.user_id}.items())
        new_users: dict[str, int] = {}
        if users:
            await cur.execute(_ADD_USERS, ([k[0] for k, _ in users], [k[1] for k, _ in users], [at for _, at in users]))
            for (fp,) in await cur.fetchall():
                new_users[fp] = new_users.get(fp, 0) + 1
        fps = sorted(by_group)  # one lock order for concurrent transactions
        groups = [by_group[fp] for fp in fps]
        latest = [max(g, key=lambda o: o.at) for g in groups]
        await cur.execute(_UPSERT_GROUPS, (
            fps, [title(g[0].exception_type, g[0].message) for g in groups], [g[0].error_type for g in groups],
            [g[0].exception_type for g in groups], [g[0].service_name for g in groups],
            [g[0].at for g in groups], [o.at for o in latest], [len(g) for g in groups],
            [new_users.get(fp, 0) for fp in fps], [o.release for o in latest],
        ))  # fmt: skip
        queued: list[tuple[str, dict[str, Any]]] = []
        reopened: list[str] = []
        for fp, created, status, resolved_at, in_release, seen_release, *rest in await cur.fetchall():
            keys = ("title", "error_type", "service_name", "occurrences", "users_affected", "first_seen",
                    "last_seen", "last_release")  # fmt: skip
            group = {"fingerprint": fp, **dict(zip(keys, rest))}
            if created:
                queued.append(("new", group))
            elif any(is_regression(status, resolved_at, in_release, seen_release, o.at, o.release) for o in by_group[fp]):
                reopened.append(fp)
                queued.append(("regression", {**group, "status": "unresolved"}))
        if reopened:
            await cur.execute(_REOPEN, (reopened,))
            await cur.execute(_AUDIT_REGRESSIONS, (Jsonb({"reason": "new occurrence after resolution"}), reopened))
        payloads = [alert_payload(kind, group) for kind, group in queued]
        if alerts and queued:
            await cur.execute(_QUEUE_ALERTS, ([k for k, _ in queued], [g["fingerprint"] for _, g in queued],
                                              [Jsonb(p) for p in payloads]))  # fmt: skip
    return payloads
