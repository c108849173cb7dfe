"""Browser analytics events (log records) -> page views, page leaves and user actions (pure).

Session aggregates (`user_sessions`) and each view's `time_on_page` are not computed here: they
depend on rows of other requests, so the writer recomputes them from the stored rows of the
sessions a request touched. That keeps them right whatever order the events arrive in, and a
re-sent request changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from otel_bridge import conventions as conv
from otel_bridge.exporters.attributes import Attributes, as_int, as_str
from otel_bridge.exporters.context import Identity, ResourceContext, client_ip, user_agent
from otel_bridge.exporters.rows import ActionRow, PageLeaveRow, PageViewRow, row_id, timestamp
from otel_bridge.privacy import scrub, scrub_text

PAGE_VIEW_EVENTS = frozenset({"browser.navigation", "browser.page_view"})
ACTION_EVENTS = frozenset({"browser.user_action.click", conv.USER_ACTION_EVENT})
ANALYTICS_EVENTS = PAGE_VIEW_EVENTS | ACTION_EVENTS | {conv.PAGE_LEAVE_EVENT}

ANONYMOUS = "anonymous"
_INT4 = 2**31 - 1
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}$")


@dataclass(frozen=True)
class SlugRule:
    pattern: re.Pattern[str]
    slug: str


def parse_slug_rules(text: str | None) -> tuple[SlugRule, ...]:
    """`OTEL_BRIDGE_PAGE_SLUG_RULES`: `regex=slug` pairs separated by `;`, first match wins."""
    rules = []
    for part in (text or "").split(";"):
        if part.strip():
            pattern, sep, slug = part.rpartition("=")
            if not sep or not pattern:
                raise ValueError(f"expected REGEX=SLUG, got {part!r}")
            rules.append(SlugRule(re.compile(pattern), slug.strip()))
    return tuple(rules)


def page_slug(path: str, explicit: str | None, rules: Sequence[SlugRule]) -> str:
    """`otel_bridge.page.slug`, else the first matching rule, else the last path segment
    without its extension (`/features/dashboard/new-auditors-dashboard.html` ->
    `new-auditors-dashboard`); the root is `home`."""
    if explicit:
        return explicit
    for rule in rules:
        if rule.pattern.search(path):
            return rule.slug
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return _EXTENSION.sub("", last) or "home"


def page_location(attrs: Attributes) -> tuple[str, str | None]:
    """(path, full URL) of the page an event happened on."""
    url = as_str(attrs.get("url.full") or attrs.get("browser.document.url.full") or attrs.get("http.url"))
    path = as_str(attrs.get("url.path"))
    if not path and url:
        path = urlsplit(url).path
    return path or "/", url


@dataclass
class EventContext:
    """What every analytics row of one record shares."""

    attrs: Attributes
    res: ResourceContext
    ident: Identity
    time_unix_nano: int
    key: bytes
    trace_hex: str | None
    span_hex: str | None


def page_view_row(ev: EventContext, rules: Sequence[SlugRule]) -> PageViewRow:
    attrs, res, ident = ev.attrs, ev.res, ev.ident
    path, url = page_location(attrs)
    view_id = ident.page_view_id
    # The page view's own id is the key when known, so the tracker's retries and the
    # navigation + page_view pair of one view are one row.
    rid = row_id(ev.time_unix_nano, view_id.encode() if view_id else ev.key, b"page_view")
    return PageViewRow(
        rid, ident.user_id, ident.user_role or ANONYMOUS, ident.session_id or "",
        page_slug(path, as_str(attrs.get(conv.PAGE_SLUG)), rules), path, scrub_text(url),
        scrub_text(as_str(attrs.get(conv.PAGE_REFERRER) or attrs.get("http.request.header.referer"))),
        timestamp(ev.time_unix_nano), res.device_info, res.service_name, res.service_version,
        res.environment, ev.trace_hex, ev.span_hex, view_id,
    )  # fmt: skip


def page_leave_row(ev: EventContext) -> PageLeaveRow:
    attrs = ev.attrs
    time_ms = as_int(attrs.get(conv.PAGE_TIME_ON_PAGE_MS))
    scroll = as_int(attrs.get(conv.PAGE_SCROLL_DEPTH))
    interactions = as_int(attrs.get(conv.PAGE_INTERACTIONS))
    return PageLeaveRow(
        row_id(ev.time_unix_nano, ev.key, b"page_leave"), ev.ident.page_view_id or "",
        ev.ident.session_id or "", timestamp(ev.time_unix_nano),
        # Clamped to the INTEGER columns: one absurd value must not fail the whole request.
        min(round(time_ms / 1000), _INT4) if time_ms is not None and time_ms >= 0 else None,
        max(0, min(100, scroll)) if scroll is not None else None,
        max(0, min(interactions, _INT4)) if interactions is not None else None,
    )  # fmt: skip


def _action_target(attrs: Attributes) -> str | None:
    element = attrs.get("browser.element.attributes")
    element_id = element.get("id") if isinstance(element, dict) else None
    return as_str(
        attrs.get(conv.ACTION_TARGET) or element_id or attrs.get("browser.css_selector")
        or attrs.get("target_xpath") or attrs.get("target_element")
    )  # fmt: skip


def action_row(ev: EventContext, name: str, rules: Sequence[SlugRule]) -> ActionRow:
    attrs, res, ident = ev.attrs, ev.res, ev.ident
    path, _ = page_location(attrs)
    action_type = as_str(attrs.get(conv.ACTION_TYPE)) or ("click" if name.endswith("click") else name)
    context = attrs.get(conv.ACTION_CONTEXT)
    element = attrs.get("browser.element.attributes")
    if context is None and isinstance(element, dict):
        context = element  # the element's data-otel-* annotations
    return ActionRow(
        row_id(ev.time_unix_nano, ev.key, b"action"), ident.user_id, ident.user_role or ANONYMOUS,
        ident.session_id or "", page_slug(path, as_str(attrs.get(conv.PAGE_SLUG)), rules), action_type,
        scrub_text(_action_target(attrs)), scrub(context) if context is not None else None,
        timestamp(ev.time_unix_nano), res.device_info, res.service_name, res.service_version,
        res.environment, ev.trace_hex, ev.span_hex, ident.page_view_id,
    )  # fmt: skip


def perf_keys(page_views: Sequence[PageViewRow], perf_events: Sequence[Any]) -> list[str]:
    """Page views whose performance row must be recomputed by the writer."""
    keys = {row.perf_key for row in perf_events}
    keys.update(row.page_view_id for row in page_views if row.page_view_id)
    return sorted(keys)


@dataclass(frozen=True)
class SessionMeta:
    """What a session row takes from its events besides the aggregates."""

    user_agent: str | None
    ip_address: str | None
    device_info: Any


def session_meta(ev: EventContext, ip_hash: Any) -> SessionMeta:
    return SessionMeta(
        user_agent(ev.attrs) or user_agent(ev.res.attrs), ip_hash(client_ip(ev.attrs)), ev.res.device_info
    )
