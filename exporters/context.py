"""What every row shares: the resource (service, release, environment, device) and the user
identity of a trace (pure).

DESIGN §5: attributes are read from the item first, then its resource; identity attributes set
on any span of a trace (often a framework's middleware span, not the SERVER span) apply to all
rows of that trace in the same request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from otel_bridge import conventions as conv
from otel_bridge.exporters.attributes import Attributes, as_str, first
from otel_bridge.privacy import scrub

# Resource attribute prefixes that describe the device/runtime (the seed's `device_info`).
_DEVICE_PREFIXES = ("os.", "host.", "device.", "browser.", "process.runtime.", "telemetry.sdk.")

# Instrumentation scopes of browser SDKs (apps following the upstream browser README often send
# no telemetry.sdk.language at all, DESIGN §5).
_BROWSER_SCOPE_PREFIXES = ("@opentelemetry/instrumentation-", "@opentelemetry/web", "otel-bridge.js")

IDENTITY_KEYS = (
    "user.id",
    "enduser.id",
    "user.roles",
    "enduser.role",
    "session.id",
    conv.PAGE_VIEW_ID,
)


@dataclass(frozen=True)
class Defaults:
    """Fallbacks from the receiver's configuration (the seed's CRASHLYTICS_* variables)."""

    environment: str | None = None
    release_version: str | None = None


@dataclass(frozen=True)
class MappingSettings:
    """The receiver's configuration as the pure mappings of every signal see it."""

    slow_api_ms: float = 500.0
    slow_query_ms: float = 1000.0
    api_error_min_status: int = 500
    defaults: Defaults = Defaults()
    slug_rules: tuple[Any, ...] = ()  # analytics.SlugRule


@dataclass
class ResourceContext:
    attrs: Attributes
    service_name: str
    service_version: str | None
    environment: str | None
    device_info: dict[str, Any] | None
    is_browser: bool


def resource_context(attrs: Attributes, defaults: Defaults) -> ResourceContext:
    device = {k: v for k, v in attrs.items() if k.startswith(_DEVICE_PREFIXES)}
    return ResourceContext(
        attrs=attrs,
        service_name=as_str(attrs.get("service.name")) or "unknown_service",
        service_version=as_str(attrs.get("service.version")) or defaults.release_version,
        environment=as_str(first(attrs, "deployment.environment.name", "deployment.environment"))
        or defaults.environment,
        device_info=scrub(device) if device else None,  # host.ip is a raw IP
        is_browser=attrs.get("telemetry.sdk.language") == "webjs"
        or any(k.startswith("browser.") for k in attrs),
    )


def is_browser_scope(scope_name: str) -> bool:
    return scope_name.startswith(_BROWSER_SCOPE_PREFIXES)


@dataclass
class Identity:
    """User, role, session and page view of a trace, merged from all of its spans."""

    user_id: str | None = None
    user_role: str | None = None
    session_id: str | None = None
    page_view_id: str | None = None

    def absorb(self, attrs: Mapping[str, Any]) -> None:
        """Fill what is still unknown from one span's (or resource's) attributes."""
        if _IDENTITY_KEY_SET.isdisjoint(attrs):  # most resources and many spans: nothing to read
            return
        get = attrs.get  # `a or b`: the stable name first, then the old one
        if self.user_id is None:
            self.user_id = as_str(get("user.id") or get("enduser.id"))
        if self.user_role is None:
            self.user_role = as_str(get("user.roles") or get("enduser.role"))
        if self.session_id is None:
            self.session_id = as_str(attrs.get("session.id"))
        if self.page_view_id is None:
            self.page_view_id = as_str(attrs.get(conv.PAGE_VIEW_ID))


_IDENTITY_KEY_SET = frozenset(IDENTITY_KEYS)


def has_identity(attrs: Mapping[str, Any]) -> bool:
    return not _IDENTITY_KEY_SET.isdisjoint(attrs.keys())


def client_ip(attrs: Mapping[str, Any]) -> str | None:
    get = attrs.get
    return as_str(get("client.address") or get("http.client_ip") or get("net.peer.ip"))


def user_agent(attrs: Mapping[str, Any]) -> str | None:
    get = attrs.get
    return as_str(get("user_agent.original") or get("http.user_agent"))


IpHash = Callable[[str | None], str | None]
