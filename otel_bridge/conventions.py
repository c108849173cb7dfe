"""Attribute and event names otel-bridge defines where semantic conventions have none.

The app-side instrumentation and the receiver's mapping both import these, so the two sides
cannot drift apart (DESIGN §6). Everything else uses semconv names.
"""

from __future__ import annotations

# Attributes.
PAGE_SLUG = "otel_bridge.page.slug"
PAGE_REFERRER = "otel_bridge.page.referrer"
PAGE_VIEW_ID = "otel_bridge.page_view.id"
PAGE_TIME_ON_PAGE_MS = "otel_bridge.page.time_on_page_ms"
PAGE_SCROLL_DEPTH = "otel_bridge.page.scroll_depth"
PAGE_INTERACTIONS = "otel_bridge.page.interactions"
ACTION_TYPE = "otel_bridge.action.type"
ACTION_TARGET = "otel_bridge.action.target"
ACTION_CONTEXT = "otel_bridge.action.context"
CRASH_TYPE = "otel_bridge.crash.type"
CRASH_MEMORY = "otel_bridge.crash.memory"
CRASH_PERFORMANCE = "otel_bridge.crash.performance"
BREADCRUMBS = "otel_bridge.breadcrumbs"
FINGERPRINT = "otel_bridge.fingerprint"
# Connections in the pool a DB span's connection came from (semconv has only the pool metric).
DB_CONNECTION_POOL_SIZE = "otel_bridge.db.connection_pool.size"

# Events.
PAGE_LEAVE_EVENT = "otel_bridge.page_leave"
USER_ACTION_EVENT = "otel_bridge.user_action"
BREADCRUMB_EVENT = "otel_bridge.breadcrumb"

# Attributes of a breadcrumb event.
BREADCRUMB_CATEGORY = "category"
BREADCRUMB_MESSAGE = "message"
BREADCRUMB_LEVEL = "level"
BREADCRUMB_DATA = "data"

# The W3C baggage key that carries the page view id from the browser to API calls.
PAGE_VIEW_BAGGAGE_KEY = PAGE_VIEW_ID
