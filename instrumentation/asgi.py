"""`instrument_app(app)`: an ASGI app emits what `api_performance_metrics` and friends need.

Wraps `opentelemetry-instrumentation-asgi` with what it lacks: route templates for Starlette and
FastAPI (`http.route`; the raw path with its ids is never the endpoint), the user's identity
(`user.id`, `user.roles`, `session.id`) from a hook, `otel_bridge.page_view.id` from W3C
baggage (so API rows join their page view), body sizes (captured content-length headers), a breadcrumb trail per request, and no
per-send/receive child spans. Hooks never break a request: their errors are logged and swallowed.

Starlette and FastAPI get the middleware inside their own stack (`add_middleware`): wrapping from
outside would double-count FastAPI's requests and lose exceptions that Starlette's error
middleware turns into a 500 after the span ended (DESIGN §10).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.trace import Span

from otel_bridge import conventions as conv
from otel_bridge.instrumentation.breadcrumbs import breadcrumb, new_trail, reset_trail

log = logging.getLogger(__name__)

SECRET_HEADERS = ["authorization", "cookie", "set-cookie", "x-api-key", "proxy-authorization"]
CAPTURED_REQUEST_HEADERS = ["content-type", "content-length", "user-agent", "referer", "x-forwarded-for",
                            "x-request-id"]  # fmt: skip


@dataclass(frozen=True)
class UserIdentity:
    user_id: str | None = None
    roles: Sequence[str] = ()
    session_id: str | None = None


IdentityHook = Callable[[Mapping[str, Any]], UserIdentity | None]


_HEADERS_KEY = "otel_bridge.headers"
_CAPTURED = {name: "http.request.header." + name.replace("-", "_") for name in CAPTURED_REQUEST_HEADERS}
_SECRET = frozenset(SECRET_HEADERS)


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    """The request's headers, decoded once per request (identity, capture and baggage share them)."""
    headers = scope.get(_HEADERS_KEY)
    if headers is None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        if isinstance(scope, dict):
            scope[_HEADERS_KEY] = headers
    return headers


def _page_view_id(headers: Mapping[str, str]) -> str | None:
    # Upstream attached the request's extracted context, baggage included (default propagators).
    value = baggage.get_baggage(conv.PAGE_VIEW_BAGGAGE_KEY)
    if value is None and conv.PAGE_VIEW_BAGGAGE_KEY in headers.get("baggage", ""):
        value = baggage.get_baggage(conv.PAGE_VIEW_BAGGAGE_KEY, W3CBaggagePropagator().extract(headers))
    return None if value is None else str(value)


def default_identity(scope: Mapping[str, Any]) -> UserIdentity | None:
    """`scope["user"]` (Starlette's AuthenticationMiddleware), else the common headers
    `x-user-id`, `x-user-role(s)`, `x-session-id`."""
    headers = _headers(scope)
    user = scope.get("user")
    user_id = None
    if user is not None and getattr(user, "is_authenticated", False):
        user_id = str(getattr(user, "identity", None) or getattr(user, "display_name", ""))
    user_id = user_id or headers.get("x-user-id")
    roles_header = headers.get("x-user-roles") or headers.get("x-user-role") or ""
    roles = [r.strip() for r in roles_header.split(",") if r.strip()]
    auth = scope.get("auth")
    if not roles and auth is not None and getattr(auth, "scopes", None):
        roles = list(auth.scopes)
    session_id = headers.get("x-session-id")
    if not (user_id or roles or session_id):
        return None
    return UserIdentity(user_id, roles, session_id)


_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def route_template(scope: Mapping[str, Any]) -> str | None:
    """The matched route's path template of a Starlette/FastAPI app (one Mount level deep),
    without Starlette's convertors (`{audit_id:int}` is `{audit_id}`, as in OpenAPI)."""
    template = _matched_path(scope)
    return _CONVERTOR.sub(r"{\1}", template) if template else None


def _matched_path(scope: Mapping[str, Any]) -> str | None:
    app = scope.get("app")
    routes = getattr(getattr(app, "router", app), "routes", None)
    if not routes:
        return None
    from starlette.routing import Match

    for route in routes:
        match, child = route.matches(scope)
        if match != Match.FULL:
            continue
        sub_routes = getattr(route, "routes", None)
        if sub_routes:
            child_scope = {**scope, **child}
            for sub in sub_routes:
                sub_match, _ = sub.matches(child_scope)
                if sub_match == Match.FULL:
                    return str(route.path).rstrip("/") + str(sub.path)
        return str(getattr(route, "path", "")) or None
    return None


def _span_details(scope: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    method = scope.get("method", "HTTP")
    try:
        route = route_template(scope)
    except Exception:  # noqa: BLE001 - a hook must never break a request
        log.debug("route lookup failed", exc_info=True)
        route = None
    if route:
        return f"{method} {route}", {"http.route": route}
    return method, {}


def _server_request_hook(identity: IdentityHook) -> Callable[[Span, Mapping[str, Any]], None]:
    def hook(span: Span, scope: Mapping[str, Any]) -> None:
        try:
            if not span.is_recording():
                return
            who = identity(scope)
            if who is not None:
                if who.user_id:
                    span.set_attribute("user.id", who.user_id)
                if who.roles:
                    span.set_attribute("user.roles", list(who.roles))
                if who.session_id:
                    span.set_attribute("session.id", who.session_id)
            headers = _headers(scope)
            page_view_id = _page_view_id(headers)
            if page_view_id:
                span.set_attribute(conv.PAGE_VIEW_ID, page_view_id)
            # Captured here from the decoded headers: upstream's capture recompiles its header
            # regex on every request.
            for name, attribute in _CAPTURED.items():
                value = headers.get(name)
                if value is not None:
                    span.set_attribute(attribute, ["[REDACTED]" if name in _SECRET else value])
            if headers.get("content-length", "").isdigit():
                span.set_attribute("http.request.body.size", int(headers["content-length"]))
            breadcrumb(f"{scope.get('method', '')} {scope.get('path', '')}", category="http")
        except Exception:  # noqa: BLE001 - a hook must never break a request
            log.warning("otel-bridge request hook failed", exc_info=True)

    return hook


_in_flight = 0
_in_flight_lock = threading.Lock()


def active_requests() -> int:
    """Requests being served by instrumented apps in this process (crash reports carry it)."""
    return _in_flight


class RequestContextMiddleware:
    """Per request: a fresh breadcrumb trail (crumbs of one request never leak into the crash
    report of another) and the in-flight count."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        global _in_flight
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        token = new_trail()
        with _in_flight_lock:
            _in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with _in_flight_lock:
                _in_flight -= 1
            reset_trail(token)


def instrument_app(
    app: Any,
    *,
    identity: IdentityHook = default_identity,
    tracer_provider: Any = None,
    meter_provider: Any = None,
) -> Any:
    """Instrument `app`; returns the app to serve (the same object for Starlette/FastAPI)."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    options: dict[str, Any] = {
        "default_span_details": _span_details,
        "server_request_hook": _server_request_hook(identity),
        # Response sizes come from the captured content-length (semconv's registry maps the old
        # http.response_content_length there); the receiver reads it.
        "http_capture_headers_server_response": ["content-length", "content-type"],
        "tracer_provider": tracer_provider,
        "meter_provider": meter_provider,
        "exclude_spans": ["receive", "send"],
        "http_capture_headers_sanitize_fields": SECRET_HEADERS,
    }
    if hasattr(app, "add_middleware") and hasattr(app, "user_middleware"):
        app.add_middleware(OpenTelemetryMiddleware, **options)
        app.add_middleware(RequestContextMiddleware)  # outermost of the two
        return app
    return RequestContextMiddleware(OpenTelemetryMiddleware(app, **options))
