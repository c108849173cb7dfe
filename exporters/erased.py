"""Forgotten users stay forgotten: rows of an erased user or session are dropped at ingest.

`otel-bridge forget` records keyed hashes (`user:<id>`, `session:<id>`) in `erased_subjects`; an
SDK or Collector retrying an old request afterwards (OTLP senders retry for minutes) must not
bring the user back, so every write looks up the hashes of the users and sessions it carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SubjectHash = Callable[[str, str], str]

_LOOKUP = "SELECT subject_hash FROM erased_subjects WHERE subject_hash = ANY(%s)"


def _subjects(rows: Any) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for table in rows.event_rows():
        for row in table:
            user = getattr(row, "user_id", None)
            if user:
                found.add(("user", user))
            session = getattr(row, "session_id", None)
            if session:
                found.add(("session", session))
    return found


async def drop_erased(conn: Any, rows: Any, subject_hash: SubjectHash) -> int:
    """Remove the rows of erased users and sessions from `rows` (in place); returns how many."""
    subjects = _subjects(rows)
    if not subjects:
        return 0
    by_hash = {subject_hash(kind, value): (kind, value) for kind, value in subjects}
    async with conn.cursor() as cur:
        await cur.execute(_LOOKUP, (list(by_hash),))
        erased = {by_hash[h] for (h,) in await cur.fetchall()}
    if not erased:
        return 0
    users = {value for kind, value in erased if kind == "user"}
    sessions = {value for kind, value in erased if kind == "session"}
    dropped = 0
    for table in rows.event_rows():
        kept = [r for r in table if getattr(r, "user_id", None) not in users and getattr(r, "session_id", None) not in sessions]
        dropped += len(table) - len(kept)
        table[:] = kept
    for session in sessions:
        rows.session_meta.pop(session, None)
    return dropped
