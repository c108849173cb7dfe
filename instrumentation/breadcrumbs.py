"""Breadcrumbs: what happened before an error, like Sentry's.

`breadcrumb(...)` records one on the current span (an `otel_bridge.breadcrumb` event, which the
receiver attaches to errors of that trace) and in a bounded trail per execution context, so a
crash report can carry the last ones even when no span is active. Never raises into the app.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import trace

from otel_bridge import conventions as conv

MAX_BREADCRUMBS = 100  # Sentry's default

log = logging.getLogger(__name__)

_trail: ContextVar[deque[dict[str, Any]] | None] = ContextVar("otel_bridge_breadcrumbs", default=None)
# The process-wide trail: what a crash in a thread or at shutdown can still report.
_process_trail: deque[dict[str, Any]] = deque(maxlen=MAX_BREADCRUMBS)


def new_trail() -> Token[deque[dict[str, Any]] | None]:
    """Start a fresh trail for this context (one per request); `reset_trail(token)` ends it."""
    return _trail.set(deque(maxlen=MAX_BREADCRUMBS))


def reset_trail(token: Token[deque[dict[str, Any]] | None]) -> None:
    _trail.reset(token)


def breadcrumb(message: str, category: str = "default", level: str = "info", data: dict[str, Any] | None = None) -> None:
    """Record a breadcrumb on the current span and in the current trail."""
    try:
        crumb: dict[str, Any] = {"timestamp": time.time(), "category": category, "message": message, "level": level}
        if data:
            crumb["data"] = data
        trail = _trail.get()
        if trail is not None:
            trail.append(crumb)
        _process_trail.append(crumb)
        span = trace.get_current_span()
        if span.is_recording():
            attributes = {conv.BREADCRUMB_CATEGORY: category, conv.BREADCRUMB_MESSAGE: message,
                          conv.BREADCRUMB_LEVEL: level}  # fmt: skip
            if data:
                attributes[conv.BREADCRUMB_DATA] = json.dumps(data, default=str)
            span.add_event(conv.BREADCRUMB_EVENT, attributes)
    except Exception:  # noqa: BLE001 - instrumentation must never break the app
        log.debug("breadcrumb dropped", exc_info=True)


def current_breadcrumbs() -> list[dict[str, Any]]:
    """This context's trail if it has one, else the process-wide one; oldest first."""
    trail = _trail.get()
    return list(trail if trail is not None else _process_trail)
