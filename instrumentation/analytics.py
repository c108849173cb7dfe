"""Analytics from the server side, for server-rendered apps and background jobs.

`track_page_view` and `track_action` emit the same events otel-bridge.js sends from browsers
(`browser.page_view`, `otel_bridge.user_action`), so the receiver fills `user_page_views`,
`user_actions` and `user_sessions` from either. `ANALYTICS_ENABLED=false` turns them off;
`ANALYTICS_SAMPLE_RATE` keeps that share of sessions, whole sessions at a time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry._logs import SeverityNumber, get_logger_provider

from otel_bridge import conventions as conv

log = logging.getLogger(__name__)

SCOPE = "otel_bridge.instrumentation.analytics"


def _enabled() -> bool:
    return os.environ.get("ANALYTICS_ENABLED", "true").strip().lower() not in ("0", "false", "no", "off")


def _sampled(session_id: str) -> bool:
    """The same answer for every event of a session: a sampled session stays whole."""
    try:
        rate = float(os.environ.get("ANALYTICS_SAMPLE_RATE", "1"))
    except ValueError:
        rate = 1.0
    if rate >= 1:
        return True
    bucket = int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=8).digest(), "big") / 2**64
    return bucket < rate


def _identity(user_id: str | None, roles: Sequence[str] | str | None, session_id: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"session.id": session_id}
    if user_id:
        attrs["user.id"] = user_id
    if roles:
        attrs["user.roles"] = [roles] if isinstance(roles, str) else list(roles)
    return attrs


def _emit(event_name: str, attributes: dict[str, Any], logger_provider: Any) -> None:
    try:
        provider = logger_provider or get_logger_provider()
        provider.get_logger(SCOPE).emit(event_name=event_name, severity_number=SeverityNumber.INFO,
                                        attributes=attributes)  # fmt: skip
    except Exception:  # noqa: BLE001 - analytics must never break the app
        log.debug("analytics event dropped", exc_info=True)


def track_page_view(
    path: str,
    *,
    session_id: str,
    user_id: str | None = None,
    roles: Sequence[str] | str | None = None,
    slug: str | None = None,
    referrer: str | None = None,
    url: str | None = None,
    page_view_id: str | None = None,
    logger_provider: Any = None,
) -> str | None:
    """Record a page view; returns its id (pass it to `track_action` and as W3C baggage), or
    None when analytics is off or this session is not sampled."""
    if not _enabled() or not _sampled(session_id):
        return None
    view_id = page_view_id or str(uuid.uuid4())
    attrs = {**_identity(user_id, roles, session_id), "url.path": path, conv.PAGE_VIEW_ID: view_id}
    for key, value in ((conv.PAGE_SLUG, slug), (conv.PAGE_REFERRER, referrer), ("url.full", url)):
        if value:
            attrs[key] = value
    _emit("browser.page_view", attrs, logger_provider)
    return view_id


def track_action(
    action_type: str,
    target: str | None = None,
    *,
    session_id: str,
    context: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    roles: Sequence[str] | str | None = None,
    path: str | None = None,
    slug: str | None = None,
    page_view_id: str | None = None,
    logger_provider: Any = None,
) -> None:
    """Record a user action: click, submit, search, filter, sort, export, modal_open, ..."""
    if not _enabled() or not _sampled(session_id):
        return
    attrs = {**_identity(user_id, roles, session_id), conv.ACTION_TYPE: action_type}
    for key, value in ((conv.ACTION_TARGET, target), ("url.path", path), (conv.PAGE_SLUG, slug),
                       (conv.PAGE_VIEW_ID, page_view_id)):  # fmt: skip
        if value:
            attrs[key] = value
    if context:
        attrs[conv.ACTION_CONTEXT] = dict(context)
    _emit(conv.USER_ACTION_EVENT, attrs, logger_provider)
